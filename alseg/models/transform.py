"""The input transform both model families use: torchvision's ``GeneralizedRCNNTransform``
(normalise, resize by min_size / max_size, batch with padding to a multiple of 32) carrying labeled
points through the resize."""

from __future__ import annotations

from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["PointAwareTransform"]


class PointAwareTransform(GeneralizedRCNNTransform):
    """torchvision's transform, which also rescales target ``points`` (columns 1, 2: x, y) by the
    image's resize ratios, exactly as it rescales boxes."""

    def resize(self, image, target=None):
        h, w = image.shape[-2:]
        image, target = super().resize(image, target)
        if target is not None and "points" in target and target["points"].numel():
            nh, nw = image.shape[-2:]
            pts = target["points"].clone().float()
            pts[:, 1] *= nw / w
            pts[:, 2] *= nh / h
            target["points"] = pts
        return image, target
