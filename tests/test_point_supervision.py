import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss

from alseg.errors import ConfigError
from alseg.models.maskrcnn import build_maskrcnn
from alseg.models.point_supervision import (
    PointSupRoIHeads,
    enable_point_supervision,
    point_loss_terms,
    point_mask_loss,
)


def _tiny(**kw):
    torch.manual_seed(0)
    return build_maskrcnn(2, min_size=64, max_size=64, **kw)


def _target(boxes, labels, has_mask, points, masks=None, size=64):
    n = len(boxes)
    if masks is None:
        masks = torch.zeros((n, size, size), dtype=torch.uint8)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
        "has_mask": torch.tensor(has_mask, dtype=torch.bool),
        "points": torch.tensor(points, dtype=torch.float32).reshape(-1, 4),
        "ann_ids": torch.arange(n),
        "image_id": 0,
    }


def test_point_only_targets_train_the_mask_branch():
    model = enable_point_supervision(_tiny()).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        _target([[8, 8, 40, 40], [30, 20, 60, 50]], [1, 2], [False, False],
                [[0, 20.5, 20.5, 1], [0, 9.5, 38.5, 0], [1, 45.5, 35.5, 1]]),
        _target([[4, 10, 30, 60]], [1], [False], [[0, 15.5, 30.5, 1], [0, 5.5, 11.5, 0]]),
    ]
    losses = model(images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"].item() > 0
    sum(losses.values()).backward()
    g = model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0


def test_gradient_only_at_the_bilinear_neighbours():
    M, C = 28, 3
    torch.manual_seed(1)
    logits = torch.randn(1, C, M, M, requires_grad=True)
    box = torch.tensor([[10.0, 20.0, 38.0, 48.0]])  # 28 x 28: one image pixel per grid cell
    cls = torch.tensor([2])
    # x = 15.25 -> gx = 5.25 * 28 / 28 - 0.5 = 4.75; y = 30.75 -> gy = 10.75 - 0.5 = 10.25.
    pts = torch.tensor([[15.25, 30.75, 1.0]])
    loss = point_mask_loss(logits, box, cls, pts, torch.tensor([0]))
    loss.backward()
    L = logits.detach()[0, 2]
    weights = {(10, 4): 0.25 * 0.75, (10, 5): 0.75 * 0.75, (11, 4): 0.25 * 0.25, (11, 5): 0.75 * 0.25}
    z = sum(w * L[r, c] for (r, c), w in weights.items())
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(z, torch.tensor(1.0)).item(), rel=1e-6)
    expected = torch.zeros(1, C, M, M)
    for (r, c), w in weights.items():
        expected[0, 2, r, c] = w * (torch.sigmoid(z) - 1.0)  # N = 1
    torch.testing.assert_close(logits.grad, expected)
    assert (logits.grad != 0).sum() == 4

    # The same value as F.grid_sample(align_corners=False) with the normalised box coordinate.
    gxn = (15.25 - 10) / 28 * 2 - 1
    gyn = (30.75 - 20) / 28 * 2 - 1
    ref = F.grid_sample(L[None, None], torch.tensor([[[[gxn, gyn]]]]), align_corners=False)
    assert z.item() == pytest.approx(ref.item(), rel=1e-6)


