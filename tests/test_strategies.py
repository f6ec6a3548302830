"""Strategies on constructed inputs: rankings computed by hand."""

import math

import numpy as np
import pytest
import torch

from alseg.annotation.budget import Budget
from alseg.annotation.cost import CostTable
from alseg.annotation.ledger import Ledger
from alseg.annotation.oracle import Oracle
from alseg.data.coco import CocoDataset
from alseg.strategies.base import SelectionContext
from alseg.strategies.mask_entropy import MaskEntropyImages, binary_entropy, detection_mask_entropy
from alseg.strategies.random_sampling import RandomImages
from alseg.strategies.tfdp import ShapeComplexityImages


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def data(tmp_path):
    import cv2

    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in (1, 2, 3, 4)]
    for im in images:
        cv2.imwrite(str(tmp_path / im["file_name"]), np.full((64, 64, 3), 60 * im["id"], np.uint8))
    anns = [
        # image 1: a 20x20 square (SI-SCS ~ 1.128); image 2: a 40x4 bar (SI-SCS ~ 1.74); image 3: two squares.
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "segmentation": _rect(10, 10, 30, 30)},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 4], "segmentation": _rect(10, 10, 50, 14)},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "segmentation": _rect(0, 0, 20, 20)},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [30, 30, 20, 20], "segmentation": _rect(30, 30, 50, 50)},
    ]
    return CocoDataset({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}, tmp_path)


def _ctx(data, labeled=(), model=None):
    unlabeled = sorted(set(data.image_ids) - set(labeled))
    return SelectionContext(round_index=1, data=data, ledger=Ledger(), unlabeled=unlabeled, labeled=sorted(labeled),
                            oracle=Oracle(data, CostTable()), model=model)


def test_random_is_a_permutation_fixed_by_the_seed(data):
    ctx = _ctx(data, labeled=[4])
    a = RandomImages().rank(ctx, Budget(2), np.random.default_rng(0))
    b = RandomImages().rank(ctx, Budget(2), np.random.default_rng(0))
    assert a == b and sorted(q.image_id for q in a) == [1, 2, 3]
    assert len(RandomImages().select(ctx, Budget(2), np.random.default_rng(0))) == 2


def test_tfdp_ranks_by_summed_shape_complexity(data):
    ranked = ShapeComplexityImages(variant="si_scs").rank(_ctx(data), Budget(4), np.random.default_rng(0))
    # Image 3 sums two squares (2 x 1.128), the bar scores ~1.74, one square 1.128, image 4 has nothing (0).
    assert [q.image_id for q in ranked] == [3, 2, 1, 4]
    assert ranked[2].score == pytest.approx(4 * 20 / (2 * math.sqrt(math.pi * 400)), rel=0.02)
    assert ranked[-1].score == 0.0
    # With class balance each score is divided by the class total, which keeps the order here.
    cb = ShapeComplexityImages(variant="si_cb_scs").rank(_ctx(data), Budget(4), np.random.default_rng(0))
    assert [q.image_id for q in cb] == [3, 2, 1, 4] and sum(q.score for q in cb) == pytest.approx(1.0)
    # Already labeled images are not ranked again.
    assert 3 not in [q.image_id for q in ShapeComplexityImages().rank(_ctx(data, labeled=[3]), Budget(1), None)]


def test_binary_entropy_values():
    p = torch.tensor([0.5, 1e-9, 0.9])
    h = binary_entropy(p)
    assert h[0] == pytest.approx(math.log(2)) and h[1] == pytest.approx(0.0, abs=1e-4)
    assert h[2] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    m = torch.zeros(10, 10)
    m[2:4, 2:6] = 0.5  # inside the box x 2..6, y 2..4 everything is 0.5
    assert detection_mask_entropy(m, torch.tensor([2.0, 2.0, 6.0, 4.0])) == pytest.approx(math.log(2))


