"""COCO JSON reader (pycocotools for polygons / RLE), with category subsets and validation.

Every dataset alseg reads (COCO, VOC converted in memory, the synthetic generator) ends up as a
``CocoDataset``: one code path from annotation file to training targets and COCOeval ground truth.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from alseg.data.images import check_image_headers, exif_policy
from alseg.errors import DataError

log = logging.getLogger(__name__)

INVALID_POLICIES = ("error", "skip")


@dataclass
class Instance:
    """One non-crowd ground-truth instance."""

    ann_id: int
    label: int  # contiguous training label, 1..num_classes (0 is background)
    category_id: int  # the file's category id
    bbox: tuple[float, float, float, float]  # x, y, w, h as in COCO
    segmentation: Any  # polygons (list of lists) or RLE (dict), as in the file
    area: float


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    instances: list[Instance] = field(default_factory=list)
    exif_orientation: str = "apply"  # how read_image treats EXIF orientation (the dataset's setting)

    def decode_masks(self) -> np.ndarray:
        """All instance masks as a uint8 array (n, H, W)."""
        if not self.instances:
            return np.zeros((0, self.height, self.width), dtype=np.uint8)
        return np.stack([decode_segmentation(i.segmentation, self.height, self.width) for i in self.instances])


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (several parts are merged) or decode an RLE, to uint8 (H, W)."""
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


def _segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """Why a segmentation cannot be used, or None when it is fine."""
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for part in seg:
            if not isinstance(part, list) or len(part) < 6 or len(part) % 2:
                return "degenerate polygon (fewer than 3 points)"
            if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in part):
                return "polygon with non-numeric coordinates"
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not isinstance(size, list) or len(size) != 2:
            return "RLE without 'counts' and 'size'"
        if list(size) != [height, width]:
            return f"RLE size {size} differs from image size [{height}, {width}]"
        return None
    return f"segmentation of unsupported type {type(seg).__name__}"


def load_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    return data


