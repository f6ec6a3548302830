"""The model interface (alseg.models.base): the Mask R-CNN family behind it with unchanged module
tree and numbers, class-score layouts as TAUDIS reads them, box-frame masks, prediction sets at
other scales without touching the model, the loop's capability checks, and no family part named
outside alseg/models."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from alseg.engine.loop import ActiveLearningLoop
from alseg.errors import ConfigError
from alseg.models.base import (MASK_IOU_HEAD, POINT_SUPERVISION, PREDICTION_SETS, SIGMOID, SOFTMAX_WITH_BACKGROUND,
                               InstanceSegmenter, check_model, class_distribution, image_masks_to_box)
from alseg.models.maskrcnn import MaskRCNNSegmenter, build_maskrcnn

from conftest import make_cfg

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def _small(**kw):
    torch.manual_seed(0)
    return build_maskrcnn(3, min_size=64, max_size=64, box_score_thresh=0.0, box_detections_per_img=30, **kw)


# ------------------------------------------------------------------------------- the Mask R-CNN family
@pytest.mark.parametrize("options, caps", [
    ({}, {PREDICTION_SETS}),
    ({"mask_iou": {"iters": 5}}, {PREDICTION_SETS, MASK_IOU_HEAD}),
    ({"point_supervision": True}, {PREDICTION_SETS, POINT_SUPERVISION}),
])
def test_maskrcnn_family_declares_what_it_was_built_with(options, caps):
    model = _small(**options)
    assert isinstance(model, InstanceSegmenter) and check_model(model) is model
    assert model.capabilities == frozenset(caps)
    assert model.family == "maskrcnn" and model.class_prob_layout == SOFTMAX_WITH_BACKGROUND and model.mask_size == 28


@pytest.mark.parametrize("name", ["plain", "iou", "points"])
def test_state_dict_names_and_shapes_are_those_of_earlier_checkpoints(name):
    """Parameter names and shapes as recorded before the interface (commit 4a94076): run folders
    made then resume (strict load) now."""
    ref = json.loads((DATA / "maskrcnn_state_dict_4a94076.json").read_text())
    model = _small(**ref["options"][name])
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref[name]
    fresh = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    assert not model.load_state_dict(fresh, strict=True).missing_keys


def test_a_model_outside_the_interface_is_one_line():
    with pytest.raises(ConfigError) as info:
        check_model(torch.nn.Linear(2, 2))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("model: _target_ built a torch.nn.modules.linear.Linear, not an alseg model")


# ------------------------------------------------------------------------------- prediction sets
def test_prediction_sets_at_another_scale_leave_the_model_as_it_was():
    """Equal, bitwise, to the old way (setting the transform's sizes in place around the call); the
    model's transform keeps its sizes."""
    model = _small(point_supervision=True).eval()
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [10.0, 12.0, 30.0, 40.0]])
    labels = torch.tensor([1, 2])
    members = 0
    for scale in (48, 96):
        for flip in (False, True):
            ours = model.prediction_sets(image, boxes, labels, match_iou=0.1, scale=scale, flip=flip)
            assert model.transform.min_size == (64,) and model.transform.max_size == 64
            t = model.transform
            t.min_size, t.max_size = (scale,), max(scale, 64 * scale // 64)  # the old in-place way
            try:
                old = model.prediction_sets(image, boxes, labels, match_iou=0.1, flip=flip)
            finally:
                t.min_size, t.max_size = (64,), 64
            assert len(ours) == len(old) == 2
            members += sum(len(p) for p, _ in ours)
            for (p, b), (po, bo) in zip(ours, old):
                assert torch.equal(p, po) and torch.equal(b, bo)
    assert members > 0


def test_prediction_sets_need_the_capability():
    class NoSets(MaskRCNNSegmenter):
        capabilities = frozenset()

    model = _small()
    model.__class__ = NoSets
    with pytest.raises(NotImplementedError, match="no prediction sets"):
        model.prediction_sets(torch.rand(3, 64, 64), torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([1]))


# ------------------------------------------------------------------------------- frames and layouts
def test_image_masks_to_box_by_hand():
    mask = torch.zeros(1, 8, 8)
    mask[0, :, :4] = 1.0  # the left half of an 8 x 8 image
    whole = image_masks_to_box(mask, torch.tensor([[0.0, 0, 8, 8]]), 4)
    assert torch.equal(whole[0], torch.tensor([[1.0, 1, 0, 0]] * 4))
    # The same map at stride 2 (map pixel j centred at image x = 2j + 1): cell 1 samples image x =
    # 2.5 and 3.5, map coordinates 0.75 and 1.25, values 1 and 0.75 (bilinear between map pixels 1
    # and 2), mean 0.875; cell 2 samples 1.75 and 2.25: 0.25 and 0, mean 0.125.
    coarse = mask[:, ::2, ::2]
    torch.testing.assert_close(image_masks_to_box(coarse, torch.tensor([[0.0, 0, 8, 8]]), 4, stride=2)[0],
                               torch.tensor([[1.0, 0.875, 0.125, 0]] * 4))
    # A box around the edge x = 4, at full resolution.
    assert torch.equal(image_masks_to_box(mask, torch.tensor([[2.0, 2, 6, 6]]), 2)[0], torch.tensor([[1.0, 0], [1, 0]]))
    assert image_masks_to_box(mask[:0], torch.zeros(0, 4), 5).shape == (0, 5, 5)


def test_class_distribution_of_both_layouts_as_taudis_reads_it():
    from alseg.predictions import PoolPredictions
    from alseg.strategies.taudis import instance_uncertainty

    softmax = np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32)
    assert class_distribution(softmax, SOFTMAX_WITH_BACKGROUND) is softmax
    # Sigmoid scores s: background 1 - max(s), the classes s / sum(s) scaled by max(s).
    sigmoid = np.array([[0.3, 0.1], [0.5, 0.5], [0.0, 0.0]], np.float32)
    dist = class_distribution(sigmoid, SIGMOID)
    np.testing.assert_allclose(dist, [[0.7, 0.225, 0.075], [0.5, 0.25, 0.25], [1.0, 0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(dist.sum(1), 1.0)
    with pytest.raises(ValueError, match="class_prob_layout"):
        class_distribution(sigmoid, "logits")

    def pool(cp, layout):
        n = len(cp)
        return PoolPredictions(image_ids=[1], image_index=np.zeros(n, np.int64), boxes=np.zeros((n, 4), np.float32),
                               scores=cp.max(1), labels=np.ones(n, np.int64), class_probs=cp,
                               mask_probs=np.full((n, 4, 4), 0.5, np.float16), embeddings=np.eye(n, 2, dtype=np.float32),
                               image_embeddings=np.zeros((1, 2), np.float32), class_prob_layout=layout)

    # CM = p(c1) - p(c2) and CE = entropy, over the foreground renormalised: softmax row 0 -> (2/3, 1/3).
    cm = -instance_uncertainty(pool(softmax, SOFTMAX_WITH_BACKGROUND), "cm")
    ce = instance_uncertainty(pool(softmax, SOFTMAX_WITH_BACKGROUND), "ce")
    np.testing.assert_allclose(cm, [1 / 3, 0.0], atol=1e-6)
    np.testing.assert_allclose(ce, [-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)), math.log(2)], atol=1e-6)
    # Sigmoid (0.3, 0.1) -> (0.75, 0.25); (0.5, 0.5) -> (0.5, 0.5); no score at all -> uniform.
    cm = -instance_uncertainty(pool(sigmoid, SIGMOID), "cm")
    ce = instance_uncertainty(pool(sigmoid, SIGMOID), "ce")
    np.testing.assert_allclose(cm, [0.5, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(ce, [-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(2), math.log(2)],
                               atol=1e-6)


# ------------------------------------------------------------------------------- the loop's checks
class NoCapabilities(InstanceSegmenter):
    """A stand-in family that offers nothing beyond training and inference (never run here)."""

    family = "stand_in"

    def __init__(self, num_classes, **kwargs):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    mask_size = 28
    capabilities = frozenset()

    def predict_instances(self, images, paste_masks=False, roi_features=False):
        raise AssertionError("not called before round 0")


class PointsOnly(NoCapabilities):
    capabilities = frozenset({POINT_SUPERVISION})


def build_plain_module(num_classes, **kwargs):
    return torch.nn.Linear(1, num_classes)


@pytest.mark.parametrize("overrides, fragment", [
    ((f"model._target_={__name__}.PointsOnly", "experiment=apis_synthetic"),
     "strategy: 'apis' needs a model that gives per-instance prediction sets (prediction_sets); the stand_in model "
     "family offers none"),
    ((f"model._target_={__name__}.NoCapabilities", "experiment=apis_synthetic", "strategy=apis_random"),
     "strategy: 'apis_random' needs a model trained with point supervision (point_supervision); "
     "use model.point_supervision=true"),
    ((f"model._target_={__name__}.NoCapabilities", "experiment=iou_guided_synthetic"),
     "strategy: 'iou_guided' needs a model with a mask-IoU head (mask_iou_head); use a model with one"),
    ((f"model._target_={__name__}.build_plain_module",),
     "model: _target_ built a torch.nn.modules.linear.Linear, not an alseg model"),
])
def test_the_loop_checks_the_model_before_round_0(tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        ActiveLearningLoop(make_cfg(tmp_path, *overrides), tmp_path / "run").run()
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg, msg
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- no family part outside models
FAMILY_ATTRIBUTES = {"roi_heads", "rpn", "backbone", "transform", "mask_iou_head", "mask_iou_cfg", "box_roi_pool",
                     "mask_roi_pool", "mask_head", "mask_predictor", "box_predictor", "box_head", "proposal_matcher"}
FAMILY_ATTRIBUTES |= {"mask_branch", "controller", "box_mask_size"}  # CondInst's
FAMILY_MODULES = {"alseg.models.maskrcnn", "alseg.models.instance_inference", "alseg.models.point_supervision",
                  "alseg.models.condinst", "alseg.models.condinst.model", "alseg.models.condinst.fcos",
                  "alseg.models.condinst.mask", "alseg.models.condinst.layers"}
FAMILY_NAMES = {"MaskRCNN", "MaskRCNNSegmenter", "PointSupRoIHeads", "MaskIoUHead", "enable_point_supervision",
                "train_mask_iou_head", "anchor_predictions", "predict_instances", "CondInst", "build_condinst",
                "positive_location_predictions", "box_frame_masks"}


def _family_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in FAMILY_ATTRIBUTES:
            found.append(f"{path}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            if node.module in FAMILY_MODULES or (node.module or "").startswith("torchvision.models.detection"):
                found.append(f"{path}:{node.lineno}: from {node.module}")
            found += [f"{path}:{node.lineno}: {a.name}" for a in node.names if a.name in FAMILY_NAMES]
        elif isinstance(node, ast.Import):
            found += [f"{path}:{node.lineno}: import {a.name}" for a in node.names if a.name in FAMILY_MODULES]
    return found


def test_nothing_outside_models_names_a_familys_parts():
    files = [p for p in sorted((REPO / "alseg").rglob("*.py")) if "models" not in p.relative_to(REPO / "alseg").parts]
    files += sorted((REPO / "tools").glob("*.py"))
    assert any(p.name == "loop.py" for p in files) and any(p.name == "apis.py" for p in files)
    assert [use for p in files for use in _family_uses(p)] == []


def test_a_family_package_imports_no_other_family():
    """CondInst builds on the shared parts (base, backbone, transform, mask_iou_head), never on
    Mask R-CNN's modules, and Mask R-CNN's modules never on CondInst's."""
    maskrcnn = {"alseg.models.maskrcnn", "alseg.models.instance_inference", "alseg.models.point_supervision"}
    for path in sorted((REPO / "alseg" / "models" / "condinst").glob("*.py")):
        mods = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}
        assert not mods & maskrcnn, (path, mods & maskrcnn)
    for name in ("maskrcnn.py", "instance_inference.py", "point_supervision.py"):
        mods = {n.module or "" for n in ast.walk(ast.parse((REPO / "alseg" / "models" / name).read_text()))
                if isinstance(n, ast.ImportFrom)}
        assert not any(m.startswith("alseg.models.condinst") for m in mods), name


def test_the_source_check_finds_family_parts(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from alseg.models.point_supervision import PointSupRoIHeads\n"
                   "def f(model):\n    model.transform.min_size = (1,)\n    return model.roi_heads\n")
    assert len(_family_uses(bad)) == 4