class _FakeModel(torch.nn.Module):
    """One detection per image whose mask probability depends on the image brightness."""

    def __init__(self, prob_by_brightness):
        super().__init__()
        self.prob = prob_by_brightness

    def forward(self, images):
        outs = []
        for im in images:
            b = round(float(im.mean()) * 255 / 60)
            if b not in self.prob:
                outs.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
                             "masks": torch.zeros(0, 1, 64, 64)})
                continue
            masks = torch.full((1, 1, 64, 64), self.prob[b])
            outs.append({"boxes": torch.tensor([[0.0, 0.0, 64.0, 64.0]]), "scores": torch.tensor([0.9]),
                         "labels": torch.tensor([1]), "masks": masks})
        return outs


def test_mask_entropy_ranks_uncertain_images_first(data):
    # image i has brightness 60*i: probabilities 0.5 (i=1), 0.99 (i=2), 0.7 (i=3); image 4: no detection.
    model = _FakeModel({1: 0.5, 2: 0.99, 3: 0.7})
    ranked = MaskEntropyImages().rank(_ctx(data, model=model), Budget(4), np.random.default_rng(0))
    # Image 4 (nothing detected) and image 1 both score log 2: their order is the seed's tie-break.
    assert {q.image_id for q in ranked[:2]} == {1, 4} and [q.image_id for q in ranked[2:]] == [3, 2]
    assert ranked[0].score == pytest.approx(math.log(2), rel=1e-4)
    with pytest.raises(Exception, match="needs a trained model"):
        MaskEntropyImages().rank(_ctx(data, model=None), Budget(1), np.random.default_rng(0))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["taudis", "taudis_img", "coreset", "round_robin", "avg_cm", "wce", "wse",
                                      "mean_se", "mask_entropy"])
def test_model_based_strategies_run_in_the_loop(cfg_factory, tmp_path, strategy):
    import json

    from alseg.engine.loop import ActiveLearningLoop

    overrides = [f"strategy={strategy}", "al.rounds=1"]
    if strategy == "taudis":
        overrides += ["strategy.alpha=4", "strategy.beta=2"]
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg_factory(*overrides), run).run()
    assert records[1]["labeled_images"] == 8 and records[1]["strategy"] == strategy
    sel = json.loads((run / "round_001" / "selection.json").read_text())["queries"]
    first = {q["image_id"] for q in json.loads((run / "round_000" / "selection.json").read_text())["queries"]}
    assert len(sel) == 4 and not first & {q["image_id"] for q in sel}


def _pool(data):
    """Hand-built predictions: image 1 one confident instance, image 2 two uncertain near-duplicate
    instances, image 3 one uncertain instance unlike the others, image 4 nothing detected."""
    from alseg.engine.pool_inference import PoolPredictions

    mp = np.stack([np.full((28, 28), p, np.float16) for p in (0.99, 0.5, 0.5, 0.6)])
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0.01], [0, 0, 1]], np.float32)
    cp = np.array([[0, 0.99], [0.4, 0.6], [0.4, 0.6], [0.3, 0.7]], np.float32)
    return PoolPredictions(image_ids=[1, 2, 3, 4], image_index=np.array([0, 1, 1, 2]),
                           boxes=np.array([[0, 0, 10, 10]] * 4, np.float32), scores=cp[:, 1].copy(),
                           labels=np.ones(4, np.int64), class_probs=cp, mask_probs=mp, embeddings=emb,
                           image_embeddings=np.eye(4, 3, dtype=np.float32))


def test_uncertainty_and_taudis_rankings_on_constructed_predictions(data):
    from alseg.strategies.taudis import Taudis, UncertaintyImages

    ctx = _ctx(data, model="unused")
    ctx._providers["pool_predictions"] = lambda: _pool(data)
    rng = np.random.default_rng(0)
    # Weighted SE: image 2 sums two uncertain instances > image 3 > image 1; image 4 (nothing) last.
    assert [q.image_id for q in UncertaintyImages(metric="se").rank(ctx, Budget(2), rng)] == [2, 3, 1, 4]
    # Mean SE: images 2 (log 2) first, then 3, then 1.
    assert [q.image_id for q in UncertaintyImages(metric="se", aggregation="mean").rank(ctx, Budget(2), rng)][:3] == [2, 3, 1]
    # TAUDIS with B=1, alpha=3, beta=2: T_C = the three uncertain instances (rows 1, 2, 3); the cover
    # takes one of the near-duplicates of image 2 and the distinct instance of image 3, so the vote
    # ties 1-1 and the larger summed uncertainty (image 2's log 2 > image 3) decides.
    ranked = [q.image_id for q in Taudis(alpha=3, beta=2, sigma=0.9).rank(ctx, Budget(1), rng)]
    assert ranked[:2] == [2, 3] and ranked[-1] == 4