class CocoDataset:
    """Images and non-crowd instances of a COCO-style annotation dict, restricted to some classes.

    Crowd regions are never training instances; they stay in ``coco_gt`` so COCOeval ignores
    detections on them, as the official protocol does.
    """

    def __init__(
        self,
        data: dict,
        image_dir: str | os.PathLike,
        source: str = "<memory>",
        class_names: Sequence[str] | None = None,
        max_images: int | None = None,
        drop_empty: bool = False,
        invalid_annotations: str = "error",
        check_images: bool = True,
        exif_orientation: str = "apply",
    ):
        self.source = source
        self.image_dir = Path(image_dir)
        if invalid_annotations not in INVALID_POLICIES:
            raise DataError(f"{source}: invalid_annotations must be one of {INVALID_POLICIES}, got {invalid_annotations!r}")
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"{source}: missing or malformed field '{key}' (expected a list)")
        self._raw = data
        self.categories = self._select_categories(data["categories"], class_names)
        self.cat_id_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.class_names = [c["name"] for c in self.categories]
        self.skipped: dict[str, int] = {}
        self.images = self._build_records(data, invalid_annotations, drop_empty)
        if max_images is not None:
            if max_images < 1:
                raise DataError(f"{source}: max_images must be >= 1, got {max_images}")
            self.images = self.images[:max_images]
        if not self.images:
            raise DataError(f"{source}: no images left after filtering (classes={class_names})")
        # Images: every header (file present, readable, size in the EXIF frame of the setting) up front.
        self.exif_orientation = exif_policy(exif_orientation)
        for r in self.images:
            r.exif_orientation = self.exif_orientation
        self.image_check = check_image_headers(self.images, self.exif_orientation, source) if check_images else None
        self.by_id = {r.image_id: r for r in self.images}
        self._coco_gt: COCO | None = None

    @classmethod
    def from_file(cls, ann_file: str | os.PathLike, image_dir: str | os.PathLike, **kwargs) -> "CocoDataset":
        return cls(load_json(ann_file), image_dir, source=str(ann_file), **kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.images]

    def _select_categories(self, categories: list, class_names: Sequence[str] | None) -> list[dict]:
        for i, c in enumerate(categories):
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise DataError(f"{self.source}: categories[{i}] needs 'id' and 'name'")
        cats = sorted(categories, key=lambda c: c["id"])
        if not class_names:
            return cats
        by_name = {c["name"]: c for c in cats}
        unknown = [n for n in class_names if n not in by_name]
        if unknown:
            raise DataError(f"{self.source}: unknown class name(s) {unknown}; available: {sorted(by_name)}")
        wanted = set(class_names)
        return [c for c in cats if c["name"] in wanted]

    def _build_records(self, data: dict, invalid: str, drop_empty: bool) -> list[ImageRecord]:
        records: dict[int, ImageRecord] = {}
        for i, img in enumerate(data["images"]):
            try:
                image_id, file_name = img["id"], img["file_name"]
                width, height = int(img["width"]), int(img["height"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{self.source}: images[{i}] needs 'id', 'file_name', 'width', 'height'") from None
            if image_id in records:
                raise DataError(f"{self.source}: duplicate image id {image_id}")
            records[image_id] = ImageRecord(image_id, file_name, self.image_dir / file_name, width, height)
        all_cat_ids = {c["id"] for c in data["categories"]}
        for i, ann in enumerate(data["annotations"]):
            where = f"{self.source}: annotations[{i}] (id={ann.get('id') if isinstance(ann, dict) else '?'})"
            if not isinstance(ann, dict) or not {"id", "image_id", "category_id"} <= ann.keys():
                raise DataError(f"{where}: needs 'id', 'image_id', 'category_id'")
            if ann["image_id"] not in records:
                raise DataError(f"{where}: unknown image_id {ann['image_id']}")
            if ann["category_id"] not in all_cat_ids:
                raise DataError(f"{where}: unknown category_id {ann['category_id']}")
            if ann.get("iscrowd", 0) or ann["category_id"] not in self.cat_id_to_label:
                continue
            rec = records[ann["image_id"]]
            problem = _segmentation_problem(ann.get("segmentation"), rec.height, rec.width)
            bbox = ann.get("bbox")
            if problem is None and (not isinstance(bbox, list) or len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0):
                problem = f"invalid bbox {bbox}"
            if problem is not None:
                if invalid == "error":
                    raise DataError(f"{where}: {problem} (set dataset.invalid_annotations=skip to drop such instances)")
                self.skipped[problem] = self.skipped.get(problem, 0) + 1
                continue
            rec.instances.append(
                Instance(
                    ann_id=ann["id"],
                    label=self.cat_id_to_label[ann["category_id"]],
                    category_id=ann["category_id"],
                    bbox=tuple(float(v) for v in bbox),
                    segmentation=ann["segmentation"],
                    area=float(ann.get("area", bbox[2] * bbox[3])),
                )
            )
        if self.skipped:
            log.warning("%s: skipped invalid annotations: %s", self.source, self.skipped)
        out = sorted(records.values(), key=lambda r: r.image_id)
        if drop_empty:
            out = [r for r in out if r.instances]
        return out

    def subset(self, image_ids: Sequence[int]) -> "CocoDataset":
        """A view on some images (same classes and label mapping)."""
        keep = set(image_ids)
        new = copy.copy(self)
        new.images = [r for r in self.images if r.image_id in keep]
        new.by_id = {r.image_id: r for r in new.images}
        new._coco_gt = None
        return new

    def to_coco_dict(self, include_crowd: bool = True) -> dict:
        """COCO JSON of the kept images and classes (crowd regions kept for evaluation)."""
        ids = set(self.by_id)
        anns = [
            a
            for a in self._raw["annotations"]
            if a["image_id"] in ids
            and a["category_id"] in self.cat_id_to_label
            and (include_crowd or not a.get("iscrowd", 0))
        ]
        valid_ann_ids = {i.ann_id for r in self.images for i in r.instances}
        anns = [a for a in anns if a.get("iscrowd", 0) or a["id"] in valid_ann_ids]
        out = {k: v for k, v in self._raw.items() if k not in ("images", "annotations", "categories")}
        out["images"] = [img for img in self._raw["images"] if img["id"] in ids]
        out["annotations"] = anns
        out["categories"] = self.categories
        return out

    @property
    def coco_gt(self) -> COCO:
        """pycocotools ground truth of this dataset, for COCOeval."""
        if self._coco_gt is None:
            d = self.to_coco_dict()
            for a in d["annotations"]:
                a.setdefault("iscrowd", 0)
                if "area" not in a:
                    a["area"] = float(a["bbox"][2] * a["bbox"][3])
            gt = COCO()
            gt.dataset = d
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                gt.createIndex()
            self._coco_gt = gt
        return self._coco_gt

    def class_counts(self) -> dict[str, int]:
        counts = {n: 0 for n in self.class_names}
        for r in self.images:
            for inst in r.instances:
                counts[self.class_names[inst.label - 1]] += 1
        return counts