def test_gradient_is_divided_by_the_number_of_pairs_and_cell_centres_hit_one_cell():
    M = 28
    torch.manual_seed(2)
    logits = torch.randn(2, 2, M, M, requires_grad=True)
    # A 56-pixel box: cell j is centred at x1 + 2 * j + 1.
    boxes = torch.tensor([[0.0, 0.0, 56.0, 56.0], [4.0, 4.0, 32.0, 32.0]])
    cls = torch.tensor([1, 1])
    # Cell (6, 3) of proposal 0; cell (0, 0) of proposal 1; outside proposal 1.
    pts = torch.tensor([[7.0, 13.0, 0.0], [4.5, 4.5, 1.0], [100.0, 5.0, 1.0]])
    rois = torch.tensor([0, 1, 1])
    total, n = point_loss_terms(logits, boxes, cls, pts, rois)
    assert n == 2
    loss = total / n
    loss.backward()
    z0 = logits.detach()[0, 1, 6, 3]
    # (4.5 - 4) / 28 * 28 - 0.5 = 0 -> exactly cell 0 of the second proposal.
    z1 = logits.detach()[1, 1, 0, 0]
    expected = torch.zeros_like(logits)
    expected[0, 1, 6, 3] = (torch.sigmoid(z0) - 0.0) / 2
    expected[1, 1, 0, 0] = (torch.sigmoid(z1) - 1.0) / 2
    torch.testing.assert_close(logits.grad, expected)


def test_points_outside_the_proposal_are_ignored():
    M = 28
    logits = torch.randn(1, 2, M, M, requires_grad=True)
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    outside = torch.tensor([[5.0, 20.0, 1.0], [20.0, 30.5, 0.0], [31.0, 31.0, 1.0]])
    loss = point_mask_loss(logits, box, torch.tensor([1]), outside, torch.tensor([0, 0, 0]))
    assert loss.item() == 0.0 and not math.isnan(loss.item())
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()

    # Mixed inside / outside: the outside points change nothing.
    inside = torch.tensor([[20.0, 20.0, 1.0]])
    a = point_mask_loss(logits, box, torch.tensor([1]), torch.cat([inside, outside]), torch.tensor([0, 0, 0, 0]))
    b = point_mask_loss(logits, box, torch.tensor([1]), inside, torch.tensor([0]))
    assert a.item() == pytest.approx(b.item())
    # Points on the border cells are clamped there (no zero padding mixed in).
    edge = point_mask_loss(logits, box, torch.tensor([1]), torch.tensor([[10.0, 10.0, 1.0]]), torch.tensor([0]))
    z = logits.detach()[0, 1, 0, 0]
    assert edge.item() == pytest.approx(F.binary_cross_entropy_with_logits(z, torch.tensor(1.0)).item(), rel=1e-6)


def _heads_inputs(model, images, targets):
    """Features and fixed proposals as the model's transform and backbone produce them."""
    image_list, targets = model.transform(images, targets)
    features = model.backbone(image_list.tensors)
    return features, image_list.image_sizes, targets


def _disc_mask(size, cx, cy, r):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2) <= r * r).to(torch.uint8)


def test_full_mask_only_equals_torchvision():
    model = _tiny().train()
    masks = torch.stack([_disc_mask(64, 24, 24, 14), _disc_mask(64, 45, 40, 12)])
    t = _target([[10, 10, 38, 38], [33, 28, 57, 52]], [1, 2], [True, True], [], masks=masks)
    features, sizes, targets = _heads_inputs(model, [torch.rand(3, 64, 64)], [t])
    proposals = [torch.tensor([[9, 11, 37, 40], [12, 8, 40, 36], [30, 30, 55, 50], [0, 0, 20, 20], [40, 0, 63, 30.0]])]
    torch.manual_seed(5)
    _, ref = RoIHeads.forward(model.roi_heads, features, proposals, sizes, targets)
    enable_point_supervision(model)
    assert isinstance(model.roi_heads, PointSupRoIHeads)
    torch.manual_seed(5)
    _, ours = model.roi_heads(features, proposals, sizes, targets)
    assert set(ours) == set(ref)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k])
    assert ours["loss_mask"].item() > 0


