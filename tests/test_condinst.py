"""CondInst (alseg/models/condinst): the dynamic head, the upsampling, the losses, FCOS target
assignment, point supervision, the MaskRCNN-like call contract, checkpoints, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alseg.errors import ConfigError
from alseg.models.condinst import build_condinst, mask_frame
from alseg.models.condinst.model import box_frame_masks
from alseg.models.condinst.fcos import centerness_targets, fcos_losses, fcos_targets, size_ranges
from alseg.models.condinst.layers import (aligned_bilinear, compute_locations, dice_loss, dynamic_param_counts,
                                          parse_dynamic_params, run_dynamic_heads)
from alseg.models.condinst.mask import point_bce_terms


def tiny(num_classes: int = 3, **kw):
    """A tiny deterministic CondInst: no BatchNorm statistics (frozen BN backbone, GroupNorm heads)."""
    cfg = dict(min_size=64, max_size=64, fpn_channels=16, mask_branch_channels=16, norm="frozen_bn",
               mask_branch_norm="gn", sizes_of_interest=[16, 32, 64, 128])
    cfg.update(kw)
    return build_condinst(num_classes, **cfg)


# ---------------------------------------------------------------- dynamic head

def test_controller_gives_169_parameters_split_into_weights_then_biases():
    weights, biases = dynamic_param_counts(8, 8, 3)
    assert weights == [(8 + 2) * 8, 8 * 8, 8 * 1] and biases == [8, 8, 1]
    assert sum(weights) + sum(biases) == 169
    m = tiny()
    assert m.head.controller.out_channels == 169 and m.head.controller.kernel_size == (3, 3)
    params = torch.arange(2 * 169, dtype=torch.float32).reshape(2, 169)
    w, b = parse_dynamic_params(params, weights, biases)
    assert [tuple(t.shape) for t in w] == [(16, 10, 1, 1), (16, 8, 1, 1), (2, 8, 1, 1)]
    assert [tuple(t.shape) for t in b] == [(16,), (16,), (2,)]
    # Instance 0: values 0..79 are layer 0's weights (out-channel-major), 80..143 layer 1's,
    # 144..151 layer 2's, then the biases 152..159, 160..167, 168.
    assert torch.equal(w[0][:8, :, 0, 0], torch.arange(80.0).reshape(8, 10))
    assert torch.equal(w[1][:8, :, 0, 0], torch.arange(80.0, 144).reshape(8, 8))
    assert torch.equal(w[2][0, :, 0, 0], torch.arange(144.0, 152))
    assert torch.equal(b[0][:8], torch.arange(152.0, 160)) and torch.equal(b[2], torch.tensor([168.0, 169 + 168]))
    # Instance 1 follows instance 0 in every grouped layer.
    assert torch.equal(w[0][8:, :, 0, 0], torch.arange(169.0, 249).reshape(8, 10))


def test_grouped_dynamic_heads_equal_a_loop_of_conv2d():
    torch.manual_seed(0)
    wn, bn = dynamic_param_counts(8, 8, 3)
    n = 4
    inputs = torch.randn(n, 10, 5, 7)
    params = torch.randn(n, 169)
    w, b = parse_dynamic_params(params, wn, bn)
    got = run_dynamic_heads(inputs, w, b)
    assert got.shape == (n, 1, 5, 7)
    for i in range(n):
        p = params[i]
        w0, w1, w2 = p[:80].reshape(8, 10, 1, 1), p[80:144].reshape(8, 8, 1, 1), p[144:152].reshape(1, 8, 1, 1)
        b0, b1, b2 = p[152:160], p[160:168], p[168:169]
        x = F.relu(F.conv2d(inputs[i : i + 1], w0, b0))
        x = F.relu(F.conv2d(x, w1, b1))
        x = F.conv2d(x, w2, b2)
        torch.testing.assert_close(got[i : i + 1], x, rtol=1e-5, atol=1e-5)


def test_relative_coordinates_are_divided_by_the_level_size_of_interest():
    m = tiny()
    assert m.mask_head.rel_coord_norms.tolist() == [16, 32, 64, 128, 256]
    # A head whose output is its x relative coordinate: layer 0 copies input channel 0 (rel x,
    # shifted by +10 to survive the ReLU), the others pass channel 0 on.
    p = torch.zeros(169)
    p[0] = 1.0  # layer 0, out 0 <- in 0 (rel x)
    p[152] = 10.0  # its bias
    p[80] = 1.0  # layer 1, out 0 <- in 0
    p[144] = 1.0  # layer 2 <- in 0
    p[168] = -10.0
    feats = torch.zeros(1, 8, 2, 3)  # stride 8: cell locations x = 4, 12, 20; y = 4, 12
    loc = torch.tensor([[12.0, 4.0]])
    out = m.mask_head.mask_logits(feats, 8, p[None], loc, torch.tensor([1]), torch.tensor([0]))
    # Before upsampling the logit of cell (r, c) is (12 - x_c) / 32; aligned_bilinear x2 keeps
    # input cell c at output column 2c + 1.
    assert out.shape == (1, 1, 4, 6)
    torch.testing.assert_close(out[0, 0, 0, 1::2], torch.tensor([8 / 32, 0.0, -8 / 32]))


# ---------------------------------------------------------------- aligned bilinear

def test_aligned_bilinear_size_and_offset():
    x = torch.tensor([[0.0, 4.0, 8.0]])[None, None]  # (1, 1, 1, 3)
    y = aligned_bilinear(x, 2)
    assert y.shape == (1, 1, 2, 6)
    # Output j reads input coordinate (j - 1) / 2: [0 (clamped), 0, 0.5, 1, 1.5, 2] -> x 4 per unit.
    assert y[0, 0, 0].tolist() == [0.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    y4 = aligned_bilinear(x, 4)
    assert y4.shape == (1, 1, 4, 12)
    # Output j reads (j - 2) / 4; input cell i sits at output 4 i + 2; past the last cell: clamped.
    assert y4[0, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 8.0]
    assert torch.equal(y4[0, 0, 3], y4[0, 0, 0])  # constant along the rows of a one-row input
    assert torch.equal(aligned_bilinear(x, 1), x)


def test_locations_follow_adelaidet():
    loc = compute_locations(2, 3, 8)
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


# ---------------------------------------------------------------- losses

def test_dice_loss_hand_case():
    p = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    d = dice_loss(p, t)
    # Instance 0: 2 * 1.5 / (1.25 + 2); instance 1: perfect.
    torch.testing.assert_close(d, torch.tensor([1 - 3 / (3.25 + 1e-5), 1 - 4 / (4 + 1e-5)]))


def test_fcos_losses_hand_case():
    # Two locations, one positive (class 2 of 2) with exact box prediction.
    cls = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    reg_t = torch.tensor([[1.0, 1.0, 3.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    reg = reg_t.clone()
    ctr = torch.zeros(2)
    labels = torch.tensor([2, 0])
    out = fcos_losses(cls, reg, ctr, labels, reg_t)
    # Focal loss of logit 0: positive alpha 0.25 * 0.5^2 * log 2; negatives 0.75 * 0.25 * log 2.
    ln2 = math.log(2)
    assert out["loss_fcos_cls"].item() == pytest.approx(0.25 * 0.25 * ln2 + 3 * 0.75 * 0.25 * ln2, rel=1e-5)
    assert out["loss_fcos_loc"].item() == pytest.approx(0.0, abs=1e-6)
    c = math.sqrt(1 / 3)
    assert centerness_targets(reg_t[:1]).item() == pytest.approx(c)
    assert out["loss_fcos_ctr"].item() == pytest.approx(-(c * math.log(0.5) + (1 - c) * math.log(0.5)), rel=1e-5)
    # Without positives: finite, zero box terms, still connected to the graph.
    reg.requires_grad_(True)
    out = fcos_losses(cls, reg, ctr, torch.tensor([0, 0]), reg_t)
    assert out["loss_fcos_loc"].item() == 0 and out["loss_fcos_loc"].requires_grad


# ---------------------------------------------------------------- FCOS targets

def test_center_sampling_radius():
    # One level of stride 8, every size allowed. Box [0, 0, 100, 20], centre (50, 10): the center
    # region is x in (38, 62) (1.5 x 8 around the centre), y in (0, 20) (clipped to the box).
    loc = torch.tensor([[37.0, 10.0], [39.0, 10.0], [61.0, 10.0], [63.0, 10.0], [50.0, 0.0]])
    lv = torch.zeros(5, dtype=torch.long)
    box = torch.tensor([[0.0, 0.0, 100.0, 20.0]])
    g, reg = fcos_targets(loc, lv, [8], [(-1, 1e8)], box, radius=1.5)
    assert g.tolist() == [-1, 0, 0, -1, -1]  # y = 0 lies on the border: not strictly inside
    assert reg[1].tolist() == [39.0, 10.0, 61.0, 10.0] and reg[0].tolist() == [0.0] * 4
    g, _ = fcos_targets(loc, lv, [8], [(-1, 1e8)], box, radius=None)
    assert g.tolist() == [0, 0, 0, 0, -1]


def test_size_ranges_pick_the_level_and_are_inclusive():
    assert size_ranges([16, 32]) == [(-1, 16), (16, 32), (32, 1e8)]
    # The same point on three levels; box whose max(l, t, r, b) from it is exactly 16.
    loc = torch.tensor([[16.0, 16.0]] * 3)
    lv = torch.tensor([0, 1, 2])
    ranges = size_ranges([16, 32])
    g, _ = fcos_targets(loc, lv, [8, 16, 32], ranges, torch.tensor([[4.0, 4.0, 32.0, 28.0]]), radius=None)
    assert g.tolist() == [0, 0, -1]  # 16 is in [-1, 16] and in [16, 32]
    g, _ = fcos_targets(loc, lv, [8, 16, 32], ranges, torch.tensor([[4.0, 4.0, 33.0, 28.0]]), radius=None)
    assert g.tolist() == [-1, 0, -1]  # 17
    g, _ = fcos_targets(loc, lv, [8, 16, 32], ranges, torch.tensor([[0.0, 0.0, 60.0, 20.0]]), radius=None)
    assert g.tolist() == [-1, -1, 0]  # 44


def test_smallest_area_wins_on_ambiguity():
    loc = torch.tensor([[10.0, 10.0], [30.0, 30.0], [12.0, 12.0]])
    lv = torch.zeros(3, dtype=torch.long)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [5.0, 5.0, 15.0, 15.0], [8.0, 8.0, 18.0, 18.0]])
    g, reg = fcos_targets(loc, lv, [8], [(-1, 1e8)], boxes, radius=None)
    # (10, 10) is in the big box and the first small one; (12, 12) in all three, the two small
    # ones of equal area: the first of them.
    assert g.tolist() == [1, 0, 1]
    assert reg[0].tolist() == [5.0, 5.0, 5.0, 5.0]
    g, _ = fcos_targets(loc, lv, [8], [(-1, 1e8)], boxes[:0], radius=1.5)
    assert g.tolist() == [-1, -1, -1]


def test_assignment_on_the_model_grid():
    """A 128-pixel image, AdelaiDet's strides, sizes of interest [16, 32, 64, 128]: box [0, 0, 24,
    24] (centre 12, 12). P3 (locations 4, 12, 20, ...; center region (0, 24)): only (12, 12) has
    max(l, t, r, b) = 12 <= 16, the others reach 20. P4 (locations 8, 24, ...): (8, 8), max 16,
    in [16, 32]. Nothing on P5-P7."""
    m = tiny(min_size=128, max_size=128)
    f = m.features(torch.zeros(1, 3, 128, 128))
    assert [int((f.levels == k).sum()) for k in range(5)] == [256, 64, 16, 4, 1]
    g, reg = fcos_targets(f.locations, f.levels, m.strides, m.ranges, torch.tensor([[0.0, 0.0, 24.0, 24.0]]), 1.5)
    pos = torch.nonzero(g == 0).squeeze(1)
    got = sorted((int(f.locations[i, 0]), int(f.locations[i, 1]), int(f.levels[i])) for i in pos)
    assert got == [(8, 8, 1), (12, 12, 0)]


# ---------------------------------------------------------------- point supervision

def test_point_loss_gradient_only_at_the_bilinear_cells():
    logits = torch.zeros(2, 8, 8, requires_grad=True)
    # Stride 4: grid coordinate (x - 2.5) / 4. Point 1 at grid (2.25, 3.5) on map 0, label 1;
    # point 2 exactly on cell (5, 6) of map 1 (x = 2.5 + 4 * 6, y = 2.5 + 4 * 5), label 0.
    pts = torch.tensor([[2.5 + 4 * 2.25, 2.5 + 4 * 3.5, 1.0], [2.5 + 24, 2.5 + 20, 0.0]])
    total, n = point_bce_terms(logits, 4, pts, torch.tensor([0, 1]))
    assert n == 2 and total.item() == pytest.approx(2 * math.log(2))
    total.backward()
    g = logits.grad
    expected = torch.zeros(2, 8, 8)
    # d BCE / d z = sigmoid(0) - label = -0.5 (label 1), +0.5 (label 0), times the bilinear weights.
    expected[0, 3, 2], expected[0, 3, 3] = -0.5 * 0.75 * 0.5, -0.5 * 0.25 * 0.5
    expected[0, 4, 2], expected[0, 4, 3] = -0.5 * 0.75 * 0.5, -0.5 * 0.25 * 0.5
    expected[1, 5, 6] = 0.5
    torch.testing.assert_close(g, expected)
    assert int((g != 0).sum()) == 5


def _ref_sample(logit_map: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Independent reference: grid_sample (align_corners=False, border) at continuous pixel (x, y),
    the stride-4 cell c centred at 4 c + 2.5."""
    h, w = logit_map.shape
    gx = ((x - 0.5) / 4) / w * 2 - 1
    gy = ((y - 0.5) / 4) / h * 2 - 1
    return F.grid_sample(logit_map[None, None], torch.tensor([[[[gx, gy]]]]), align_corners=False,
                         padding_mode="border")[0, 0, 0, 0]


