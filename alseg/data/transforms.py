"""Training augmentations applied consistently to the image, boxes, masks and labeled points.

A sample is a dict: ``image`` (H, W, 3) uint8, ``boxes`` (n, 4) float xyxy, ``labels`` (n,),
``masks`` (n, H, W) uint8 (rows of instances without a mask label are all zero and
``has_mask`` is False for them), and ``points`` (m, 4) float: instance index, x, y, label (0/1).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from alseg.errors import ConfigError


def _keep_instances(sample: dict, keep: np.ndarray) -> dict:
    old_to_new = -np.ones(len(keep), dtype=np.int64)
    old_to_new[keep] = np.arange(int(keep.sum()))
    for k in ("boxes", "labels", "masks", "has_mask", "ann_ids"):
        sample[k] = sample[k][keep]
    pts = sample["points"]
    if len(pts):
        idx = old_to_new[pts[:, 0].astype(np.int64)]
        pts = pts[idx >= 0].copy()
        pts[:, 0] = idx[idx >= 0]
    sample["points"] = pts
    return sample


class HorizontalFlip:
    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"transforms.hflip: p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, s: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return s
        w = s["image"].shape[1]
        s["image"] = s["image"][:, ::-1].copy()
        s["masks"] = s["masks"][:, :, ::-1].copy()
        b = s["boxes"].copy()
        b[:, 0], b[:, 2] = w - s["boxes"][:, 2], w - s["boxes"][:, 0]
        s["boxes"] = b
        if len(s["points"]):
            s["points"] = s["points"].copy()
            # Point coordinates are pixel centres in continuous coordinates: x -> w - x.
            s["points"][:, 1] = w - s["points"][:, 1]
        return s


class ScaleJitter:
    """Large-scale-jitter style: rescale by s in [min_scale, max_scale], then crop or pad back to
    the original canvas, so object sizes change relative to the image (a plain resize would be
    undone by the detector's own resizing)."""

    def __init__(self, min_scale: float = 0.8, max_scale: float = 1.25, min_box_size: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ConfigError(f"transforms.scale_jitter: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale, self.min_box_size = min_scale, max_scale, min_box_size

    def __call__(self, s: dict, rng: np.random.Generator) -> dict:
        scale = float(rng.uniform(self.min_scale, self.max_scale))
        h, w = s["image"].shape[:2]
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        sy, sx = nh / h, nw / w
        img = cv2.resize(s["image"], (nw, nh), interpolation=cv2.INTER_LINEAR)
        masks = s["masks"]
        if len(masks):
            masks = np.stack([cv2.resize(m, (nw, nh), interpolation=cv2.INTER_NEAREST) for m in masks])
        else:
            masks = np.zeros((0, nh, nw), np.uint8)
        oy = int(rng.integers(0, nh - h + 1)) if nh > h else 0
        ox = int(rng.integers(0, nw - w + 1)) if nw > w else 0
        canvas = np.zeros((h, w, 3), np.uint8)
        canvas[:] = img.reshape(-1, 3).mean(0).astype(np.uint8)
        ch, cw = min(h, nh), min(w, nw)
        canvas[:ch, :cw] = img[oy : oy + ch, ox : ox + cw]
        out_masks = np.zeros((len(masks), h, w), np.uint8)
        out_masks[:, :ch, :cw] = masks[:, oy : oy + ch, ox : ox + cw]
        boxes = s["boxes"] * np.array([sx, sy, sx, sy], np.float32) - np.array([ox, oy, ox, oy], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, cw)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, ch)
        s["image"], s["masks"], s["boxes"] = canvas, out_masks, boxes
        pts = s["points"]
        if len(pts):
            pts = pts.copy()
            pts[:, 1] = pts[:, 1] * sx - ox
            pts[:, 2] = pts[:, 2] * sy - oy
            inside = (pts[:, 1] >= 0) & (pts[:, 1] < cw) & (pts[:, 2] >= 0) & (pts[:, 2] < ch)
            s["points"] = pts[inside]
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh >= self.min_box_size).all(1)
        keep &= ~s["has_mask"] | (out_masks.reshape(len(out_masks), -1).any(1) if len(out_masks) else keep)
        return _keep_instances(s, keep)


class BrightnessContrast:
    def __init__(self, brightness: float = 0.2, contrast: float = 0.2):
        if brightness < 0 or contrast < 0:
            raise ConfigError("transforms.brightness_contrast: brightness and contrast must be >= 0")
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, s: dict, rng: np.random.Generator) -> dict:
        alpha = 1.0 + rng.uniform(-self.contrast, self.contrast)
        beta = 255.0 * rng.uniform(-self.brightness, self.brightness)
        img = s["image"].astype(np.float32)
        mean = img.mean()
        s["image"] = np.clip((img - mean) * alpha + mean + beta, 0, 255).astype(np.uint8)
        return s


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, s: dict, rng: np.random.Generator) -> dict:
        for t in self.transforms:
            s = t(s, rng)
        return s


def build_transforms(cfg: dict | None) -> Compose:
    """From ``{hflip: 0.5, scale_jitter: [0.8, 1.25], brightness_contrast: [0.2, 0.2]}`` (null = off)."""
    cfg = dict(cfg or {})
    ts = []
    if cfg.get("hflip"):
        ts.append(HorizontalFlip(float(cfg["hflip"])))
    if cfg.get("scale_jitter"):
        lo, hi = cfg["scale_jitter"]
        ts.append(ScaleJitter(float(lo), float(hi)))
    if cfg.get("brightness_contrast"):
        b, c = cfg["brightness_contrast"]
        ts.append(BrightnessContrast(float(b), float(c)))
    unknown = set(cfg) - {"hflip", "scale_jitter", "brightness_contrast"}
    if unknown:
        raise ConfigError(f"transforms: unknown key(s) {sorted(unknown)}")
    return Compose(ts)
