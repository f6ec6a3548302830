"""The FCOS part of CondInst, as AdelaiDet builds it (Tian et al., "FCOS", ICCV 2019, with the
improvements AdelaiDet's CondInst configs turn on: centerness on the box tower, GIoU, regression
targets normalised by the level's stride with ReLU, center sampling).

- ``FCOSHead``: one head shared over P3-P7; a classification tower and a box tower of
  ``num_convs`` 3x3 convs with GroupNorm + ReLU each; class logits (C channels, sigmoid) on the
  class tower; box regression (l, t, r, b) / stride (ReLU after a per-level learnable ``Scale``),
  centerness logit and the CondInst controller (its dynamic-head parameters) on the box tower.
- ``fcos_targets``: which location is positive for which ground-truth box.
- ``fcos_losses``: focal classification, centerness-weighted GIoU, centerness BCE.
- ``fcos_detections``: score threshold, per-level top-k, sqrt(cls x ctr), class-wise NMS.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from alseg import distributed
from alseg.models.condinst.layers import Scale

__all__ = ["FCOSHead", "centerness_targets", "fcos_detections", "fcos_losses", "fcos_targets", "size_ranges"]

INF = 1e8


def size_ranges(sizes_of_interest: Sequence[float]) -> list[tuple[float, float]]:
    """Per-level [lo, hi] of the largest regression distance max(l, t, r, b) (pixels) a level is
    responsible for: AdelaiDet's [-1, s0], [s0, s1], ..., [s_last, INF] (one more level than
    thresholds); both ends inclusive."""
    out, prev = [], -1.0
    for s in sizes_of_interest:
        out.append((prev, float(s)))
        prev = float(s)
    out.append((prev, INF))
    return out


class FCOSHead(nn.Module):
    """FCOS head shared over levels, with the CondInst controller on the box tower.

    forward(features: list of (N, D, H_l, W_l)) -> (cls_logits, box_reg, ctr_logits, params,
    box_towers), each a list over levels: (N, C, H, W), (N, 4, H, W) distances / stride, >= 0,
    (N, 1, H, W), (N, P, H, W) dynamic-head parameters, (N, D, H, W) box-tower features.
    """

    def __init__(self, channels: int, num_classes: int, num_levels: int, num_params: int, num_convs: int = 4,
                 norm=None, prior_prob: float = 0.01):
        super().__init__()
        def tower():
            layers = []
            for _ in range(num_convs):
                layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=True))
                if norm is not None:
                    layers.append(norm(channels))
                layers.append(nn.ReLU(inplace=True))
            return nn.Sequential(*layers)

        self.cls_tower, self.bbox_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.controller = nn.Conv2d(channels, num_params, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[Tensor]):
        cls, reg, ctr, params, towers = [], [], [], [], []
        for level, x in enumerate(features):
            c = self.cls_tower(x)
            b = self.bbox_tower(x)
            cls.append(self.cls_logits(c))
            ctr.append(self.ctrness(b))
            reg.append(F.relu(self.scales[level](self.bbox_pred(b))))
            params.append(self.controller(b))
            towers.append(b)
        return cls, reg, ctr, params, towers


def fcos_targets(locations: Tensor, level_ids: Tensor, strides: Sequence[int], ranges: Sequence[tuple[float, float]],
                 boxes: Tensor, radius: float | None = 1.5) -> tuple[Tensor, Tensor]:
    """FCOS label assignment for one image (AdelaiDet's ``compute_targets_for_locations``).

    locations (L, 2) x, y of every location of every level (input-frame pixels); level_ids (L,)
    its level index into ``strides`` and ``ranges``; boxes (G, 4) xyxy ground truth. A location
    is a candidate for box g when
      - it lies strictly inside g's center region: the box centre +- radius x stride of the
        location's level, clipped to the box (``radius`` None or 0: strictly inside the box), and
      - max(l, t, r, b), its distances to g's sides, is within the level's range (inclusive).
    Among several candidate boxes the one of smallest area wins (ties: the lowest index).

    Returns (gt_inds (L,) int64, the box index or -1 for background; reg (L, 4) float32 pixels
    (l, t, r, b) to the assigned box, zeros for background).
    """
    n_loc = locations.shape[0]
    if boxes.numel() == 0:
        return (torch.full((n_loc,), -1, dtype=torch.long, device=locations.device),
                locations.new_zeros((n_loc, 4)))
    boxes = boxes.to(locations)
    xs, ys = locations[:, 0:1], locations[:, 1:2]  # (L, 1)
    reg = torch.stack([xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs, boxes[:, 3] - ys], dim=2)  # (L, G, 4)
    if radius:
        stride = torch.as_tensor(list(strides), dtype=locations.dtype, device=locations.device)[level_ids]
        r = (stride * radius)[:, None]  # (L, 1)
        cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
        cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
        x1 = torch.maximum(cx - r, boxes[:, 0])
        y1 = torch.maximum(cy - r, boxes[:, 1])
        x2 = torch.minimum(cx + r, boxes[:, 2])
        y2 = torch.minimum(cy + r, boxes[:, 3])
        inside = torch.stack([xs - x1, ys - y1, x2 - xs, y2 - ys], dim=2).min(dim=2).values > 0
    else:
        inside = reg.min(dim=2).values > 0
    lo_hi = torch.as_tensor(list(ranges), dtype=locations.dtype, device=locations.device)[level_ids]  # (L, 2)
    m = reg.max(dim=2).values
    in_range = (m >= lo_hi[:, 0:1]) & (m <= lo_hi[:, 1:2])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    cand = area[None].expand(n_loc, -1).clone()
    cand[~(inside & in_range)] = INF
    best, gt_inds = cand.min(dim=1)
    reg = reg[torch.arange(n_loc, device=locations.device), gt_inds]
    bg = best >= INF
    gt_inds[bg] = -1
    reg[bg] = 0
    return gt_inds, reg


def centerness_targets(reg: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of (n, 4) l, t, r, b distances; (n,)."""
    if reg.numel() == 0:
        return reg.new_zeros((0,))
    lr, tb = reg[:, [0, 2]], reg[:, [1, 3]]
    c = (lr.min(1).values / lr.max(1).values) * (tb.min(1).values / tb.max(1).values)
    return torch.sqrt(c.clamp(min=0))


def _ltrb_boxes(d: Tensor) -> Tensor:
    """Distances (n, 4) l, t, r, b as xyxy boxes around the origin (GIoU is translation invariant)."""
    return torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], dim=1)


