"""Every selection strategy end to end on CondInst (alseg/models/condinst) on the synthetic data.

Runs share round 0 where they can (``al.initial_run``: one trained M0 per label setting, as the
papers compare strategies), then make one selection step each. The model-based strategies must
read CondInst's detections (SIGMOID class scores, box-frame masks, embeddings, predicted IoUs,
FCOS positive-location prediction sets): their selections carry the scores they computed, not the
no-detection fallback order.
"""

import json
import math

import pytest
import torch

from alseg.engine import trainer as trainer_mod
from alseg.engine.loop import ActiveLearningLoop
from alseg.errors import ConfigError
from conftest import CONDINST, as_json, make_cfg

# FAST with CondInst; 4 val images and 2 fine-tuning iterations keep each step short.
BASE = (*CONDINST, "dataset.num_val=4", "trainer.finetune.iters=2")
IMAGE = (*BASE, "al.rounds=1")
POINTS = ("experiment=apis_synthetic", *BASE, "model=condinst_r18_small_points", "al.rounds=1",
          "al.initial_unit=all", "al.budget_unit=all")
# AFIS at APIS's seconds; 3 s per instance per step (as tests/test_apis_loop.py: 0.9 s buys no mask).
AFIS = ("experiment=afis_synthetic", *BASE, "model=condinst_r18_small_points", "al.rounds=1",
        "al.initial=7.9", "al.budget=3.0")
