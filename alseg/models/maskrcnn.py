"""The Mask R-CNN family: torchvision's Mask R-CNN behind alseg's model interface
(``alseg.models.base.InstanceSegmenter``), built from config: backbone, FPN width, head widths,
anchors, RoI counts, and optionally a mask-IoU head and point supervision.

The small configuration (ResNet-18 FPN, 64 channels, narrow heads, 128-pixel images) trains on a
CPU; the ResNet-50 FPN / 256-channel / COCO-size configuration is torchvision's default model.

``MaskRCNNSegmenter`` is a torchvision ``MaskRCNN`` (the same module tree, so state dicts saved
by earlier alseg versions load unchanged: backbone.*, rpn.*, roi_heads.*, mask_iou_head.*) with the
interface methods:

- class_prob_layout ``softmax_with_background``: class_probs (n, C + 1), the box head's softmax;
- mask_probs (n, 28, 28) for the default heads (M = 2 x the mask RoI size), over the detection box;
- embeddings (n, D): the mask head's output (the 4-conv stack before the predictor, on the
  detection's R x R RoI features) average-pooled, D = mask_head_layers[-1];
- image_embedding (D',): FPN level '0' (stride 4 of the resized input) average-pooled, D' =
  fpn_channels;
- prediction sets: the anchors set (RPN proposals matched to the instance), at any input size
  (a copy of the transform resizes; the model's own is never changed) and flipped;
- capabilities: prediction_sets always; point_supervision with ``point_supervision=true``
  (``PointSupRoIHeads``); mask_iou_head with ``mask_iou`` (``MaskIoUHead``).
"""

from __future__ import annotations

import logging
from typing import Sequence

from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from alseg.errors import ConfigError
from alseg.models.base import (MASK_IOU_HEAD, POINT_SUPERVISION, PREDICTION_SETS, SOFTMAX_WITH_BACKGROUND,
                               InstanceSegmenter, load_checkpoint, resized_copy)
from alseg.models.backbone import build_backbone
from alseg.models.base import fetch_torchvision_weights as _fetch_weights
from alseg.models.base import resolve_weights as _resolve_weights
from alseg.models.instance_inference import maskrcnn_anchor_sets, maskrcnn_instances

__all__ = ["MaskRCNNSegmenter", "build_backbone", "build_maskrcnn", "load_checkpoint"]

log = logging.getLogger(__name__)