def test_mask_loss_mixes_dice_and_points_and_skips_box_only_instances():
    torch.manual_seed(0)
    w = 0.5
    m = tiny(point_supervision=True, point_loss_weight=w, max_proposals=-1)
    m.train()
    img = torch.rand(3, 64, 64)
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks[0, 4:28, 4:28] = 1
    boxes = torch.tensor([[4.0, 4.0, 28.0, 28.0], [36.0, 30.0, 60.0, 60.0], [30.0, 2.0, 62.0, 26.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "masks": masks,
              "has_mask": torch.tensor([True, False, False]),
              # instance 1: two points; instance 2: none (box only)
              "points": torch.tensor([[1, 40.5, 35.5, 1.0], [1, 58.0, 58.0, 0.0]])}
    torch.manual_seed(1)
    losses = m([img], [dict(target)])
    # Reference from the same network pieces.
    image_list, tt = m.transform([img], [dict(target)])
    f = m.features(image_list.tensors)
    g, _ = fcos_targets(f.locations, f.levels, m.strides, m.ranges, tt[0]["boxes"], 1.5)
    assert all(int((g == k).sum()) > 0 for k in range(3))

    def logits_of(k):
        idx = torch.nonzero(g == k).squeeze(1)
        return m.mask_head.mask_logits(f.mask_feats, 8, f.params[0, idx], f.locations[idx], f.levels[idx],
                                       torch.zeros_like(idx))[:, 0]

    l0, l1 = logits_of(0), logits_of(1)
    gt0 = masks[0].float()[2::4, 2::4]
    dice = dice_loss(l0.sigmoid(), gt0[None].expand(len(l0), -1, -1))
    bce = torch.stack([F.binary_cross_entropy_with_logits(_ref_sample(l1[k], x, y), torch.tensor(u))
                       for k in range(len(l1)) for x, y, u in ((40.5, 35.5, 1.0), (58.0, 58.0, 0.0))])
    # box_background: each point-only location's cells outside box 1 [36, 30, 60, 60] are background
    h, w4 = l1.shape[-2:]
    out_cells = [(r, c) for r in range(h) for c in range(w4)
                 if not (36 <= 4 * c + 2.5 <= 60 and 30 <= 4 * r + 2.5 <= 60)]
    outside = torch.stack([torch.stack([F.softplus(l1[k, r, c]) for r, c in out_cells]).mean() for k in range(len(l1))])
    n_m, n_p = len(l0), len(l1)
    expected = (dice.sum() + n_p * w * (bce.mean() + outside.mean())) / (n_m + n_p)
    torch.testing.assert_close(losses["loss_mask"], expected, rtol=1e-4, atol=1e-6)


def test_box_only_instances_give_no_mask_loss():
    m = tiny(point_supervision=True)
    m.train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 28.0, 28.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8), "has_mask": torch.tensor([False]),
              "points": torch.zeros(0, 4)}
    losses = m([torch.rand(3, 64, 64)], [target])
    assert losses["loss_mask"].item() == 0.0
    sum(losses.values()).backward()
    assert all(p.grad is None or not p.grad.abs().sum() for p in m.mask_branch.parameters())
    # Without point supervision, points do not train the mask.
    m2 = tiny(point_supervision=False)
    m2.train()
    target["points"] = torch.tensor([[0, 10.0, 10.0, 1.0]])
    assert m2([torch.rand(3, 64, 64)], [target])["loss_mask"].item() == 0.0


