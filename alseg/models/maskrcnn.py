"""torchvision Mask R-CNN, built from config: backbone, FPN width, head widths, anchors, RoI counts.

The small configuration (ResNet-18 FPN, 64 channels, narrow heads, 128-pixel images) trains on a
CPU; the ResNet-50 FPN / 256-channel / COCO-size configuration is torchvision's default model.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from alseg.errors import ConfigError

log = logging.getLogger(__name__)

BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
NORMS = {"frozen_bn": "frozen_bn", "bn": "bn", "gn": "gn"}


def _norm_layer(name: str):
    from torchvision.ops.misc import FrozenBatchNorm2d

    if name == "frozen_bn":
        return FrozenBatchNorm2d
    if name == "bn":
        return nn.BatchNorm2d
    if name == "gn":
        return lambda c: nn.GroupNorm(min(32, c // 4) or 1, c)
    raise ConfigError(f"model.norm: unknown norm {name!r}; choose from {sorted(NORMS)}")


def _fetch_weights(weights_enum, what: str, timeout_s: float = 20.0):
    """Resolve torchvision weights; fail with one clear line (never hang) when offline."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # urllib / socket / hash errors all mean the same to the user
        raise ConfigError(
            f"model.{what}: cannot fetch torchvision weights {weights_enum} ({type(e).__name__}: {e}); "
            f"put the file in $TORCH_HOME/hub/checkpoints or set model.{what}=null / model.checkpoint=PATH"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def _resolve_weights(spec: str | None, family, what: str):
    if spec in (None, "", "none", "null"):
        return None
    try:
        return family[spec] if spec != "DEFAULT" else family.DEFAULT
    except KeyError:
        raise ConfigError(f"model.{what}: unknown weights {spec!r}; choose from {[w.name for w in family]}") from None


def build_backbone(
    name: str,
    fpn_channels: int,
    returned_layers: Sequence[int],
    norm: str,
    trainable_layers: int,
    weights: str | None,
) -> BackboneWithFPN:
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    if not returned_layers or any(l not in (1, 2, 3, 4) for l in returned_layers):
        raise ConfigError(f"model.returned_layers must be a non-empty subset of [1, 2, 3, 4], got {list(returned_layers)}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"model.trainable_layers must be in 0..5, got {trainable_layers}")
    net = getattr(resnet, name)(weights=None, norm_layer=_norm_layer(norm))
    family = resnet.__dict__[{"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                              "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}[name]]
    w = _resolve_weights(weights, family, "backbone_weights")
    if w is not None:
        net.load_state_dict(_fetch_weights(w, "backbone_weights"))
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for pname, p in net.named_parameters():
        if all(not pname.startswith(layer) for layer in layers_to_train):
            p.requires_grad_(False)
    stage_channels = BACKBONES[name] // 8
    in_channels = [stage_channels * 2 ** (i - 1) for i in returned_layers]
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    return BackboneWithFPN(net, return_layers, in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())


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
) -> MaskRCNN:
    """A torchvision ``MaskRCNN`` whose every size is a config value.

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
    model = MaskRCNN(
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


def load_checkpoint(model: nn.Module, path: str) -> None:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.checkpoint: file not found: {p}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.checkpoint: {p} is not a readable torch checkpoint ({type(e).__name__})") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(model.state_dict()):
        raise ConfigError(f"model.checkpoint: {p} does not match this model ({len(unexpected)} unexpected keys)")
