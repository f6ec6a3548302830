"""The ResNet + FPN backbones both model families build on (torchvision parts)."""

from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from alseg.errors import ConfigError
from alseg.models.base import fetch_torchvision_weights as _fetch_weights
from alseg.models.base import resolve_weights as _resolve_weights

__all__ = ["BACKBONES", "NORMS", "build_backbone", "norm_layer"]

BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
NORMS = {"frozen_bn": "frozen_bn", "bn": "bn", "gn": "gn"}


def norm_layer(name: str):
    """The normalisation layer class (or factory of one argument, the channels) named ``name``:
    frozen_bn (torchvision's FrozenBatchNorm2d), bn, gn (GroupNorm, min(32, C / 4) groups); a
    ConfigError naming ``model.norm`` otherwise."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    if name == "frozen_bn":
        return FrozenBatchNorm2d
    if name == "bn":
        return nn.BatchNorm2d
    if name == "gn":
        return lambda c: nn.GroupNorm(min(32, c // 4) or 1, c)
    raise ConfigError(f"model.norm: unknown norm {name!r}; choose from {sorted(NORMS)}")


def build_backbone(
    name: str,
    fpn_channels: int,
    returned_layers: Sequence[int],
    norm: str,
    trainable_layers: int,
    weights: str | None,
) -> BackboneWithFPN:
    """A torchvision ResNet (``name``) with an FPN of ``fpn_channels`` on stages ``returned_layers``
    (1..4: C2..C5), ``norm`` layers, the last ``trainable_layers`` stages trained (0..5), and
    ImageNet weights ``weights`` (a torchvision ``ResNet*_Weights`` name, through the weights API;
    None: random). Extra block: LastLevelMaxPool (Mask R-CNN's; CondInst replaces it with P6/P7).
    Raises ConfigError naming the key for an unknown backbone, layer, count or weights."""
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    if not returned_layers or any(l not in (1, 2, 3, 4) for l in returned_layers):
        raise ConfigError(f"model.returned_layers must be a non-empty subset of [1, 2, 3, 4], got {list(returned_layers)}")
    if not 0 <= trainable_layers <= 5:
        raise ConfigError(f"model.trainable_layers must be in 0..5, got {trainable_layers}")
    net = getattr(resnet, name)(weights=None, norm_layer=norm_layer(norm))
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