# ---------------------------------------------------------------- the contract

def _target(h=48, w=80):
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 5:25, 10:40] = 1
    masks[1, 20:45, 50:75] = 1
    return {"boxes": torch.tensor([[10.0, 5.0, 40.0, 25.0], [50.0, 20.0, 75.0, 45.0]]),
            "labels": torch.tensor([1, 3]), "masks": masks}


def test_forward_train_and_eval_contract():
    torch.manual_seed(0)
    m = tiny(min_size=64, max_size=128, score_thresh=0.0)
    img = torch.rand(3, 48, 80)  # resized to 64 x 106, padded to 64 x 128
    m.train()
    losses = m([img, torch.rand(3, 48, 80)], [_target(), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                                                          "masks": torch.zeros(0, 48, 80, dtype=torch.uint8)}])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() > 0
    sum(losses.values()).backward()
    with pytest.raises(ValueError, match="targets should not be None"):
        m([img])
    with pytest.raises(TypeError, match="float"):
        m([img], [{**_target(), "boxes": _target()["boxes"].long()}])

    m.eval()
    with torch.no_grad():
        out = m([img])
    assert isinstance(out, list) and len(out) == 1 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    o = out[0]
    n = len(o["scores"])
    assert 0 < n <= 100
    assert o["boxes"].shape == (n, 4) and o["boxes"].dtype == torch.float32
    assert o["labels"].dtype == torch.int64 and o["labels"].min() >= 1 and o["labels"].max() <= 3
    assert o["scores"].dtype == torch.float32 and bool((o["scores"][:-1] >= o["scores"][1:]).all())
    assert o["masks"].shape == (n, 1, 48, 80) and o["masks"].dtype == torch.float32
    assert o["masks"].min() >= 0 and o["masks"].max() <= 1
    b = o["boxes"]
    assert bool((b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 80).all() and (b[:, 3] <= 48).all())
    assert bool((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all())

    # The strategies' extras describe the same detections.
    rec = m.predict_instances([img], paste_masks=True)[0]
    torch.testing.assert_close(rec["boxes"], o["boxes"])
    torch.testing.assert_close(rec["masks"], o["masks"])
    assert rec["mask_maps"].shape == (n, 16, 27)  # ceil(64 / 4), ceil(106 / 4)
    assert rec["mask_probs"].shape == (n, 28, 28) and m.mask_size == 28
    assert rec["embeddings"].shape == (n, 16) and rec["image_embedding"].shape == (16,)
    assert rec["class_probs"].shape == (n, 3) and m.class_prob_layout == "sigmoid"
    assert "pred_iou" not in rec and "roi_features" not in rec
    assert rec["levels"].min() >= 0 and rec["levels"].max() <= 4 and rec["locations"].shape == (n, 2)
    # The score is sqrt(cls x ctr) of the location that gave the detection.
    s = (rec["class_probs"][torch.arange(n), rec["labels"] - 1] * rec["centerness"]).sqrt()
    torch.testing.assert_close(s, rec["scores"])
    ratio = 80 / 106  # the x resize ratio back to the original frame (106 = floor(80 * 64 / 48))
    torch.testing.assert_close(rec["mask_frame"], torch.tensor([0.5 * ratio, 0.5 * 48 / 64, (0.5 + 4 * 27) * ratio,
                                                                (0.5 + 64) * 48 / 64]))
    torch.testing.assert_close(rec["mask_probs"], box_frame_masks(rec["mask_maps"], rec["boxes_input"], 28, 4))

    sets = m.positive_location_predictions(img, _target()["boxes"], _target()["labels"], with_locations=True)
    assert len(sets) == 2
    for (probs, frames, locs, levels), box in zip(sets, _target()["boxes"]):
        assert probs.shape[1:] == (16, 27) and len(probs) > 0 and frames.shape == (len(probs), 4)
        assert probs.min() >= 0 and probs.max() <= 1
        # Positive locations lie inside their box (center sampling), in the original frame.
        assert bool(((locs[:, 0] > box[0]) & (locs[:, 0] < box[2]) & (locs[:, 1] > box[1]) & (locs[:, 1] < box[3])).all())
    via = m.prediction_sets(img, _target()["boxes"], _target()["labels"])  # the same locations, over the box
    for (p1, *_), (p2, f2), box in zip(sets, via, _target()["boxes"]):
        assert p2.shape == (len(p1), 28, 28) and torch.equal(f2, box.expand(len(p1), 4))


def test_mask_branch_on_p2_and_finer_mask_output():
    """mask_branch_in_features starting at P2 gives stride-4 mask features (C2 joins the FPN; FCOS
    keeps P3-P7); mask_out_stride 2 upsamples the dynamic heads' logits x2 from there."""
    torch.manual_seed(0)
    m = tiny(mask_branch_in_features=["p2", "p3", "p4", "p5"], mask_out_stride=2, score_thresh=0.0)
    f = m.features(torch.zeros(1, 3, 64, 64))
    assert m.mask_stride == 4 and f.mask_feats.shape[-2:] == (16, 16)
    assert [int((f.levels == k).sum()) for k in range(5)] == [64, 16, 4, 1, 1]  # P3..P7 at 64 px
    m.train()
    losses = m([torch.rand(3, 64, 64)], [_target(64, 64)])
    assert losses["loss_mask"].item() > 0
    rec = m.predict_instances([torch.rand(3, 64, 64)])[0]
    assert rec["mask_maps"].shape[1:] == (32, 32)
    assert rec["mask_frame"].tolist() == [0.5, 0.5, 64.5, 64.5]  # stride 2: cell c at pixel 2 c + 1


def test_mask_frame_matches_the_pasted_masks():
    """A stride-4 map read through ``mask_frame`` by APIS's box resampling gives the pasted values."""
    from alseg.strategies.apis_core import bring_many_to_box

    m = tiny()
    torch.manual_seed(0)
    probs = torch.rand(1, 16, 16)
    pasted = m._paste(probs, (64, 64), (64, 64))[0, 0]
    frame = mask_frame((64, 64), (64, 64), (16, 16), 4)
    assert frame.tolist() == [0.5, 0.5, 64.5, 64.5]
    for r, c in ((10, 7), (33, 40), (2, 61)):
        v = bring_many_to_box(probs, frame[None], [c, r, c + 1, r + 1], (1, 1))[0, 0, 0]
        assert v == pytest.approx(float(pasted[r, c]), abs=1e-6)


@pytest.mark.parametrize("stride", [4, 2, 8])
def test_box_frame_masks_read_each_cell_centre(stride):
    """On a map that is a linear ramp of the input x (y) coordinate of its cells' centres, the
    box-frame map holds the x (y) of its own cell centres: bilinear reading of a linear function
    is exact, so this checks the frame convention (MASK_FRAME) and the stride offset."""
    h = w = 20
    c = torch.arange(w, dtype=torch.float32)
    centre = stride * c + stride // 2 + 0.5  # continuous input-frame centre of map cell c
    ramp_x = centre[None, None, :].expand(1, h, w)
    ramp_y = centre[None, :, None].expand(1, h, w)
    box = torch.tensor([[13.0, 21.5, 33.0, 37.5]])  # inside the maps' interior for every stride
    M = 14
    j = torch.arange(M, dtype=torch.float32) + 0.5
    xs = box[0, 0] + j * (box[0, 2] - box[0, 0]) / M
    ys = box[0, 1] + j * (box[0, 3] - box[0, 1]) / M
    torch.testing.assert_close(box_frame_masks(ramp_x, box, M, stride)[0], xs[None, :].expand(M, M), atol=1e-4, rtol=0)
    torch.testing.assert_close(box_frame_masks(ramp_y, box, M, stride)[0], ys[:, None].expand(M, M), atol=1e-4, rtol=0)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = tiny()
    a.train()
    a([torch.rand(3, 64, 64)], [_target(64, 64)])  # move nothing but make sure training mode runs
    torch.save({"model": a.state_dict()}, tmp_path / "m.pt")
    torch.manual_seed(5)
    b = tiny(checkpoint=str(tmp_path / "m.pt"), score_thresh=0.0)
    a.score_thresh = 0.0
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    img = torch.rand(3, 64, 64)
    a.eval(), b.eval()
    with torch.no_grad():
        oa, ob = a([img])[0], b([img])[0]
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    with pytest.raises(ConfigError, match="checkpoint: file not found"):
        tiny(checkpoint=str(tmp_path / "missing.pt"))
    torch.save({"model": {"nope": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not match this model"):
        tiny(checkpoint=str(tmp_path / "other.pt"))


@pytest.mark.parametrize("kw, key", [
    ({"sizes_of_interest": [64, 128, 256]}, "model.sizes_of_interest"),
    ({"sizes_of_interest": [64, 32, 256, 512]}, "model.sizes_of_interest"),
    ({"mask_out_stride": 3}, "model.mask_out_stride"),
    ({"point_loss_weight": 0.0}, "model.point_loss_weight"),
    ({"max_proposals": 0}, "model.max_proposals"),
    ({"num_classes": 0}, "model.num_classes"),
    ({"head_norm": "ln"}, "model.norm: unknown norm"),
    ({"backbone": "vgg"}, "model.backbone: unknown backbone"),
    ({"backbone_weights": "NOPE"}, "model.backbone_weights: unknown weights"),
    ({"mask_branch_in_features": ["p4", "p3"]}, "model.mask_branch_in_features"),
    ({"mask_branch_in_features": ["p3", "p6"]}, "model.mask_branch_in_features"),
    ({"mask_branch_in_features": []}, "model.mask_branch_in_features"),
    ({"mask_branch_in_features": ["p2", "p3"], "mask_out_stride": 8}, "model.mask_out_stride: must divide"),
    ({"box_background": "abc"}, "model.box_background: must be true or false"),
    ({"point_supervision": 1}, "model.point_supervision: must be true or false"),
    ({"box_mask_size": 27}, "model.box_mask_size"),
    ({"mask_iou": {"iterz": 5}}, "model.mask_iou: unknown key"),
])
def test_bad_config_values_are_one_line_config_errors(kw, key):
    args = {"num_classes": 2, **kw}
    with pytest.raises(ConfigError, match=key):
        build_condinst(**args)


def test_configs_build_through_hydra():
    from hydra import compose, initialize_config_dir

    from alseg.cli import CONFIG_DIR
    from alseg.instantiate import build

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        small = compose("config", overrides=["model=condinst_r18_small_points"]).model
        r50 = compose("config", overrides=["model=condinst_r50", "model.backbone_weights=null"]).model
    m = build(small, "model", num_classes=4)
    assert m.point_supervision and m.point_loss_weight == 0.1 and m.head.controller.out_channels == 169
    assert m.transform.min_size == (128,) and m.mask_head.rel_coord_norms.tolist() == [32, 64, 128, 256, 512]
    assert m.mask_stride == 4 and m.mask_head.out_stride == 4
    big = build(r50, "model", num_classes=80)
    assert big.head.cls_logits.in_channels == 256 and big.mask_branch.refine[0][0].out_channels == 128
    assert big.mask_head.rel_coord_norms.tolist() == [64, 128, 256, 512, 1024] and big.mask_stride == 8
    assert big.transform.max_size == 1333 and not big.backbone.body.conv1.weight.requires_grad


# ---------------------------------------------------------------- learning

def test_tiny_model_learns_on_synthetic_data(tmp_path):
    """Overfitting one batch of two synthetic images for 40 iterations (~5 s on an idle 2-core CPU):
    the loss falls, and the mask of every confident detection lies inside the ground-truth box
    of the instance it detects (CondInst's masks cover the whole image: this checks that the
    relative coordinates and the dynamic heads make them instance-specific)."""
    from torchvision.ops import box_iou

    from alseg.data.build import synthetic
    from alseg.data.torch_dataset import ImageView, TrainingSet, collate

    data = synthetic(cache_dir=str(tmp_path), num_train=2, num_val=1, image_size=64, max_radius=20, max_objects=3)
    views = {r.image_id: ImageView(full_image=True, mask_ann_ids={i.ann_id for i in r.instances})
             for r in data.train.images}
    ds = TrainingSet(data.train, views, None)
    images, targets = collate([ds[0], ds[1]])
    torch.manual_seed(0)
    m = tiny(data.train.num_classes)
    opt = torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9)
    m.train()
    history = []
    for _ in range(40):
        losses = m(list(images), list(targets))
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
        opt.step()
        history.append(float(loss.detach()))
    assert np.mean(history[-5:]) < 0.6 * np.mean(history[:5])
    m.eval()
    with torch.no_grad():
        out = m(list(images))
    inside, total, n = 0.0, 0.0, 0
    ys, xs = torch.arange(64)[:, None] + 0.5, torch.arange(64)[None] + 0.5  # pixel centres
    for o, t in zip(out, targets):
        keep = o["scores"] >= 0.3
        for box, mask in zip(o["boxes"][keep], o["masks"][keep, 0] >= 0.5):
            x1, y1, x2, y2 = t["boxes"][box_iou(box[None], t["boxes"])[0].argmax()].tolist()
            in_box = (xs >= x1 - 4) & (xs <= x2 + 4) & (ys >= y1 - 4) & (ys <= y2 + 4)  # a stride-4 cell of slack
            total += float(mask.sum())
            inside += float((mask & in_box).sum())
            n += 1
    assert n >= len(targets) and total > 0 and inside / total > 0.9


def test_outside_box_bce_hand_case():
    """Cells outside the box are labeled background: BCE(z, 0) = softplus(z), averaged over them.
    A 4 x 4 map at stride 4 has cell centres at 2.5, 6.5, 10.5, 14.5; the box [4, 4, 12, 12]
    holds the 2 x 2 centre cells, so 12 cells are outside."""
    from alseg.models.condinst.mask import outside_box_bce

    z = torch.zeros(1, 4, 4)
    z[0, 0, 0] = 2.0
    z[0, 1, 1] = 5.0  # inside the box: not counted
    got = outside_box_bce(z, 4, torch.tensor([[4.0, 4.0, 12.0, 12.0]]))
    want = (F.softplus(torch.tensor(2.0)) + 11 * F.softplus(torch.tensor(0.0))) / 12
    torch.testing.assert_close(got, want[None])
    # a box covering every cell leaves nothing outside: 0
    assert outside_box_bce(z, 4, torch.tensor([[0.0, 0.0, 16.0, 16.0]])).item() == 0.0


def test_point_only_instances_learn_background_outside_their_box():
    """With box_background, a point-only instance's mask loss grows with foreground outside its
    box; without it, only the labeled point counts."""
    torch.manual_seed(0)
    img = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[16.0, 16.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8), "has_mask": torch.tensor([False]),
              "points": torch.tensor([[0.0, 28.0, 28.0, 1.0]])}
    losses = {}
    for flag in (True, False):
        torch.manual_seed(0)
        m = tiny(point_supervision=True, box_background=flag)
        m.train()
        out = m([img], [dict(target)])
        losses[flag] = out["loss_mask"].item()
    assert losses[True] > losses[False] > 0
