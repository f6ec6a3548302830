"""Point-supervised Mask R-CNN training (the PointSup protocol that APIS follows, APIS Sec. 4.1).

Instances whose mask is known train the mask branch with torchvision's usual per-pixel loss
(``maskrcnn_loss``). Instances known only by their box and a few labeled points (``has_mask``
False, rows of ``points`` naming them) train it on those points only: each labeled point of the
ground-truth instance is mapped into the M x M mask-logit grid of every positive proposal matched
to that instance, the logit of the instance's class is sampled there by bilinear interpolation,
and a binary cross-entropy with logits against the point label (0/1) is averaged over all
(proposal, point) pairs. Points outside a proposal box are ignored for that proposal. Instances
with neither a mask nor a point give no mask loss at all (stock torchvision would train them
towards an empty mask); box and class losses are torchvision's, for every instance.

Box-to-grid convention (that of torchvision's ``roi_align`` with ``aligned=False``, whose bin j of
a box [x1, x2) has its centre at x1 + (j + 0.5) * (x2 - x1) / M): a point at image coordinate x
(pixel centres at +0.5) lies at grid coordinate

    g = (x - x1) / (x2 - x1) * M - 0.5,

cell j's centre being g = j. The box width is clamped to >= 1 pixel, as ``roi_align`` does with
``aligned=False``. Bilinear interpolation uses the cells around g; a point within half a cell of
the box border is clamped onto the border cells (``grid_sample`` with ``align_corners=False``,
``padding_mode="border"``), so a point inside the box never mixes in a zero logit. torchvision's
own mask targets (``project_masks_on_boxes``) are left as they are.

Weighting of the two kinds (``loss_mask``): with ``n_m`` positive proposals matched to full-mask
instances (loss ``L_m``: torchvision's mean over their M x M cells) and ``n_p`` positive proposals
matched to point-only instances that have at least one valid point (loss ``L_p``: the mean over
their valid (proposal, point) pairs),

    loss_mask = (n_m * L_m + n_p * L_p) / (n_m + n_p),

i.e. every supervised proposal counts once, whichever kind of label it has; with only one kind
present this is that kind's loss; with neither it is 0 (connected to the graph, never NaN).
``point_loss_weight`` (w, default 1: PointSup's protocol) multiplies ``L_p`` in that sum. Trained
from scratch on a few hundred images, the point loss's gradient through the shared backbone costs
the detector most of its box AP (synthetic default, 60 images, 150 iterations: box AP 0.099 with
boxes only, 0.007 with boxes + one point per instance at w = 1, 0.080 at w = 0.1); with an
ImageNet-initialised backbone, as in the papers, w = 1 is the setting to use.
Points given for an instance that also has a mask are not used (the mask supersedes them).

The model's transform is patched too: torchvision's ``GeneralizedRCNNTransform`` resizes boxes and
masks but not ``points``; ``PointAwareTransform`` rescales their x, y the same way as the boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from alseg.errors import ConfigError
from alseg.models.base import check_training_targets
from alseg.models.transform import PointAwareTransform

__all__ = [
    "PointAwareTransform",
    "PointSupRoIHeads",
    "enable_point_supervision",
    "point_grid_coords",
    "point_loss_terms",
    "point_mask_loss",
    "sample_point_logits",
]


def point_grid_coords(boxes: Tensor, xy: Tensor, M: int) -> tuple[Tensor, Tensor, Tensor]:
    """Grid coordinates (gx, gy) of points ``xy`` (n, 2) in the M x M grid of ``boxes`` (n, 4),
    one box per point, and whether each point lies inside its box (borders included)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    w = (x2 - x1).clamp(min=1.0)
    h = (y2 - y1).clamp(min=1.0)
    x, y = xy[:, 0], xy[:, 1]
    gx = (x - x1) / w * M - 0.5
    gy = (y - y1) / h * M - 0.5
    inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    return gx, gy, inside


