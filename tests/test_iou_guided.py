import numpy as np
import pytest
import torch

from alseg.engine.loop import ActiveLearningLoop
from alseg.models.mask_iou_head import MaskIoUHead, true_ious
from alseg.strategies.iou_guided import closest_to_target


def test_closest_to_target_by_hand():
    scores = {1: 0.1, 2: 0.45, 3: 0.8, 4: 0.38}
    order = closest_to_target(scores, [1, 2, 3, 4, 5], 0.4, np.random.default_rng(0))
    # |s - 0.4| = 0.3, 0.05, 0.4, 0.02; image 5 has no score and comes last.
    assert order == [4, 2, 1, 3, 5]
    assert closest_to_target(scores, [1, 3], 1.0, np.random.default_rng(0)) == [3, 1]
    ties = [closest_to_target({1: 0.25, 2: 0.75}, [1, 2], 0.5, np.random.default_rng(s))[0] for s in range(20)]
    assert set(ties) == {1, 2}  # equal distances: the seed decides


def test_true_ious_match_same_class_ground_truth():
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, :4, :4] = 1
    gt[1, 4:, 4:] = 1
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, :4, :2] = 0.9  # half of gt 0: IoU 8/16
    masks[1, 0, 4:, 4:] = 0.8  # exactly gt 1 but predicted as class 1 while gt 1 is class 2 -> 0
    masks[2, 0, 4:, 4:] = 0.3  # below the 0.5 threshold: empty mask -> 0
    det = {"masks": masks, "labels": torch.tensor([1, 1, 2])}
    np.testing.assert_allclose(true_ious(det, gt, np.array([1, 2])), [0.5, 0.0, 0.0])


def test_head_outputs_iou_in_range_and_sqrt_loss():
    torch.manual_seed(0)
    head = MaskIoUHead(8, conv_dim=8, fc_dim=16, sqrt=True)
    feats, probs = torch.rand(5, 8, 14, 14), torch.rand(5, 28, 28)
    pred = head.predict(feats, probs)
    assert pred.shape == (5,) and ((pred >= 0) & (pred <= 1)).all()
    raw = head(feats, probs).clamp(0, 1)
    torch.testing.assert_close(pred, raw * raw)
    target = torch.full((5,), 0.25)
    torch.testing.assert_close(head.loss(feats, probs, target), (head(feats, probs) - 0.5).abs().mean())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["iou_guided", "iou_guided_oracle"])
def test_iou_guided_runs_in_the_loop_and_reports_the_head_error(cfg_factory, tmp_path, strategy):
    cfg = cfg_factory("model=maskrcnn_r18_small_iou", "model.min_size=64", "model.max_size=64",
                      "model.mask_iou.iters=5", f"strategy={strategy}", "strategy.score_threshold=0.0",
                      "al.rounds=1")
    records = ActiveLearningLoop(cfg, tmp_path / "run").run()
    assert records[1]["labeled_images"] == 8 and records[1]["strategy"] == strategy
    assert "train/loss_mask_iou" in records[0]