def test_no_detection_at_all_falls_back_to_random_order(data):
    from alseg.engine.pool_inference import PoolPredictions
    from alseg.strategies.taudis import Taudis, UncertaintyImages

    empty = PoolPredictions(image_ids=[1, 2, 3, 4], image_index=np.zeros(0, np.int64), boxes=np.zeros((0, 4), np.float32),
                            scores=np.zeros(0, np.float32), labels=np.zeros(0, np.int64),
                            class_probs=np.zeros((0, 2), np.float32), mask_probs=np.zeros((0, 28, 28), np.float16),
                            embeddings=np.zeros((0, 3), np.float32), image_embeddings=np.eye(4, 3, dtype=np.float32))
    ctx = _ctx(data, model="unused")
    ctx._providers["pool_predictions"] = lambda: empty
    for strat in (Taudis(), UncertaintyImages()):
        ranked = strat.rank(ctx, Budget(2), np.random.default_rng(3))
        assert sorted(q.image_id for q in ranked) == [1, 2, 3, 4]


def test_apis_reads_masks_through_a_models_prediction_sets(data):
    """Any family plugs in by ``prediction_sets`` (the interface, alseg.models.base): here maps over
    the whole 64 x 64 image (frames = the image), certain everywhere but at one pixel of the square
    of image 1."""
    import torch

    from alseg.annotation.queries import Query
    from alseg.strategies.apis import ApisPoints

    class WholeImageMaps:
        def prediction_sets(self, image, gt_boxes, gt_labels, match_iou=None, scale=None, flip=False):
            probs = torch.full((2, 64, 64), 0.99)
            probs[:, 15, 21] = 0.5  # the one uncertain pixel: x in [21, 22), y in [15, 16)
            frame = torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 2)
            return [(probs, frame) for _ in range(len(gt_boxes))]

    ctx = _ctx(data, model=WholeImageMaps())
    ctx.ledger.add(ctx.oracle.answer(Query("box", 1, 1)), 0)
    (q,) = ApisPoints(metric="entropy").rank(ctx, Budget(1), np.random.default_rng(0))
    assert (q.kind, q.image_id, q.ann_id) == ("point", 1, 1)
    assert 21 <= q.x < 22 and 15 <= q.y < 16
    assert q.score == pytest.approx(math.log(2))


def test_afis_random_orders_unmasked_boxed_instances_by_the_seed_alone(data):
    from alseg.annotation.queries import Query, instance_query
    from alseg.strategies.afis import AfisMasks

    ctx = _ctx(data)  # no model: random needs none
    boxes = [Query("box", im, a) for im, a in ((1, 1), (2, 2), (3, 3), (3, 4))]
    ctx.ledger.add([lab for q in boxes for lab in ctx.oracle.answer(q)], 0)
    ctx.ledger.add(ctx.oracle.answer(instance_query(1, 1)), 0)  # instance 1 has its mask already

    def order(level, seed):
        return [(q.image_id, q.ann_id) for q in AfisMasks(level=level, metric="random").rank(
            ctx, Budget(1000.0), np.random.default_rng(seed))]

    inst = {seed: order("instance", seed) for seed in range(6)}
    assert all(sorted(o) == [(2, 2), (3, 3), (3, 4)] for o in inst.values())  # boxed, without a mask
    assert inst[0] == order("instance", 0) and len(set(map(tuple, inst.values()))) > 1
    for seed in range(6):  # image level: image 3's two instances come together
        o = order("image", seed)
        assert sorted(o) == [(2, 2), (3, 3), (3, 4)] and abs(o.index((3, 3)) - o.index((3, 4))) == 1
    with pytest.raises(Exception, match="previous round's model"):
        AfisMasks(metric="detection_loss").rank(ctx, Budget(1.0), np.random.default_rng(0))