def fcos_losses(cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, labels: Tensor, reg_targets: Tensor,
                alpha: float = 0.25, gamma: float = 2.0) -> dict[str, Tensor]:
    """FCOS losses over all locations of a batch, flattened.

    cls_logits (M, C); box_reg (M, 4) and reg_targets (M, 4): distances divided by the location's
    stride; ctr_logits (M,); labels (M,) int64 1..C, 0 background. Returns
      loss_fcos_cls: sigmoid focal loss (alpha, gamma), summed, / max(#positives, 1);
      loss_fcos_loc: GIoU loss of the positives weighted by their centerness targets, / the sum of
                     those targets;
      loss_fcos_ctr: centerness BCE-with-logits of the positives, summed, / max(#positives, 1).
    Every term is finite and connected to the graph, also without positives. On N processes the
    two normalisers are averaged over the processes (AdelaiDet's ``reduce_sum(num_pos) / num_gpus``),
    so that every image of the global batch weighs the same.
    """
    pos = torch.nonzero(labels > 0).squeeze(1)
    ranks = distributed.working_ranks()
    reg_t = reg_targets[pos].float()
    ctr_t = centerness_targets(reg_t)
    # Both normalisers reduced on every rank, also one without positives (a collective each).
    num_pos = max(distributed.all_reduce_sum(float(pos.numel())) / ranks, 1.0)
    ctr_sum = max(distributed.all_reduce_sum(float(ctr_t.sum())) / ranks, 1e-6)
    target = torch.zeros_like(cls_logits, dtype=torch.float32)
    target[pos, labels[pos] - 1] = 1.0
    loss_cls = sigmoid_focal_loss(cls_logits.float(), target, alpha=alpha, gamma=gamma, reduction="sum") / num_pos
    if pos.numel() == 0:
        zero = box_reg.sum() * 0 + ctr_logits.sum() * 0
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": zero, "loss_fcos_ctr": zero}
    giou = generalized_box_iou_loss(_ltrb_boxes(box_reg[pos].float()), _ltrb_boxes(reg_t), reduction="none")
    loss_loc = (giou * ctr_t).sum() / ctr_sum
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos].float(), ctr_t, reduction="sum") / num_pos
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}


def fcos_detections(cls_logits: Tensor, box_reg: Tensor, ctr_logits: Tensor, locations: Tensor, level_ids: Tensor,
                    strides: Sequence[int], num_levels: int, score_thresh: float = 0.05, pre_nms_top_n: int = 1000,
                    nms_thresh: float = 0.6, detections_per_img: int = 100) -> dict[str, Tensor]:
    """Detections of one image (AdelaiDet's ``forward_for_single_feature_map`` and
    ``select_over_all_levels``): per level, the (location, class) pairs with sigmoid class score
    > ``score_thresh``, at most ``pre_nms_top_n`` of them by cls x ctr; score sqrt(cls x ctr);
    box = location -+ distances x stride; class-wise NMS at ``nms_thresh``; the
    ``detections_per_img`` best kept.

    Inputs are one image's flattened locations: cls_logits (L, C), box_reg (L, 4) / stride,
    ctr_logits (L,), locations (L, 2), level_ids (L,). Returns boxes (n, 4) input frame (not
    clipped), scores (n,), labels (n,) int64 1..C, index (n,) the location of each detection,
    sorted by decreasing score.
    """
    cls_prob = cls_logits.float().sigmoid()
    ctr_prob = ctr_logits.float().sigmoid()
    stride = torch.as_tensor(list(strides), dtype=torch.float32, device=locations.device)[level_ids]
    cand_loc, cand_cls, cand_score = [], [], []
    for level in range(num_levels):
        idx = torch.nonzero(level_ids == level).squeeze(1)
        p = cls_prob[idx]
        keep = p > score_thresh
        loc, cls = torch.nonzero(keep, as_tuple=True)
        s = p[loc, cls] * ctr_prob[idx][loc]
        if s.numel() > pre_nms_top_n:
            s, top = s.topk(pre_nms_top_n)
            loc, cls = loc[top], cls[top]
        cand_loc.append(idx[loc])
        cand_cls.append(cls)
        cand_score.append(s)
    loc, cls, s = torch.cat(cand_loc), torch.cat(cand_cls), torch.cat(cand_score)
    d = box_reg[loc].float() * stride[loc, None]
    xy = locations[loc]
    boxes = torch.stack([xy[:, 0] - d[:, 0], xy[:, 1] - d[:, 1], xy[:, 0] + d[:, 2], xy[:, 1] + d[:, 3]], dim=1)
    scores = torch.sqrt(s)
    keep = batched_nms(boxes, scores, cls, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": cls[keep] + 1, "index": loc[keep]}