# score_threshold 0: a six-iteration CondInst scores every detection under the default 0.5.
IOU = ("experiment=iou_guided_synthetic", *BASE, "model=condinst_r18_small_iou", "model.mask_iou.iters=5",
       "strategy.score_threshold=0.0", "al.initial=4", "al.budget=4", "al.rounds=1")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads wait on each other
    (a CondInst training step at 64 pixels took 22 s with 2 threads against 0.5 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _queries(run, k=1):
    return json.loads((run / f"round_{k:03d}" / "selection.json").read_text())["queries"]


def _pool(cfg, run):
    """(image ids, annotation ids) of the training pool the loop reads."""
    train = ActiveLearningLoop(cfg, run)._build_data().train
    return {r.image_id for r in train.images}, {i.ann_id for r in train.images for i in r.instances}


@pytest.fixture(scope="module")
def m0(tmp_path_factory):
    """Round 0 of each label setting, trained once: {name: (tmp folder, run folder)}."""
    tmp = tmp_path_factory.mktemp("condinst_m0")
    made = {}

    def get(name, overrides):
        if name not in made:
            run = tmp / name
            ActiveLearningLoop(make_cfg(tmp, *overrides, "al.rounds=0"), run).run()
            made[name] = run
        return tmp, made[name]

    return get


def _step(m0, name, overrides, *extra, run_name="run"):
    """One selection step of ``overrides + extra`` from the shared round 0 ``name``."""
    tmp, source = m0(name, overrides)
    cfg = make_cfg(tmp, *overrides, *extra, f"al.initial_run={source}")
    run = tmp / f"{run_name}_{'_'.join(e.replace('/', '-') for e in extra)}"
    return cfg, run, ActiveLearningLoop(cfg, run).run()


# --------------------------------------------------------------------------------------- image level
IMAGE_STRATEGIES = ["random", "mask_entropy", "taudis", "taudis_img", "coreset", "round_robin", "avg_cm", "wce",
                    "wse", "mean_se"]


@pytest.mark.parametrize("strategy", IMAGE_STRATEGIES)
def test_image_strategies_select_a_step_on_condinst(m0, strategy):
    extra = [f"strategy={strategy}"]
    if strategy == "taudis":
        extra += ["strategy.alpha=4", "strategy.beta=2"]
    cfg, run, records = _step(m0, "image", IMAGE, *extra)
    r0, r1 = records
    assert [r["round"] for r in records] == [0, 1] and r1["strategy"] == strategy
    assert (r0["labeled_images"], r1["labeled_images"]) == (4, 8)
    assert 0 < r0["seconds"] < r1["seconds"] and all(math.isfinite(r["mask_AP"]) for r in records)
    pool, _ = _pool(cfg, run)
    first, sel = {q["image_id"] for q in _queries(run, 0)}, [q["image_id"] for q in _queries(run)]
    assert len(sel) == len(set(sel)) == 4 and set(sel) <= pool - first
    assert {q["kind"] for q in _queries(run)} == {"image"}
    if strategy not in ("random", "coreset"):
        # Scores come from CondInst's detections (None: an image the strategy could not score).
        scores = [q["score"] for q in _queries(run)]
        assert all(s is not None and math.isfinite(s) for s in scores), scores


@pytest.mark.parametrize("strategy", ["taudis", "avg_cm"])
def test_a_seed_fixes_the_selection(m0, strategy):
    extra = [f"strategy={strategy}"] + (["strategy.alpha=4", "strategy.beta=2"] if strategy == "taudis" else [])
    _, a, _ = _step(m0, "image", IMAGE, *extra, run_name="a")
    _, b, _ = _step(m0, "image", IMAGE, *extra, run_name="b")
    assert _queries(a) == _queries(b)


# --------------------------------------------------------------------------------------- mask IoU head
@pytest.mark.parametrize("strategy", ["iou_guided", "iou_guided_oracle"])
def test_iou_guided_selects_by_condinsts_mask_iou(m0, strategy):
    cfg, run, records = _step(m0, "iou", IOU, f"strategy={strategy}")
    r0, r1 = records
    assert "train/loss_mask_iou" in r0 and (r0["labeled_images"], r1["labeled_images"]) == (4, 8)
    assert 0 < r0["seconds"] < r1["seconds"]
    pool, _ = _pool(cfg, run)
    sel = _queries(run)
    assert len({q["image_id"] for q in sel}) == 4 and {q["image_id"] for q in sel} <= pool
    # Every image scored by its mean predicted (oracle: true) mask IoU, a number in [0, 1].
    assert all(q["score"] is not None and 0.0 <= q["score"] <= 1.0 for q in sel), sel


# --------------------------------------------------------------------------------------- APIS, AFIS
APIS_VARIANTS = [
    ("strategy=apis",),  # A: the positive locations of CondInst
    ("strategy=apis", "strategy.models=2"),  # M
    ("strategy=apis", "strategy.scales=[48,64]", "strategy.flip=true"),  # S (and flips)
    ("strategy=apis", "strategy.metric=max_error"),
    ("strategy=apis", "strategy.metric=least_error"),
    ("strategy=apis", "strategy.metric=lowest_entropy"),
    ("strategy=apis_random",),
]


@pytest.mark.parametrize("extra", APIS_VARIANTS, ids=lambda e: "-".join(x.split("=")[-1] for x in e))
def test_apis_labels_one_point_per_instance_on_condinst(m0, extra):
    cfg, run, records = _step(m0, "points", POINTS, *extra)
    r0, r1 = records
    n_inst = r0["labeled_boxes"]
    assert n_inst > 0 and r0["labeled_points"] == n_inst and r0["labeled_masks"] == 0
    assert r1["labeled_points"] == 2 * n_inst
    assert r0["seconds"] == pytest.approx(n_inst * (7.0 + 0.9))
    assert r1["seconds"] == pytest.approx(n_inst * (7.0 + 0.9 + 0.9))
    _, anns = _pool(cfg, run)
    sel = _queries(run)
    assert {q["kind"] for q in sel} == {"point"} and {q["ann_id"] for q in sel} == anns
    if "strategy=apis" in extra:
        # Instances with FCOS positive locations have a prediction set and a score (FCOS may leave
        # one without: its locations went to a smaller overlapping instance); unscored ones last.
        scored = [q.get("score") is not None and math.isfinite(q["score"]) for q in sel]
        assert sum(scored) >= 0.9 * len(sel) and scored == sorted(scored, reverse=True), sel
        assert 0.0 <= r1["selection/misclassified_fraction"] <= 1.0
    if "strategy.models=2" in extra:
        assert (run / "round_000" / "ensemble_1.pt").is_file()


def test_condinst_prediction_sets_are_box_frame_maps_at_every_scale():
    """APIS's sets from CondInst at several input sizes and flipped: per instance K maps of M x M
    over the instance's ground-truth box (frames = that box), one shape for every scale (the S
    set concatenates them), each the positive location's stride-4 map read over the box."""
    from alseg.models.condinst import build_condinst
    from alseg.models.condinst.model import box_frame_masks

    torch.manual_seed(0)
    m = build_condinst(3, min_size=64, max_size=64, fpn_channels=16, mask_branch_channels=16, norm="frozen_bn",
                       mask_branch_norm="gn", sizes_of_interest=[16, 32, 64, 128])
    image = torch.rand(3, 64, 80)
    gt = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]])
    labels = torch.tensor([1, 2])
    for scale in (None, 48, 96):
        for flip in (False, True):
            sets = m.prediction_sets(image, gt, labels, scale=scale, flip=flip)
            assert len(sets) == 2
            for (probs, frames), box in zip(sets, gt):
                assert probs.shape[1:] == (28, 28) and len(probs) > 0
                torch.testing.assert_close(frames, box.expand(len(probs), 4))
    # unflipped at the model's size: the stride-4 maps of positive_location_predictions over the box
    full = m.positive_location_predictions(image, gt, labels)
    via = m.prediction_sets(image, gt, labels)
    size = m.transform([image])[0].image_sizes[0]
    ratio = torch.tensor([size[1] / 80, size[0] / 64] * 2)
    for g, ((maps, _), (probs, _)) in enumerate(zip(full, via)):
        want = box_frame_masks(maps, (gt[g] * ratio).expand(len(maps), 4), 28, 4)
        torch.testing.assert_close(probs, want)