def sample_point_logits(logit_maps: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Bilinear samples of ``logit_maps`` (n, M, M) at grid coordinates (gx[i], gy[i]) of map i,
    cell centres at integer coordinates, coordinates clamped to [0, M - 1] (``grid_sample`` with
    ``align_corners=False, padding_mode="border"``). Differentiable in ``logit_maps``."""
    n, Mh, Mw = logit_maps.shape
    if n == 0:
        return logit_maps.new_zeros((0,))
    gx = gx.to(logit_maps.dtype).clamp(0, Mw - 1)
    gy = gy.to(logit_maps.dtype).clamp(0, Mh - 1)
    x0 = gx.floor().long().clamp(max=Mw - 1)
    y0 = gy.floor().long().clamp(max=Mh - 1)
    x1 = (x0 + 1).clamp(max=Mw - 1)
    y1 = (y0 + 1).clamp(max=Mh - 1)
    wx = gx - x0.to(gx.dtype)
    wy = gy - y0.to(gy.dtype)
    i = torch.arange(n, device=logit_maps.device)
    return (
        logit_maps[i, y0, x0] * (1 - wx) * (1 - wy)
        + logit_maps[i, y0, x1] * wx * (1 - wy)
        + logit_maps[i, y1, x0] * (1 - wx) * wy
        + logit_maps[i, y1, x1] * wx * wy
    )


def _point_terms(mask_logits, boxes, classes, points, pair_rois):
    """(BCE sum, valid-pair mask (Q,)) of ``point_loss_terms``."""
    zero = mask_logits.sum() * 0
    pair_rois = pair_rois.to(device=mask_logits.device, dtype=torch.long).reshape(-1)
    if pair_rois.numel() == 0:
        return zero, torch.zeros(0, dtype=torch.bool, device=mask_logits.device)
    M = mask_logits.shape[-1]
    points = points.to(device=mask_logits.device, dtype=torch.float32).reshape(-1, 3)
    b = boxes.to(device=mask_logits.device, dtype=torch.float32).reshape(-1, 4)[pair_rois]
    gx, gy, inside = point_grid_coords(b, points[:, :2], M)
    if not bool(inside.any()):
        return zero, inside
    rois = pair_rois[inside]
    maps = mask_logits[rois, classes.to(mask_logits.device, torch.long).reshape(-1)[rois]].float()
    logits = sample_point_logits(maps, gx[inside], gy[inside])
    target = points[inside, 2].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum"), inside


def point_loss_terms(
    mask_logits: Tensor,
    boxes: Tensor,
    classes: Tensor,
    points: Tensor,
    pair_rois: Tensor,
) -> tuple[Tensor, int]:
    """Sum of the point BCE terms and the number of valid (proposal, point) pairs.

    mask_logits (P, C, M, M); boxes (P, 4) proposal boxes, xyxy, in the frame of the points;
    classes (P,) the class whose logit map each proposal is supervised on; points (Q, 3): x, y,
    label (0/1) of each pair; pair_rois (Q,) the proposal each pair belongs to. Pairs whose point
    lies outside the proposal box are dropped. The sum is 0 (connected to ``mask_logits``) when no
    pair is valid.
    """
    total, inside = _point_terms(mask_logits, boxes, classes, points, pair_rois)
    return total, int(inside.sum())


def point_mask_loss(mask_logits: Tensor, boxes: Tensor, classes: Tensor, points: Tensor,
                    pair_rois: Tensor) -> Tensor:
    """Mean point BCE over the valid (proposal, point) pairs (see ``point_loss_terms``); 0, not
    NaN, when there is none. The gradient w.r.t. the logit cell c of pair q's map is
    w_qc * (sigmoid(z_q) - u_q) / N, w_qc the bilinear weight, z_q the sampled logit, u_q the
    label, N the number of valid pairs."""
    total, n = point_loss_terms(mask_logits, boxes, classes, points, pair_rois)
    return total / max(n, 1)


def _point_pairs(pos_gt: Tensor, point_sup: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """(proposal, point) pairs of one image: proposal k (matched to instance pos_gt[k]) with every
    point of that instance, for instances in ``point_sup``. Returns (proposal idx, point idx)."""
    if points.numel() == 0 or pos_gt.numel() == 0 or point_sup.numel() == 0:
        e = torch.zeros(0, dtype=torch.long, device=pos_gt.device)
        return e, e
    inst = points[:, 0].round().long().to(pos_gt.device)
    sup = point_sup.to(pos_gt.device)[pos_gt]
    eq = (pos_gt[:, None] == inst[None, :]) & sup[:, None]
    k, q = torch.nonzero(eq, as_tuple=True)
    return k, q


class PointSupRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose training mask loss mixes full-mask and point supervision
    (module docstring). Inference is torchvision's, unchanged. Keypoint heads are not supported."""

    point_loss_weight: float = 1.0

    def check_targets(self, targets):
        if targets is None:
            raise ValueError("targets should not be None")
        for t in targets:
            if "boxes" not in t or "labels" not in t:
                raise ValueError("every target needs boxes and labels")

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.has_keypoint():
            raise NotImplementedError("point supervision does not support keypoint heads")
        check_training_targets(targets)

        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.has_mask():
            losses["loss_mask"] = self._mask_loss(features, proposals, image_shapes, targets, matched_idxs, labels)
        return [], losses

    def _mask_loss(self, features, proposals, image_shapes, targets, matched_idxs, labels) -> Tensor:
        # Per image: positive proposals matched to full-mask instances, then those matched to
        # point-only instances with at least one point; the mask branch runs on these only.
        full_props, full_idxs, pt_props, pt_classes, pair_rois, pair_points = [], [], [], [], [], []
        n_pt_rois = 0
        for i, t in enumerate(targets):
            pos = torch.where(labels[i] > 0)[0]
            gt = matched_idxs[i][pos]
            dev = gt.device
            n_inst = t["boxes"].shape[0]
            if "has_mask" in t:
                has_mask = t["has_mask"].to(dev).bool().reshape(-1)
            else:  # a plain torchvision target: every instance has its mask
                has_mask = torch.full((n_inst,), "masks" in t, dtype=torch.bool, device=dev)
            points = t.get("points")
            points = points.to(dev).float().reshape(-1, 4) if points is not None else torch.zeros((0, 4), device=dev)
            full = has_mask[gt]
            full_props.append(proposals[i][pos[full]])
            full_idxs.append(gt[full])
            k, q = _point_pairs(gt, ~has_mask, points)
            used = torch.unique(k)  # positive proposals (sorted) with at least one point pair
            remap = torch.full((gt.numel(),), -1, dtype=torch.long, device=dev)
            remap[used] = torch.arange(used.numel(), device=dev) + n_pt_rois
            pt_props.append(proposals[i][pos[used]])
            pt_classes.append(labels[i][pos[used]])
            pair_rois.append(remap[k])
            pair_points.append(points[q][:, 1:4])
            n_pt_rois += int(used.numel())

        mask_proposals = [torch.cat([f, p]) for f, p in zip(full_props, pt_props)]
        mask_features = self.mask_head(self.mask_roi_pool(features, mask_proposals, image_shapes))
        mask_logits = self.mask_predictor(mask_features)
        zero = mask_logits.sum() * 0
        if mask_logits.shape[0] == 0:
            return zero
        # Split the logits back: per image, the first rows are full-mask, the rest point-supervised.
        chunks = mask_logits.split([int(p.shape[0]) for p in mask_proposals])
        n_full = sum(int(f.shape[0]) for f in full_props)
        loss, weight = zero, 0
        if n_full:
            full_logits = torch.cat([c[: f.shape[0]] for c, f in zip(chunks, full_props)])
            gt_masks = [t["masks"] for t in targets]
            gt_labels = [t["labels"] for t in targets]
            loss = loss + n_full * maskrcnn_loss(full_logits, full_props, gt_masks, gt_labels, full_idxs)
            weight += n_full
        if n_pt_rois:
            pt_logits = torch.cat([c[f.shape[0]:] for c, f in zip(chunks, full_props)])
            rois = torch.cat(pair_rois)
            total, inside = _point_terms(pt_logits, torch.cat(pt_props), torch.cat(pt_classes),
                                         torch.cat(pair_points), rois)
            n_pairs = int(inside.sum())
            if n_pairs:
                n_valid = int(torch.unique(rois[inside]).numel())  # proposals with a point inside
                loss = loss + n_valid * self.point_loss_weight * (total / n_pairs)
                weight += n_valid
        return loss / weight if weight else zero


def enable_point_supervision(model: MaskRCNN, point_loss_weight: float = 1.0) -> MaskRCNN:
    """Switch a built torchvision Mask R-CNN to point-supervised training, in place (its
    ``roi_heads`` becomes a ``PointSupRoIHeads`` and its ``transform`` a ``PointAwareTransform``;
    no parameter changes, state dicts stay compatible). Idempotent; returns the model."""
    if not point_loss_weight > 0:
        raise ConfigError(f"model.point_loss_weight must be > 0, got {point_loss_weight}")
    if not isinstance(model.roi_heads, PointSupRoIHeads):
        if type(model.roi_heads) is not RoIHeads:
            raise TypeError(f"expected torchvision RoIHeads, got {type(model.roi_heads).__name__}")
        model.roi_heads.__class__ = PointSupRoIHeads
    model.roi_heads.point_loss_weight = float(point_loss_weight)
    if not isinstance(model.transform, PointAwareTransform):
        if type(model.transform) is not GeneralizedRCNNTransform:
            raise TypeError(f"expected torchvision GeneralizedRCNNTransform, got {type(model.transform).__name__}")
        model.transform.__class__ = PointAwareTransform
    return model
