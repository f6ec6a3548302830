"""Synthetic instance-segmentation data written as PNG images + COCO JSON.

The default experiment and the tests read it through the same COCO reader as real data. Scenes have
several shape classes with a long-tailed frequency, objects of varied scale, and occlusion (later
objects cover earlier ones; the ground truth is the visible part), so that which images get labeled
matters. Generation is deterministic per (parameters, seed) and cached in a folder keyed by both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from alseg.errors import ConfigError

CLASS_NAMES = ("disc", "square", "triangle", "ring", "bar")
# Long-tailed class frequencies: the first class dominates, the last ones are rare.
CLASS_FREQ = (0.40, 0.25, 0.17, 0.11, 0.07)
# Each class has its own hue range (OpenCV hue, 0..179) so colour is a cue, though overlapping.
CLASS_HUE = ((0, 30), (25, 55), (50, 90), (85, 130), (125, 179))


@dataclass(frozen=True)
class SyntheticSpec:
    num_train: int = 300
    num_val: int = 80
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 5
    min_radius: int = 8
    max_radius: int = 32
    num_classes: int = 4
    min_visible: float = 0.3  # fraction of an object that must stay visible to be an instance
    version: int = 1  # bump when the drawing code changes, so old caches are not reused

    def validate(self) -> None:
        checks = [
            (self.num_train >= 1, "num_train must be >= 1"),
            (self.num_val >= 1, "num_val must be >= 1"),
            (self.image_size >= 32, "image_size must be >= 32"),
            (1 <= self.min_objects <= self.max_objects, "need 1 <= min_objects <= max_objects"),
            (4 <= self.min_radius <= self.max_radius, "need 4 <= min_radius <= max_radius"),
            (self.max_radius * 2 < self.image_size, "max_radius must be below image_size / 2"),
            (1 <= self.num_classes <= len(CLASS_NAMES), f"num_classes must be in 1..{len(CLASS_NAMES)}"),
            (0.0 < self.min_visible <= 1.0, "min_visible must be in (0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"dataset (synthetic): {msg}")

    def key(self, seed: int) -> str:
        blob = json.dumps({**asdict(self), "seed": seed}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _shape_mask(cls_name: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    c = (int(round(cx)), int(round(cy)))
    if cls_name == "disc":
        cv2.circle(m, c, int(round(r)), 1, -1)
    elif cls_name == "ring":
        cv2.circle(m, c, int(round(r)), 1, -1)
        cv2.circle(m, c, int(round(r * 0.5)), 0, -1)
    else:
        if cls_name == "square":
            half = (r * 0.85, r * 0.85)
        elif cls_name == "bar":
            half = (r, r * 0.3)
        else:
            half = None
        if half is not None:
            pts = cv2.boxPoints(((cx, cy), (2 * half[0], 2 * half[1]), angle))
        else:  # triangle
            a = np.deg2rad(angle) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
            pts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    return m


def _mask_to_segmentation(mask: np.ndarray):
    """Polygons when the mask has no holes (as COCO annotators draw), compressed RLE otherwise."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and (hierarchy[0, :, 3] >= 0).any():
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return [[float(v) for v in c.reshape(-1)] for c in contours if len(c) >= 3]


def _render_split(spec: SyntheticSpec, rng: np.random.Generator, n: int, image_dir: Path, first_id: int, ann_id: int):
    names = CLASS_NAMES[: spec.num_classes]
    freq = np.asarray(CLASS_FREQ[: spec.num_classes])
    freq = freq / freq.sum()
    s = spec.image_size
    images, anns = [], []
    for k in range(n):
        image_id = first_id + k
        # Textured background: low-frequency colour noise plus pixel noise.
        base = rng.integers(40, 200, size=3)
        low = cv2.resize(rng.normal(0, 25, (4, 4, 3)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC)
        img = np.clip(base + low + rng.normal(0, 8, (s, s, 3)), 0, 255)
        visible_owner = np.full((s, s), -1, np.int32)
        objects = []
        for j in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
            c = int(rng.choice(len(names), p=freq))
            # Log-uniform radius: as many small objects as large ones.
            r = float(np.exp(rng.uniform(np.log(spec.min_radius), np.log(spec.max_radius))))
            cx, cy = rng.uniform(r * 0.6, s - r * 0.6, size=2)
            m = _shape_mask(names[c], s, cx, cy, r, float(rng.uniform(0, 180)))
            if m.sum() < 16:
                continue
            hue = rng.integers(*CLASS_HUE[c])
            hsv = np.uint8([[[hue, rng.integers(150, 256), rng.integers(120, 256)]]])
            colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
            shade = colour + rng.normal(0, 10, (s, s, 3))
            img = np.where(m[..., None] > 0, shade, img)
            visible_owner[m > 0] = len(objects)
            objects.append((c, m))
        img = np.clip(img, 0, 255).astype(np.uint8)
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "width": s, "height": s})
        for idx, (c, full) in enumerate(objects):
            vis = (visible_owner == idx).astype(np.uint8)
            if vis.sum() < max(16, spec.min_visible * full.sum()):
                continue
            seg = _mask_to_segmentation(vis)
            if not seg:
                continue
            x, y, w, h = cv2.boundingRect(vis)
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": c + 1,
                    "segmentation": seg,
                    "area": float(vis.sum()),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    return images, anns, ann_id


def generate(spec: SyntheticSpec, seed: int, cache_dir: str | os.PathLike) -> Path:
    """Write (or reuse) the dataset; returns its folder with train.json, val.json and images/."""
    spec.validate()
    root = Path(cache_dir).expanduser() / f"synthetic-{spec.key(seed)}"
    if (root / "DONE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build in a temporary sibling, then rename: a killed generation never leaves half a cache.
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    (tmp / "images").mkdir()
    rng = np.random.default_rng(seed)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES[: spec.num_classes])]
    train_imgs, train_anns, next_ann = _render_split(spec, rng, spec.num_train, tmp / "images", 1, 1)
    val_imgs, val_anns, _ = _render_split(spec, rng, spec.num_val, tmp / "images", 1 + spec.num_train, next_ann)
    info = {"description": "alseg synthetic shapes", "spec": asdict(spec), "seed": seed}
    for name, imgs, anns in (("train", train_imgs, train_anns), ("val", val_imgs, val_anns)):
        with open(tmp / f"{name}.json", "w") as f:
            json.dump({"info": info, "licenses": [], "images": imgs, "annotations": anns, "categories": categories}, f)
    (tmp / "DONE").write_text("ok\n")
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "DONE").is_file():
            raise
    return root