@pytest.mark.parametrize("w", [1.0, 0.25])
def test_mixed_batch_weights_each_supervised_proposal_once(w):
    model = _tiny(box_batch_size_per_image=512, point_supervision=True, point_loss_weight=w).train()
    masks = torch.stack([_disc_mask(64, 24, 24, 14), torch.zeros(64, 64, dtype=torch.uint8),
                         torch.zeros(64, 64, dtype=torch.uint8)])
    # Instance 0: full mask; 1: points only (one outside some proposals); 2: box only.
    t = _target([[10, 10, 38, 38], [36, 30, 60, 60], [2, 44, 20, 62]], [1, 2, 1], [True, False, False],
                [[1, 48.5, 45.5, 1], [1, 37.5, 58.5, 0], [0, 20.5, 20.5, 0]], masks=masks)
    features, sizes, targets = _heads_inputs(model, [torch.rand(3, 64, 64)], [t])
    props = torch.tensor([[11, 10, 39, 38], [40, 30, 60, 60], [3, 44, 20, 61], [20, 0, 40, 10.0]])
    captured = {}
    h = model.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    _, losses = model.roi_heads(features, [props], sizes, targets)
    h.remove()
    logits = captured["logits"]
    # Positives (proposals, then the GT boxes appended by torchvision): instance 0: props[0], gt0;
    # instance 1: props[1], gt1; instance 2 (box only): no mask branch. Full-mask rows come first.
    assert logits.shape[0] == 4
    tgt = targets[0]
    full_boxes = torch.stack([props[0], tgt["boxes"][0]])
    l_m = maskrcnn_loss(logits[:2], [full_boxes], [tgt["masks"]], [tgt["labels"]], [torch.tensor([0, 0])])
    pt_boxes = torch.stack([props[1], tgt["boxes"][1]])
    # Point (37.5, 58.5) lies outside props[1] (x1 = 40) but inside gt1: 3 valid pairs, 2 proposals.
    pts = torch.tensor([[48.5, 45.5, 1], [37.5, 58.5, 0], [48.5, 45.5, 1], [37.5, 58.5, 0]])
    total, n = point_loss_terms(logits[2:], pt_boxes, torch.tensor([2, 2]), pts, torch.tensor([0, 0, 1, 1]))
    assert n == 3
    expected = (2 * l_m + 2 * w * (total / n)) / 4
    torch.testing.assert_close(losses["loss_mask"], expected)


def test_no_supervision_gives_zero_mask_loss():
    model = enable_point_supervision(_tiny()).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        _target([[8, 8, 40, 40]], [1], [False], []),  # box only
        _target([], [], [], []),  # no instance at all
    ]
    losses = model(images, targets)
    assert losses["loss_mask"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0

    # Points only on an instance whose proposals exclude them: still 0, not NaN.
    empty = point_mask_loss(torch.zeros(0, 3, 28, 28, requires_grad=True), torch.zeros(0, 4),
                            torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_transform_rescales_points_and_inference_is_unchanged():
    model = _tiny()
    images = [torch.rand(3, 32, 40)]
    model.eval()
    with torch.no_grad():
        ref = model(images)
    enable_point_supervision(model)
    enable_point_supervision(model)  # idempotent
    with torch.no_grad():
        ours = model(images)
    for k in ref[0]:
        torch.testing.assert_close(ours[0][k], ref[0][k])
    model.train()
    t = _target([[4, 4, 20, 20]], [1], [False], [[0, 10.5, 6.5, 1]], size=32)
    t["masks"] = torch.zeros(1, 32, 40, dtype=torch.uint8)
    image_list, out = model.transform(images, [t])
    # min/max size 64 on a 32 x 40 image: about x1.6, with the ratios the boxes get.
    h, w = image_list.image_sizes[0]
    assert (h, w) != (32, 40)
    sx, sy = w / 40, h / 32
    torch.testing.assert_close(out[0]["points"], torch.tensor([[0, 10.5 * sx, 6.5 * sy, 1]]))
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[4 * sx, 4 * sy, 20 * sx, 20 * sy]]))


@pytest.mark.parametrize("w", [0.0, -1.0, float("nan")])
def test_point_loss_weight_must_be_positive(w):
    with pytest.raises(ConfigError, match="model.point_loss_weight"):
        _tiny(point_supervision=True, point_loss_weight=w)