@pytest.mark.parametrize("level, metric", [("instance", "mean_entropy"), ("image", "detection_loss")])
def test_afis_masks_within_the_seconds_on_condinst(m0, level, metric):
    cfg, run, records = _step(m0, "afis", AFIS, f"strategy.level={level}", f"strategy.metric={metric}")
    r0, r1 = records
    _, anns = _pool(cfg, run)
    n_inst = len(anns)
    assert r0["labeled_boxes"] == n_inst and r0["labeled_masks"] == int(0.9 * n_inst // 79.2)
    step = r1["seconds"] - r0["seconds"]
    assert 3.0 * n_inst - 79.2 < step <= 3.0 * n_inst + 1e-6 and r1["labeled_masks"] > r0["labeled_masks"]
    sel = _queries(run)
    assert sel and {q["kind"] for q in sel} == {"instance"} and {q["ann_id"] for q in sel} <= anns


# --------------------------------------------------------------------------------------- TFDP's baseline
def test_entropy_reference_prunes_with_a_condinst_reference_model(cfg_factory, tmp_path):
    run = tmp_path / "run"
    cfg = cfg_factory("experiment=tfdp_pruning", *BASE, "strategy@al.initial_strategy=entropy_reference",
                      "al.initial=0.5", "al.rounds=0")
    records = ActiveLearningLoop(cfg, run).run()
    assert len(records) == 1 and records[0]["labeled_images"] == 12 and records[0]["seconds"] > 0
    assert (run / "reference" / "model.pt").is_file()
    pool, _ = _pool(cfg, run)
    sel = _queries(run, 0)
    assert len({q["image_id"] for q in sel}) == 12 and {q["image_id"] for q in sel} <= pool
    assert all(q["score"] is not None and math.isfinite(q["score"]) for q in sel), sel


# --------------------------------------------------------------------------------------- resume
class _Killed(Exception):
    pass


def test_a_resumed_condinst_run_makes_the_selections_of_an_uninterrupted_one(m0, monkeypatch):
    """Killed while training round 1 (its selection committed), resumed: rounds 1 and 2 select as
    the uninterrupted run (round 2's avg_cm reads the resumed round-1 CondInst)."""
    extra = ("strategy=avg_cm", "al.rounds=2")
    tmp, source = m0("image", IMAGE)
    cfg = make_cfg(tmp, *IMAGE, *extra, f"al.initial_run={source}")
    full_records = ActiveLearningLoop(cfg, tmp / "full").run()

    part = tmp / "part"
    real_train = trainer_mod.Trainer.train

    def dying_train(self):
        raise _Killed()

    monkeypatch.setattr(trainer_mod.Trainer, "train", dying_train)
    with pytest.raises(_Killed):
        ActiveLearningLoop(cfg, part).run()
    state = json.loads((part / "state.json").read_text())
    assert (state["round"], state["phase"]) == (1, "selected")
    monkeypatch.setattr(trainer_mod.Trainer, "train", real_train)
    records = ActiveLearningLoop(cfg, part).run()
    assert [_queries(part, k) for k in (1, 2)] == [_queries(tmp / "full", k) for k in (1, 2)]
    assert as_json(records) == as_json(full_records)


# --------------------------------------------------------------------------------------- capabilities
@pytest.mark.parametrize("overrides, fragment", ids=["apis", "afis", "iou_guided"], argvalues=[
    (("experiment=apis_synthetic", *CONDINST),
     "strategy: 'apis' needs a model trained with point supervision (point_supervision); "
     "use model.point_supervision=true"),
    (("experiment=afis_synthetic", *CONDINST),
     "strategy: 'afis' needs a model trained with point supervision (point_supervision)"),
    (("experiment=iou_guided_synthetic", *CONDINST),
     "strategy: 'iou_guided' needs a model with a mask-IoU head (mask_iou_head); use a model with one"),
])
def test_condinst_without_the_capability_fails_before_round_0(tmp_path, overrides, fragment):
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        ActiveLearningLoop(make_cfg(tmp_path, *overrides), run).run()
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg, msg
    assert not run.exists()