class MaskRCNNSegmenter(MaskRCNN, InstanceSegmenter):
    """torchvision's ``MaskRCNN`` with alseg's model interface (module docstring). Built by
    ``build_maskrcnn``; point supervision and the mask-IoU head are set there."""

    family = "maskrcnn"
    class_prob_layout = SOFTMAX_WITH_BACKGROUND

    @property
    def mask_size(self) -> int:
        r = self.roi_heads.mask_roi_pool.output_size
        return 2 * (r[0] if isinstance(r, (list, tuple)) else r)  # the predictor upsamples the RoI x2

    @property
    def capabilities(self) -> frozenset[str]:
        from alseg.models.point_supervision import PointSupRoIHeads

        caps = {PREDICTION_SETS}
        if isinstance(self.roi_heads, PointSupRoIHeads):
            caps.add(POINT_SUPERVISION)
        if getattr(self, "mask_iou_head", None) is not None:
            caps.add(MASK_IOU_HEAD)
        return frozenset(caps)

    def predict_instances(self, images, paste_masks: bool = False, roi_features: bool = False) -> list[dict]:
        return maskrcnn_instances(self, images, paste_masks=paste_masks, roi_features=roi_features)

    def _prediction_sets_once(self, image, gt_boxes, gt_labels, match_iou, scale):
        transform = self.transform
        if scale is not None:  # the short side at `scale`, the long-side limit in proportion
            transform = resized_copy(transform, min_size=(int(scale),),
                                     max_size=max(int(scale), transform.max_size * int(scale) // max(transform.min_size)))
        return maskrcnn_anchor_sets(self, transform, image, gt_boxes, gt_labels, match_iou)

    def train_mask_iou_head(self, dataset, device: str = "cpu", batch_size: int = 4, seed: int = 0,
                            progress: bool = True) -> dict[str, float]:
        from alseg.models.mask_iou_head import train_mask_iou_head

        if getattr(self, "mask_iou_head", None) is None:
            return super().train_mask_iou_head(dataset, device, batch_size, seed, progress)
        return train_mask_iou_head(self, dataset, device=device, batch_size=batch_size, seed=seed, progress=progress,
                                   **self.mask_iou_cfg)


def build_maskrcnn(
    num_classes: int,
    backbone: str = "resnet18",
    fpn_channels: int = 64,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    norm: str = "bn",
    trainable_layers: int = 5,
    backbone_weights: str | None = None,
    weights: str | None = None,
    checkpoint: str | None = None,
    min_size: int | Sequence[int] = 128,
    max_size: int = 128,
    anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    box_head_dim: int = 256,
    mask_head_layers: Sequence[int] = (64, 64),
    rpn_pre_nms_top_n_train: int = 600,
    rpn_post_nms_top_n_train: int = 300,
    rpn_pre_nms_top_n_test: int = 300,
    rpn_post_nms_top_n_test: int = 150,
    rpn_batch_size_per_image: int = 128,
    box_batch_size_per_image: int = 64,
    box_score_thresh: float = 0.05,
    box_detections_per_img: int = 100,
    mask_iou: dict | None = None,
    point_supervision: bool = False,
    point_loss_weight: float = 1.0,
) -> MaskRCNNSegmenter:
    """A ``MaskRCNNSegmenter`` (torchvision ``MaskRCNN``) whose every size is a config value.

    ``weights`` names a COCO-trained torchvision Mask R-CNN weight set (ResNet-50 FPN, 256
    channels, only); its class heads are replaced when ``num_classes`` differs from COCO's 91.
    """
    if num_classes < 1:
        raise ConfigError(f"model: num_classes must be >= 1, got {num_classes}")
    n_levels = len(returned_layers) + 1  # + the max-pooled extra level
    if len(anchor_sizes) != n_levels:
        raise ConfigError(
            f"model.anchor_sizes needs one size per FPN level ({n_levels} for returned_layers={list(returned_layers)}), got {list(anchor_sizes)}"
        )
    body = build_backbone(backbone, fpn_channels, returned_layers, norm, trainable_layers, backbone_weights)
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), (tuple(float(a) for a in aspect_ratios),) * n_levels)
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_head_dim)
    mask_layers = tuple(int(c) for c in mask_head_layers)
    model = MaskRCNNSegmenter(
        body,
        num_classes=None,
        min_size=tuple(min_size) if isinstance(min_size, (list, tuple)) else int(min_size),
        max_size=int(max_size),
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head_dim, num_classes + 1),
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img,
        mask_head=MaskRCNNHeads(fpn_channels, mask_layers, 1),
        mask_predictor=MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes + 1),
    )
    if mask_iou:
        from alseg.models.mask_iou_head import MaskIoUHead

        unknown = set(mask_iou) - {"iters", "lr", "sqrt", "conv_dim", "fc_dim"}
        if unknown:
            raise ConfigError(f"model.mask_iou: unknown key(s) {sorted(unknown)}")
        model.mask_iou_head = MaskIoUHead(fpn_channels, conv_dim=int(mask_iou.get("conv_dim", 64)),
                                          fc_dim=int(mask_iou.get("fc_dim", 256)), sqrt=bool(mask_iou.get("sqrt", True)))
        model.mask_iou_cfg = {"iters": int(mask_iou.get("iters", 200)), "lr": float(mask_iou.get("lr", 0.01))}
    if point_supervision:  # APIS / PointSup: instances labeled by points train the mask head
        from alseg.models.point_supervision import enable_point_supervision

        enable_point_supervision(model, point_loss_weight)
    if weights not in (None, "", "none", "null"):
        _load_coco_weights(model, weights, backbone, fpn_channels)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def _load_coco_weights(model: MaskRCNN, spec: str, backbone: str, fpn_channels: int) -> None:
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    if backbone != "resnet50" or fpn_channels != 256:
        raise ConfigError("model.weights: COCO Mask R-CNN weights need backbone=resnet50 and fpn_channels=256")
    w = _resolve_weights(spec, MaskRCNN_ResNet50_FPN_Weights, "weights")
    state = _fetch_weights(w, "weights")
    own = model.state_dict()
    # Heads sized for another class count (or width) are left at their initialisation.
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    log.info("loaded %d/%d tensors of %s", len(kept), len(own), w)
