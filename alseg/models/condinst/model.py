"""CondInst (Tian, Shen, Chen, "Conditional Convolutions for Instance Segmentation", ECCV 2020) as
AdelaiDet builds it, with the call contract of torchvision's ``MaskRCNN``:

    model.train(); model(images, targets) -> dict of losses
    model.eval();  model(images) -> [{"boxes", "labels", "scores", "masks"}] per image

``images`` are (3, H, W) float tensors in [0, 1]; targets carry ``boxes`` (G, 4) xyxy pixels,
``labels`` (G,) int64 1..C, ``masks`` (G, H, W) uint8, and optionally ``has_mask`` (G,) bool and
``points`` (Q, 4) rows (instance index, x, y, label 0/1) as ``alseg.data.torch_dataset`` makes
them (see ``alseg.models.point_supervision``). torchvision's ``GeneralizedRCNNTransform``
normalises, resizes (min_size / max_size) and batches (padding to a multiple of 32); its
``postprocess`` maps boxes back to the image.

Network: ResNet + FPN giving P3-P5 from C3-C5 and P6, P7 from P5 (torchvision's
``LastLevelP6P7``), strides 8-128; the FCOS head shared over the levels with the controller (a
3x3 conv on the box tower giving every location the parameters of a dynamic mask head); the
mask branch (P3-P5 -> stride-8 mask features); per instance, the dynamic head on the mask features
plus relative coordinates, its logits upsampled to stride 4.

Training (losses ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr``, ``loss_mask``): FCOS on
every location; the mask loss on the positive locations of instances that have a mask label
(``has_mask``; all instances when a target has ``masks`` and no ``has_mask``), at most
``max_proposals`` random ones per image, each with its own dynamic head: dice loss of its stride-4
probabilities against the instance's ground-truth mask sampled at stride 4. With
``point_supervision``, positive locations of instances without a mask but with labeled points
also train: their stride-4 logits are sampled at the instance's points (bilinear) with a BCE on
those points only (APIS Sec. 4.1, PointSup's protocol). The two kinds mix as in
``alseg.models.point_supervision``: with n_m locations of full-mask instances (mean dice L_m) and
n_p of point-only ones (mean BCE over their (location, point) pairs L_p),
loss_mask = (n_m L_m + n_p w L_p) / (n_m + n_p), w = ``point_loss_weight``. Instances with neither
give no mask loss (box and class losses only). With ``box_background`` (default) L_p also adds,
per point-only location, the mean BCE against background over the cells outside the instance's
ground-truth box (``mask.outside_box_bce``): CondInst's masks cover the whole image, and with one
labeled point per instance nothing else stops them from doing so (measured: the APIS round-0
model of the synthetic recipe predicted every pixel of the image as the object, mask AP 0.000);
Mask R-CNN has this prior from its RoI masks. APIS / PointSup train CondInst on the points alone,
from ImageNet weights and for 90k iterations.

Inference: FCOS detections (threshold, per-level top-k, sqrt(cls x ctr), class-wise NMS); the
dynamic head of each kept detection's location gives its mask probabilities at stride 4;
``forward`` pastes them to the image (``aligned_bilinear`` x4, crop, bilinear resize).
``predict_instances`` keeps them at stride 4 with the extras strategies need, and
``positive_location_predictions`` gives, per ground-truth instance, the masks of its FCOS positive
locations (APIS's "multiple anchors" set on CondInst).

Differences from AdelaiDet: the center-sampling region is centred on the box centre (AdelaiDet
uses the mask's centre of mass when masks are loaded; point-labeled instances have no mask);
``max_proposals`` applies per image to supervised locations (AdelaiDet: per GPU batch, to all
positives); instances without a mask label give no mask loss (AdelaiDet has no such instances);
boxes are clipped to the image after NMS, as AdelaiDet's postprocess does, and empty ones dropped.
The mask branch may also read P2 (``mask_branch_in_features``; the CPU config does, for 128-pixel
images: configs/model/condinst_r18_small.yaml says why); AdelaiDet's default, P3-P5, is the
builder's default and the R50 config's.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from alseg.errors import ConfigError
from alseg.models.base import (MASK_IOU_HEAD, POINT_SUPERVISION, PREDICTION_SETS, SIGMOID, InstanceSegmenter,
                               check_training_targets, image_masks_to_box, resized_copy)
from alseg.models.condinst.fcos import FCOSHead, fcos_detections, fcos_losses, fcos_targets, size_ranges
from alseg.models.condinst.layers import aligned_bilinear, compute_locations, dice_loss
from alseg.models.condinst.mask import DynamicMaskHead, MaskBranch, outside_box_bce, point_bce_terms
from alseg.models.backbone import build_backbone
from alseg.models.backbone import norm_layer as _norm_layer
from alseg.models.base import load_checkpoint
from alseg.models.transform import PointAwareTransform

__all__ = ["CondInst", "Features", "box_frame_masks", "build_condinst", "mask_frame"]

IMAGE_MEAN = (0.485, 0.456, 0.406)  # torchvision's detection models' defaults
IMAGE_STD = (0.229, 0.224, 0.225)
STRIDES = (8, 16, 32, 64, 128)  # P3..P7: the FCOS levels
LEVEL_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}  # what the mask branch may read


class Features(NamedTuple):
    """One forward pass of the network on a batch, flattened over levels (L locations per image,
    level-major, row-major within a level)."""

    cls: Tensor  # (N, L, C) class logits
    reg: Tensor  # (N, L, 4) l, t, r, b / stride
    ctr: Tensor  # (N, L) centerness logits
    params: Tensor  # (N, L, P) dynamic-head parameters
    towers: Tensor | None  # (N, L, D) box-tower features (eval only)
    locations: Tensor  # (L, 2) x, y input-frame pixels
    levels: Tensor  # (L,) int64 level index 0..4 (P3..P7)
    mask_feats: Tensor  # (N, mask_channels, Hp / s, Wp / s), s = the mask branch's stride
    p3: Tensor  # (N, D, Hp / 8, Wp / 8)
    fpn: dict  # "p3", "p4", "p5": (N, D, Hp / 2^k, Wp / 2^k), for the mask-IoU head's RoI features


def mask_frame(resized_size: Sequence[int], original_size: Sequence[int], map_size: Sequence[int], stride: int
               ) -> Tensor:
    """(4,) xyxy box, in the original image frame, that a stride-``stride`` mask map of
    ``map_size`` (h, w) covers in the convention of ``roi_align(aligned=False)`` used by
    ``alseg.strategies.apis_core.bring_many_to_box``: cell c is centred at x1 + (c + 0.5) (x2 -
    x1) / w. Cell c is input-frame pixel stride c + stride // 2 (continuous centre + 0.5), so the
    box is [o, o + stride w] with o = stride // 2 + 0.5 - stride / 2 in the resized frame, then
    scaled to the original image."""
    h, w = map_size
    o = stride // 2 + 0.5 - stride / 2
    box = torch.tensor([[o, o, o + stride * w, o + stride * h]], dtype=torch.float32)
    return resize_boxes(box, list(resized_size), list(original_size))[0]


def box_frame_masks(maps: Tensor, boxes: Tensor, size: int, stride: int) -> Tensor:
    """(n, size, size) box-frame maps (``alseg.models.base.MASK_FRAME``) of stride-``stride`` maps
    ``maps`` (n, h, w) over the resized input, map i read over ``boxes[i]`` (xyxy, input-frame
    pixels). Map cell c is input pixel ``stride c + stride // 2`` (continuous centre + 0.5, as the
    ground truth is sampled in training); ``image_masks_to_box`` puts centres at (c + 0.5) stride,
    hence the shift of the boxes."""
    o = stride // 2 + 0.5 - stride / 2
    return image_masks_to_box(maps, boxes - o, size, stride=stride)


class CondInst(InstanceSegmenter):
    """CondInst behind alseg's model interface (``alseg.models.base``); see the module docstring.
    Built by ``build_condinst``.

    Interface layout: ``class_prob_layout`` SIGMOID (``class_probs`` (n, C): the location's
    per-class sigmoid scores, read by TAUDIS through ``base.class_distribution``); ``mask_probs``
    (n, M, M) over the detection box (``MASK_FRAME``, M = ``box_mask_size``), bilinear samples of
    the detection's stride-4 map; ``embeddings`` (n, D): the box-tower feature at the detection's
    location (D = FPN channels; what the controller and the box regression read, not pooled);
    ``image_embedding`` (D,): P3 averaged over the image; ``roi_features`` (n, D, M / 2, M / 2):
    ``MultiScaleRoIAlign`` of P3-P5 at the detection box, the mask-IoU head's input with the
    box-frame mask. Capabilities: prediction_sets (FCOS positive locations), point_supervision
    (``point_supervision=true``), mask_iou_head (``mask_iou``).
    """

    family = "condinst"
    class_prob_layout = SIGMOID

    def __init__(self, backbone: nn.Module, head: FCOSHead, mask_branch: MaskBranch, mask_head: DynamicMaskHead,
                 transform: PointAwareTransform, num_classes: int, sizes_of_interest: Sequence[float],
                 center_sample_radius: float = 1.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 max_proposals: int = 500, score_thresh: float = 0.05, pre_nms_top_n: int = 1000,
                 nms_thresh: float = 0.6, detections_per_img: int = 100, point_supervision: bool = False,
                 point_loss_weight: float = 1.0, mask_branch_in_features: Sequence[str] = ("p3", "p4", "p5"),
                 box_mask_size: int = 28, box_background: bool = True):
        super().__init__()
        self.box_background = bool(box_background)
        self.box_mask_size = int(box_mask_size)
        self.mask_iou_head: nn.Module | None = None
        self.mask_iou_cfg: dict = {}
        self.mask_in = list(mask_branch_in_features)
        self.mask_stride = LEVEL_STRIDES[self.mask_in[0]]  # the mask features' stride
        self.backbone, self.head, self.mask_branch, self.mask_head = backbone, head, mask_branch, mask_head
        self.transform = transform
        self.num_classes = num_classes
        self.strides = STRIDES
        self.ranges = size_ranges(sizes_of_interest)
        self.center_sample_radius = center_sample_radius
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.max_proposals = max_proposals
        self.score_thresh, self.pre_nms_top_n = score_thresh, pre_nms_top_n
        self.nms_thresh, self.detections_per_img = nms_thresh, detections_per_img
        self.point_supervision, self.point_loss_weight = point_supervision, point_loss_weight

    # ------------------------------------------------------------------ interface
    @property
    def mask_size(self) -> int:
        return self.box_mask_size

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {PREDICTION_SETS}
        if self.point_supervision:
            caps.add(POINT_SUPERVISION)
        if self.mask_iou_head is not None:
            caps.add(MASK_IOU_HEAD)
        return frozenset(caps)

    def train_mask_iou_head(self, dataset, device: str = "cpu", batch_size: int = 4, seed: int = 0,
                            progress: bool = True) -> dict[str, float]:
        from alseg.models.mask_iou_head import train_mask_iou_head

        if self.mask_iou_head is None:
            return super().train_mask_iou_head(dataset, device, batch_size, seed, progress)
        return train_mask_iou_head(self, dataset, device=device, batch_size=batch_size, seed=seed, progress=progress,
                                   **self.mask_iou_cfg)

    def _prediction_sets_once(self, image: Tensor, gt_boxes: Tensor, gt_labels: Tensor, match_iou: float | None,
                              scale: int | None) -> list[tuple[Tensor, Tensor]]:
        """The positive-location sets (``positive_location_predictions``) at input size ``scale``
        (a resized copy of the transform; the long-side limit in proportion), each map read over
        its instance's ground-truth box at ``mask_size`` (``MASK_FRAME``; frames = that box), so
        that sets of every scale and family have one shape. ``match_iou`` does not apply: FCOS
        assigns locations by position and size, not by box IoU."""
        transform = self.transform
        if scale is not None:
            transform = resized_copy(transform, min_size=(int(scale),),
                                     max_size=max(int(scale), transform.max_size * int(scale) // max(transform.min_size)))
        return self.positive_location_predictions(image, gt_boxes, gt_labels, transform=transform,
                                                  box_size=self.box_mask_size)

    # ------------------------------------------------------------------ network
    def features(self, x: Tensor, keep_towers: bool = False) -> Features:
        """The network on a padded, normalised batch (N, 3, Hp, Wp)."""
        levels = list(self.backbone(x).values())
        named = {}
        if len(levels) == len(STRIDES) + 1:  # the backbone also returns P2 (mask branch only)
            named["p2"] = levels.pop(0)
        named.update(zip(("p3", "p4", "p5"), levels[:3]))
        cls, reg, ctr, params, towers = self.head(levels)
        mask_feats = self.mask_branch([named[k] for k in self.mask_in])
        n = x.shape[0]

        def flat(ts):
            return torch.cat([t.permute(0, 2, 3, 1).reshape(n, -1, t.shape[1]) for t in ts], dim=1)

        locs, lids = [], []
        for i, (t, s) in enumerate(zip(cls, self.strides)):
            loc = compute_locations(t.shape[-2], t.shape[-1], s, x.device)
            locs.append(loc)
            lids.append(torch.full((loc.shape[0],), i, dtype=torch.long, device=x.device))
        return Features(flat(cls), flat(reg), flat(ctr)[..., 0], flat(params), flat(towers) if keep_towers else None,
                        torch.cat(locs), torch.cat(lids), mask_feats, levels[0],
                        {k: named[k] for k in ("p3", "p4", "p5")})

    def _stride_of(self, levels: Tensor) -> Tensor:
        return torch.as_tensor(self.strides, dtype=torch.float32, device=levels.device)[levels]

    def _mask_probs(self, f: Features, im_inds: Tensor, index: Tensor) -> Tensor:
        """Stride-``out_stride`` mask probabilities (n, Hp / s, Wp / s) of locations ``index`` of
        images ``im_inds``, each with its own dynamic head."""
        logits = self.mask_head.mask_logits(f.mask_feats, self.mask_stride, f.params[im_inds, index], f.locations[index],
                                            f.levels[index], im_inds)
        return logits[:, 0].float().sigmoid()

    # ------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training:
            check_training_targets(targets)
            image_list, targets = self.transform(images, targets)
            return self._losses(self.features(image_list.tensors), image_list, targets)
        records, image_list, original = self._infer(images)
        out = []
        for rec, size, orig in zip(records, image_list.image_sizes, original):
            masks = self._paste(rec["mask_maps"], size, orig)
            out.append({"boxes": rec["boxes"], "labels": rec["labels"], "scores": rec["scores"], "masks": masks})
        return out

    def _paste(self, probs: Tensor, size: Sequence[int], original: Sequence[int]) -> Tensor:
        """(n, h4, w4) stride-4 probabilities (cropped to the resized image) -> (n, 1, H, W)."""
        s = self.mask_head.out_stride
        if probs.shape[0] == 0:
            return probs.new_zeros((0, 1, *original))
        m = aligned_bilinear(probs[:, None], s)[:, :, : size[0], : size[1]]
        return F.interpolate(m, size=tuple(original), mode="bilinear", align_corners=False).clamp_(0, 1)

    # ------------------------------------------------------------------ training
    def _losses(self, f: Features, image_list, targets: list[dict]) -> dict[str, Tensor]:
        stride = self._stride_of(f.levels)
        gt_inds, labels, reg_t = [], [], []
        for t in targets:
            g, r = fcos_targets(f.locations, f.levels, self.strides, self.ranges, t["boxes"],
                                self.center_sample_radius)
            lab = t["labels"].to(g.device)
            gt_inds.append(g)
            labels.append(torch.where(g >= 0, lab[g.clamp(min=0)] if lab.numel() else g.clamp(min=0), 0))
            reg_t.append(r / stride[:, None])
        n, L, C = f.cls.shape
        losses = fcos_losses(f.cls.reshape(-1, C), f.reg.reshape(-1, 4), f.ctr.reshape(-1), torch.cat(labels),
                             torch.cat(reg_t), self.focal_alpha, self.focal_gamma)
        losses["loss_mask"] = self._mask_loss(f, image_list, targets, gt_inds)
        return losses

    def _mask_loss(self, f: Features, image_list, targets: list[dict], gt_inds: list[Tensor]) -> Tensor:
        dev = f.params.device
        s = self.mask_head.out_stride
        hp, wp = image_list.tensors.shape[-2:]
        im_inds, index, gts, is_full = [], [], [], []
        for i, (t, g_all) in enumerate(zip(targets, gt_inds)):
            pos = torch.nonzero(g_all >= 0).squeeze(1)
            g = g_all[pos]
            n_inst = t["boxes"].shape[0]
            if "has_mask" in t:
                has_mask = t["has_mask"].to(dev).bool().reshape(-1)
            else:
                has_mask = torch.full((n_inst,), "masks" in t, dtype=torch.bool, device=dev)
            full = has_mask[g]
            use = full.clone()
            if self.point_supervision and t.get("points") is not None and t["points"].numel():
                with_points = torch.zeros(n_inst, dtype=torch.bool, device=dev)
                with_points[t["points"][:, 0].round().long().to(dev)] = True
                use |= ~has_mask[g] & with_points[g]
            sel = torch.nonzero(use).squeeze(1)
            if 0 <= self.max_proposals < sel.numel():
                sel = sel[torch.randperm(sel.numel(), device=dev)[: self.max_proposals]]
            im_inds.append(torch.full((sel.numel(),), i, dtype=torch.long, device=dev))
            index.append(pos[sel])
            gts.append(g[sel])
            is_full.append(full[sel])
        im_inds, index, gts, is_full = torch.cat(im_inds), torch.cat(index), torch.cat(gts), torch.cat(is_full)
        zero = f.mask_feats.sum() * 0 + f.params.sum() * 0
        if index.numel() == 0:
            return zero
        logits = self.mask_head.mask_logits(f.mask_feats, self.mask_stride, f.params[im_inds, index], f.locations[index],
                                            f.levels[index], im_inds)[:, 0]
        loss, weight = zero, 0
        rows_full = torch.nonzero(is_full).squeeze(1)
        if rows_full.numel():
            # Each image's masks padded and sampled once; then one row per supervised location.
            bitmasks = [self._gt_bitmasks(t["masks"], hp, wp, s).to(dev) if "masks" in t else None for t in targets]
            first = torch.cumsum(torch.tensor([0] + [0 if b is None else b.shape[0] for b in bitmasks[:-1]],
                                              device=dev), 0)
            stacked = torch.cat([b for b in bitmasks if b is not None])
            gt = stacked[first[im_inds[rows_full]] + gts[rows_full]]
            d = dice_loss(logits[rows_full].float().sigmoid(), gt)
            loss = loss + d.sum()
            weight += int(rows_full.numel())
        rows_pt = torch.nonzero(~is_full).squeeze(1)
        if rows_pt.numel():
            # (location, point) pairs: every labeled point of the location's instance.
            pts = [t["points"].to(dev).float().reshape(-1, 4) if t.get("points") is not None
                   else torch.zeros((0, 4), device=dev) for t in targets]
            p_img = torch.cat([torch.full((p.shape[0],), i, dtype=torch.long, device=dev) for i, p in enumerate(pts)])
            pts = torch.cat(pts)
            eq = (im_inds[rows_pt, None] == p_img[None]) & (gts[rows_pt, None] == pts[None, :, 0].round().long())
            k, q = torch.nonzero(eq, as_tuple=True)
            total, n_pairs = point_bce_terms(logits, s, pts[q, 1:4], rows_pt[k])
            if n_pairs:
                l_p = total / n_pairs
                if self.box_background:
                    counts = torch.tensor([0] + [t["boxes"].shape[0] for t in targets[:-1]], device=dev)
                    boxes = torch.cat([t["boxes"].to(dev) for t in targets])[
                        torch.cumsum(counts, 0)[im_inds[rows_pt]] + gts[rows_pt]]
                    l_p = l_p + outside_box_bce(logits[rows_pt], s, boxes).mean()
                loss = loss + rows_pt.numel() * self.point_loss_weight * l_p
                weight += int(rows_pt.numel())
        return loss / weight if weight else zero

    @staticmethod
    def _gt_bitmasks(masks: Tensor, hp: int, wp: int, s: int) -> Tensor:
        """Resized masks (G, h, w) padded to (hp, wp) and sampled at stride s from pixel s // 2
        (AdelaiDet's ``add_bitmasks``): (G, hp / s, wp / s) float32."""
        h, w = masks.shape[-2:]
        return F.pad(masks.float(), (0, wp - w, 0, hp - h))[:, s // 2 :: s, s // 2 :: s]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def _infer(self, images: list[Tensor], keep_towers: bool = False, keep_features: bool = False):
        original = [tuple(im.shape[-2:]) for im in images]
        image_list, _ = self.transform(images)
        f = self.features(image_list.tensors, keep_towers=keep_towers)
        dets = []
        for i, size in enumerate(image_list.image_sizes):
            d = fcos_detections(f.cls[i], f.reg[i], f.ctr[i], f.locations, f.levels, self.strides, len(self.strides),
                                self.score_thresh, self.pre_nms_top_n, self.nms_thresh, self.detections_per_img)
            d["boxes"] = box_ops.clip_boxes_to_image(d["boxes"], tuple(size))
            wh = d["boxes"][:, 2:] - d["boxes"][:, :2]
            keep = (wh > 0).all(dim=1)
            dets.append({k: v[keep] for k, v in d.items()})
        im_inds = torch.cat([torch.full((len(d["index"]),), i, dtype=torch.long, device=f.params.device)
                             for i, d in enumerate(dets)])
        index = torch.cat([d["index"] for d in dets])
        probs = self._mask_probs(f, im_inds, index).split([len(d["index"]) for d in dets])
        s = self.mask_head.out_stride
        records = []
        for i, (d, p, size) in enumerate(zip(dets, probs, image_list.image_sizes)):
            h4, w4 = math.ceil(size[0] / s), math.ceil(size[1] / s)
            idx = d["index"]
            rec = {"boxes_input": d["boxes"], "scores": d["scores"], "labels": d["labels"], "index": idx,
                   "mask_maps": p[:, :h4, :w4], "locations": f.locations[idx], "levels": f.levels[idx],
                   "class_scores": f.cls[i, idx].float().sigmoid(), "centerness": f.ctr[i, idx].float().sigmoid()}
            if keep_towers:
                rec["embeddings"] = f.towers[i, idx].float()
                rec["image_embedding"] = f.p3[i].float().mean(dim=(1, 2))
            records.append(rec)
        post = self.transform.postprocess([{"boxes": r["boxes_input"]} for r in records], image_list.image_sizes,
                                          original)
        for r, p in zip(records, post):
            r["boxes"] = p["boxes"]
        if keep_features:
            return records, image_list, original, f
        return records, image_list, original

    @torch.no_grad()
    def predict_instances(self, images: list[Tensor], paste_masks: bool = False,
                          roi_features: bool = False) -> list[dict]:
        """Per image, the detections of ``model(images)`` (eval mode) with what strategies need
        (``alseg.models.base.InstancePredictions``, layout in the class docstring):

        - boxes (n, 4) float32 xyxy, original image frame; scores (n,); labels (n,) int64 1..C;
        - class_probs (n, C) float32: the sigmoid class scores at the detection's location
          (``SIGMOID`` layout, no background column);
        - mask_probs (n, M, M) float32: the detection's mask probabilities over its box
          (``MASK_FRAME``), bilinear samples (``image_masks_to_box``) of its stride-s map;
        - embeddings (n, D), image_embedding (D,) (class docstring);
        - with ``paste_masks``: masks (n, 1, H, W) as ``model(images)`` returns them; with
          ``roi_features``: the mask-IoU head's RoI features (n, D, M / 2, M / 2); with a mask-IoU
          head: pred_iou (n,) in [0, 1];
        - family extras: centerness (n,), locations (n, 2) input-frame pixels and levels (n,)
          (0..4: P3..P7) of the location that gave the detection; mask_maps (n, h_s, w_s) its
          stride-s map over the resized image (s = ``mask_out_stride``; cell (r, c) is input pixel
          (s r + s // 2, s c + s // 2)) and mask_frame (4,) the original-frame box those maps
          cover (``mask_frame()``).
        """
        self.eval()
        want_rois = roi_features or self.mask_iou_head is not None
        records, image_list, original, f = self._infer(images, keep_towers=True, keep_features=True)
        s = self.mask_head.out_stride
        if want_rois:
            pooled = self._roi_pool(f, [r["boxes_input"] for r in records], image_list.image_sizes)
        for i, (r, size, orig) in enumerate(zip(records, image_list.image_sizes, original)):
            r["class_probs"] = r.pop("class_scores")
            r["mask_frame"] = mask_frame(size, orig, r["mask_maps"].shape[-2:], s).to(r["boxes"].device)
            r["mask_probs"] = box_frame_masks(r["mask_maps"], r["boxes_input"], self.box_mask_size, s)
            if paste_masks:
                r["masks"] = self._paste(r["mask_maps"], size, orig)
            if want_rois:
                if roi_features:
                    r["roi_features"] = pooled[i]
                if self.mask_iou_head is not None:
                    r["pred_iou"] = self.mask_iou_head.predict(pooled[i], r["mask_probs"])
        return records

    def _roi_pool(self, f: Features, boxes: list[Tensor], image_sizes) -> list[Tensor]:
        """Per image (n, D, R, R) RoI features of ``boxes`` (input frame) from P3-P5, R = M / 2
        (torchvision's ``MultiScaleRoIAlign``: each box read from the level its size maps to)."""
        from torchvision.ops import MultiScaleRoIAlign

        pool = MultiScaleRoIAlign(["p3", "p4", "p5"], self.box_mask_size // 2, sampling_ratio=2)
        pooled = pool(f.fpn, boxes, image_sizes)
        return list(pooled.split([len(b) for b in boxes]))

    @torch.no_grad()
    def positive_location_predictions(self, image: Tensor, gt_boxes: Tensor, gt_labels: Tensor | None = None,
                                      with_locations: bool = False, transform=None,
                                      box_size: int | None = None) -> list[tuple]:
        """APIS's "multiple anchors" prediction set on CondInst (Sec. 3.2 (a)): for each
        ground-truth instance of ``image`` (3, H, W), the FCOS positive locations training would
        assign to it (``fcos_targets``: center sampling, size ranges, smallest area), each with the
        mask probabilities of its own dynamic head.

        Returns per instance (mask_probs (K, h_s, w_s) float32 at the mask stride s over the
        resized image as ``mask_maps`` of ``predict_instances``, frames (K, 4): the original-frame
        box each map covers, in the convention of ``alseg.models.base.MASK_FRAME``); with
        ``with_locations`` also locations (K, 2) in the original frame and levels (K,). K = 0 when
        no location is positive for the instance. ``gt_labels`` is not used (CondInst masks are
        class-agnostic). ``transform``: the input transform to use (default: the model's).
        ``box_size``: instead, maps (K, box_size, box_size) over the instance's ground-truth box
        (``box_frame_masks``), frames that box (original frame)."""
        self.eval()
        transform = self.transform if transform is None else transform
        original = tuple(image.shape[-2:])
        image_list, _ = transform([image])
        size = image_list.image_sizes[0]
        f = self.features(image_list.tensors)
        boxes = resize_boxes(gt_boxes.to(f.locations).reshape(-1, 4), list(original), list(size))
        g_all, _ = fcos_targets(f.locations, f.levels, self.strides, self.ranges, boxes, self.center_sample_radius)
        s = self.mask_head.out_stride
        h4, w4 = math.ceil(size[0] / s), math.ceil(size[1] / s)
        frame = mask_frame(size, original, (h4, w4), s).to(f.locations.device)
        ratio = f.locations.new_tensor([original[1] / size[1], original[0] / size[0]])
        out = []
        for g in range(boxes.shape[0]):
            idx = torch.nonzero(g_all == g).squeeze(1)
            probs = self._mask_probs(f, torch.zeros_like(idx), idx)[:, :h4, :w4]
            if box_size is None:
                item = (probs, frame[None].expand(idx.numel(), 4).clone())
            else:
                item = (box_frame_masks(probs, boxes[g:g + 1].expand(idx.numel(), 4), box_size, s),
                        gt_boxes[g:g + 1].to(probs).expand(idx.numel(), 4).clone())
            if with_locations:
                item = item + (f.locations[idx] * ratio, f.levels[idx])
            out.append(item)
        return out


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"model.{key}: {msg}")


def build_condinst(
    num_classes: int,
    backbone: str = "resnet18",
    fpn_channels: int = 64,
    norm: str = "bn",
    trainable_layers: int = 5,
    backbone_weights: str | None = None,
    checkpoint: str | None = None,
    min_size: int | Sequence[int] = 128,
    max_size: int = 128,
    head_convs: int = 4,
    head_norm: str = "gn",
    prior_prob: float = 0.01,
    sizes_of_interest: Sequence[float] = (64, 128, 256, 512),
    center_sample_radius: float = 1.5,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    mask_branch_channels: int = 128,
    mask_branch_convs: int = 4,
    mask_branch_norm: str = "bn",
    mask_channels: int = 8,
    dynamic_channels: int = 8,
    dynamic_layers: int = 3,
    mask_out_stride: int = 4,
    max_proposals: int = 500,
    score_thresh: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_thresh: float = 0.6,
    detections_per_img: int = 100,
    point_supervision: bool = False,
    point_loss_weight: float = 1.0,
    mask_branch_in_features: Sequence[str] = ("p3", "p4", "p5"),
    box_mask_size: int = 28,
    mask_iou: dict | None = None,
    box_background: bool = True,
) -> CondInst:
    """A ``CondInst`` whose every size is a config value (the Hydra ``_target_`` of
    configs/model/condinst_*.yaml). Defaults not named in a config are AdelaiDet's.

    backbone, norm, trainable_layers, backbone_weights: the ResNet as in
    ``alseg.models.backbone.build_backbone`` (C3-C5 returned; FPN of ``fpn_channels`` with P6/P7
    from P5). sizes_of_interest: the 4 thresholds (pixels of max(l, t, r, b) in the input frame)
    splitting locations between P3..P7 (``fcos.size_ranges``); the relative coordinates of level
    k are divided by sizes_of_interest[k] (the last level: twice the last threshold), as in
    AdelaiDet. max_proposals: supervised positive locations per image in the mask loss (-1: all).
    mask_branch_in_features: the FPN levels the mask branch sums, finest first (its stride is the
    mask features' stride; AdelaiDet's MASK_BRANCH.IN_FEATURES, [p3, p4, p5]); "p2" adds C2 to the
    FPN for it (FCOS still runs on P3-P7). box_mask_size: M of the (n, M, M) box-frame mask
    probabilities of ``predict_instances`` (even; Mask R-CNN's is 28). mask_iou: a mask-IoU head
    (``alseg.models.mask_iou_head.MaskIoUHead`` on P3-P5 RoI features and the box-frame mask; keys
    iters, lr, sqrt, conv_dim, fc_dim as for Mask R-CNN). box_background: with point supervision,
    the stride-4 cells outside a point-only instance's ground-truth box count as labeled
    background (``mask.outside_box_bce``, mean over those cells, added to the mean point BCE).
    checkpoint: a state dict file (``alseg.models.base.load_checkpoint``). Raises
    ConfigError naming the key for an invalid value.
    """
    _check(num_classes >= 1, "num_classes", f"must be >= 1, got {num_classes}")
    soi = [float(v) for v in sizes_of_interest]
    _check(len(soi) == len(STRIDES) - 1 and all(v > 0 for v in soi) and soi == sorted(soi) and len(set(soi)) == len(soi),
           "sizes_of_interest", f"needs {len(STRIDES) - 1} increasing positive thresholds (P3..P7), got {list(sizes_of_interest)}")
    _check(center_sample_radius >= 0, "center_sample_radius", f"must be >= 0 (0: no center sampling), got {center_sample_radius}")
    _check(mask_out_stride in (1, 2, 4, 8), "mask_out_stride", f"must be 1, 2, 4 or 8, got {mask_out_stride}")
    for key, value in (("head_convs", head_convs), ("mask_branch_convs", mask_branch_convs)):
        _check(value >= 0, key, f"must be >= 0, got {value}")
    for key, value in (("fpn_channels", fpn_channels), ("mask_branch_channels", mask_branch_channels),
                       ("mask_channels", mask_channels), ("dynamic_channels", dynamic_channels),
                       ("dynamic_layers", dynamic_layers), ("pre_nms_top_n", pre_nms_top_n),
                       ("detections_per_img", detections_per_img)):
        _check(value >= 1, key, f"must be >= 1, got {value}")
    _check(max_proposals == -1 or max_proposals >= 1, "max_proposals", f"must be >= 1 or -1 (all), got {max_proposals}")
    _check(0 < prior_prob < 1, "prior_prob", f"must be in (0, 1), got {prior_prob}")
    _check(0 <= score_thresh < 1, "score_thresh", f"must be in [0, 1), got {score_thresh}")
    _check(0 < nms_thresh <= 1, "nms_thresh", f"must be in (0, 1], got {nms_thresh}")
    _check(point_loss_weight > 0, "point_loss_weight", f"must be > 0, got {point_loss_weight}")
    mask_in = [str(v) for v in mask_branch_in_features]
    _check(bool(mask_in) and all(v in LEVEL_STRIDES for v in mask_in) and len(set(mask_in)) == len(mask_in)
           and [LEVEL_STRIDES[v] for v in mask_in] == sorted(LEVEL_STRIDES[v] for v in mask_in),
           "mask_branch_in_features", f"needs distinct levels of {sorted(LEVEL_STRIDES)}, finest first, got {mask_in}")
    _check(LEVEL_STRIDES[mask_in[0]] % mask_out_stride == 0, "mask_out_stride",
           f"must divide the mask branch's stride {LEVEL_STRIDES[mask_in[0]]} ({mask_in[0]}), got {mask_out_stride}")
    for key, value in (("point_supervision", point_supervision), ("box_background", box_background)):
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    _check(box_mask_size >= 2 and box_mask_size % 2 == 0, "box_mask_size", f"must be an even number >= 2, got {box_mask_size}")
    head_norm_layer = None if head_norm in (None, "none") else _norm_layer(head_norm)
    branch_norm_layer = None if mask_branch_norm in (None, "none") else _norm_layer(mask_branch_norm)

    returned = (1, 2, 3, 4) if "p2" in mask_in else (2, 3, 4)
    body = build_backbone(backbone, fpn_channels, returned, norm, trainable_layers, backbone_weights)
    body.fpn.extra_blocks = LastLevelP6P7(fpn_channels, fpn_channels)  # P6, P7 from P5 (FCOS)
    mask_head = DynamicMaskHead(mask_channels, dynamic_channels, dynamic_layers, mask_out_stride,
                                rel_coord_norms=[*soi, soi[-1] * 2])
    head = FCOSHead(fpn_channels, num_classes, len(STRIDES), mask_head.num_params, head_convs, head_norm_layer,
                    prior_prob)
    branch = MaskBranch(fpn_channels, mask_branch_channels, mask_branch_convs, mask_channels, branch_norm_layer,
                        num_inputs=len(mask_in))
    transform = PointAwareTransform(tuple(min_size) if isinstance(min_size, (list, tuple)) else int(min_size),
                                    int(max_size), list(IMAGE_MEAN), list(IMAGE_STD))
    model = CondInst(body, head, branch, mask_head, transform, num_classes, soi, center_sample_radius, focal_alpha,
                     focal_gamma, max_proposals, score_thresh, pre_nms_top_n, nms_thresh, detections_per_img,
                     bool(point_supervision), float(point_loss_weight), mask_in, int(box_mask_size),
                     bool(box_background))
    if mask_iou:
        from alseg.models.mask_iou_head import MaskIoUHead

        unknown = set(mask_iou) - {"iters", "lr", "sqrt", "conv_dim", "fc_dim"}
        _check(not unknown, "mask_iou", f"unknown key(s) {sorted(unknown)}; known: conv_dim, fc_dim, iters, lr, sqrt")
        model.mask_iou_head = MaskIoUHead(fpn_channels, conv_dim=int(mask_iou.get("conv_dim", 64)),
                                          fc_dim=int(mask_iou.get("fc_dim", 256)), roi_size=int(box_mask_size) // 2,
                                          sqrt=bool(mask_iou.get("sqrt", True)))
        model.mask_iou_cfg = {"iters": int(mask_iou.get("iters", 200)), "lr": float(mask_iou.get("lr", 0.01))}
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model
