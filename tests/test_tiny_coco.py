"""One short round on the real COCO slice in ../shared/data/tiny_coco (skipped where it is absent)."""

import json
import math

import pytest

from alseg.engine.loop import ActiveLearningLoop


STRATEGIES = ["random", "taudis", "taudis_img", "coreset", "round_robin", "avg_cm", "iou_guided"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tiny_coco_end_to_end(cfg_factory, tmp_path, tiny_coco, strategy):
    extra = ["+model.mask_iou.iters=2", "strategy.score_threshold=0.0"] if strategy == "iou_guided" else []
    cfg = cfg_factory(
        f"strategy={strategy}",
        *extra,
        "dataset=tiny_coco",
        f"dataset.train_ann={tiny_coco}/annotations/instances_train2017.json",
        f"dataset.train_images={tiny_coco}/images/train2017",
        f"dataset.val_ann={tiny_coco}/annotations/instances_val2017.json",
        f"dataset.val_images={tiny_coco}/images/val2017",
        "model=maskrcnn_r18_coco",
        "model.min_size=160",
        "model.max_size=224",
        "al.initial=6",
        "al.budget=6",
        "al.rounds=1",
        "trainer.schedule.iters=4",
        "trainer.finetune.iters=2",
    )
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg, run).run()
    assert [r["labeled_images"] for r in records] == [6, 12]
    # Real COCO: 80 non-contiguous category ids, crowd regions kept out of training.
    metrics = json.loads((run / "round_001" / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in ("mask_AP", "box_AP", "mean_dice"))
    sel = json.loads((run / "round_000" / "selection.json").read_text())
    # Image cost: absent-class checks (1 s each of 80) plus 79.2 s per instance mask.
    assert sel["seconds"] > 6 * 70


@pytest.mark.slow
def test_tiny_coco_tfdp_pruning(cfg_factory, tmp_path, tiny_coco):
    cfg = cfg_factory(
        "dataset=tiny_coco",
        f"dataset.train_ann={tiny_coco}/annotations/instances_train2017.json",
        f"dataset.train_images={tiny_coco}/images/train2017",
        f"dataset.val_ann={tiny_coco}/annotations/instances_val2017.json",
        f"dataset.val_images={tiny_coco}/images/val2017",
        "model=maskrcnn_r18_coco", "model.min_size=160", "model.max_size=224",
        "strategy@al.initial_strategy=tfdp", "al.initial=0.5", "al.rounds=0", "trainer.schedule.iters=4",
    )
    records = ActiveLearningLoop(cfg, tmp_path / "run").run()
    assert records[0]["initial_strategy"] == "tfdp" and records[0]["pruning_rate"] == pytest.approx(0.5, abs=0.02)
