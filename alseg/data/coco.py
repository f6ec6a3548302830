"""COCO JSON reader (pycocotools for polygons / RLE), with category subsets and validation.

Every dataset alseg reads (COCO, VOC converted in memory, the synthetic generator) ends up as a
``CocoDataset``: one code path from annotation file to training targets and COCOeval ground truth.
Every annotation is validated up front (``alseg.data.validation``, the checks ``alseg-prune`` uses
too), crowd regions included, before anything is built.
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
from alseg.data.validation import OK, REFERENCE_PROBLEMS, check_coco
from alseg.errors import DataError, json_value_problem

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
    area: float  # the file's 'area', else the mask's pixel count (segmentation_area), as COCO defines it


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


def segmentation_area(segmentation: Any, height: int, width: int) -> float:
    """Pixels of the mask of polygons (parts merged) or an RLE, counted by pycocotools without
    decoding: COCO's 'area' of an annotation (``maskUtils.area``). Not the box's w x h, which
    puts a thin diagonal object in the "large" range of COCOeval."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return float(mask_utils.area(rle))


def load_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (RecursionError, ValueError) as e:  # deep nesting, a number too long to convert
        raise DataError(f"{path}: {json_value_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    return data


class CocoDataset:
    """Images and non-crowd instances of a COCO-style annotation dict, restricted to some classes.

    Crowd regions are never training instances; they stay in ``coco_gt`` so COCOeval ignores
    detections on them, as the official protocol does.

    Validation (``alseg.data.validation``) runs over every annotation of the file, crowd regions and
    classes left out by ``class_names`` included, before anything is built; DataError names the
    file, the entry and the reason on one line:

    * always an error: 'images' / 'annotations' / 'categories' not lists; an image entry without an
      integer id, a 'file_name' or positive integer width / height; duplicate image or category
      ids; a category without an integer id and a name; an annotation whose image_id or
      category_id names nothing in the file (the file does not describe its own images or classes:
      dropping such annotations would silently change the data);
    * every other problem of an annotation (its ids, segmentation, bbox, area; a repeated
      annotation id): an error with ``invalid_annotations="error"`` (the first one is named, with
      the number of others by reason), or with ``"skip"`` the annotation is dropped, from the
      training instances and from COCOeval's ground truth alike, and counted by reason in
      ``skipped`` (logged as a warning). A polygon with a part of fewer than 3 points is dropped
      whole (reason ``degenerate_part``).

    ``drop_empty``: leave out images without any instance of the kept classes (for a training
    pool; an evaluation set keeps every image, or detections on the others would never count as
    false positives). ``dropped_empty`` says how many.
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
        self._raw = data
        # reason -> number of annotations dropped (invalid_annotations="skip"); empty otherwise
        self.skipped: dict[str, int] = {}
        self._valid = self._validate(data, invalid_annotations)  # bool per annotation of the file
        self.categories = self._select_categories(data["categories"], class_names)
        self.cat_id_to_label = {c["id"]: i + 1 for i, c in enumerate(self.categories)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.class_names = [c["name"] for c in self.categories]
        self.dropped_empty = 0
        self.images = self._build_records(data, drop_empty)
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

    def _validate(self, data: dict, policy: str) -> np.ndarray:
        """Validate everything (see the class docstring); returns the valid annotations (bool)."""
        check = check_coco(data, self.source, require_names=True)
        problems = check.file_problems
        if problems:
            p = problems[0]
            more = f" ({len(problems) - 1} more malformed image / category entries)" if len(problems) > 1 else ""
            raise DataError(f"{self.source}: {p.where}: {p.text}{more}")
        report = check.annotations
        anns = data["annotations"]
        refs = np.flatnonzero(np.isin(report.status, REFERENCE_PROBLEMS))
        if refs.size:
            more = f"; {refs.size - 1} more such annotations" if refs.size > 1 else ""
            raise DataError(f"{self.source}: {check.describe(anns, int(refs[0]))}{more} (the file does not list "
                            "that image or category: is it the right annotation file?)")
        bad = np.flatnonzero(report.status != OK)
        if bad.size:
            counts = report.counts()
            first = check.describe(anns, int(bad[0]))
            if policy == "error":
                more = ""
                if bad.size > 1:
                    by_reason = ", ".join(f"{k}={v}" for k, v in counts.items())
                    more = f"; {bad.size - 1} more invalid annotations ({bad.size} in all: {by_reason})"
                raise DataError(f"{self.source}: {first}{more}; set dataset.invalid_annotations=skip to drop "
                                "and count them")
            self.skipped = counts
            log.warning("%s: skipped %d invalid annotations of %d (%s), e.g. %s", self.source, bad.size, len(anns),
                        ", ".join(f"{k}={v}" for k, v in counts.items()), first)
        return report.valid

    def _select_categories(self, categories: list, class_names: Sequence[str] | None) -> list[dict]:
        cats = sorted(categories, key=lambda c: c["id"])
        if not class_names:
            return cats
        by_name = {c["name"]: c for c in cats}
        unknown = [n for n in class_names if n not in by_name]
        if unknown:
            raise DataError(f"{self.source}: unknown class name(s) {unknown}; available: {sorted(by_name)}")
        wanted = set(class_names)
        return [c for c in cats if c["name"] in wanted]

    def _build_records(self, data: dict, drop_empty: bool) -> list[ImageRecord]:
        """Image records with their valid non-crowd instances of the kept classes (validated data)."""
        records: dict[int, ImageRecord] = {}
        for img in data["images"]:
            iid = int(img["id"])
            records[iid] = ImageRecord(iid, img["file_name"], self.image_dir / img["file_name"], int(img["width"]),
                                       int(img["height"]))
        valid, labels = self._valid, self.cat_id_to_label
        for i, ann in enumerate(data["annotations"]):
            if not valid[i] or ann.get("iscrowd") or ann["category_id"] not in labels:
                continue
            rec = records[ann["image_id"]]
            area = ann.get("area")
            if area is None:
                area = segmentation_area(ann["segmentation"], rec.height, rec.width)
            rec.instances.append(
                Instance(
                    ann_id=ann["id"],
                    label=labels[ann["category_id"]],
                    category_id=ann["category_id"],
                    bbox=tuple(float(v) for v in ann["bbox"]),
                    segmentation=ann["segmentation"],
                    area=float(area),
                )
            )
        out = sorted(records.values(), key=lambda r: r.image_id)
        if drop_empty:
            kept = [r for r in out if r.instances]
            self.dropped_empty = len(out) - len(kept)
            if self.dropped_empty:
                log.info("%s: drop_empty: dropped %d of %d images without any instance of the kept classes",
                         self.source, self.dropped_empty, len(out))
            out = kept
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
        """COCO JSON of the kept images and classes: their valid annotations (crowd regions too,
        for evaluation, unless ``include_crowd`` is False). The annotation dicts are the file's."""
        ids = set(self.by_id)
        valid, labels = self._valid, self.cat_id_to_label
        anns = [
            a
            for i, a in enumerate(self._raw["annotations"])
            if valid[i]
            and a["image_id"] in ids
            and a["category_id"] in labels
            and (include_crowd or not a.get("iscrowd"))
        ]
        out = {k: v for k, v in self._raw.items() if k not in ("images", "annotations", "categories")}
        out["images"] = [img for img in self._raw["images"] if img["id"] in ids]
        out["annotations"] = anns
        out["categories"] = self.categories
        return out

    @property
    def coco_gt(self) -> COCO:
        """pycocotools ground truth of this dataset, for COCOeval. An annotation without 'area' gets
        its mask's area (as COCO defines it, ``segmentation_area``), not its box's."""
        if self._coco_gt is None:
            d = self.to_coco_dict()
            anns = []
            for a in d["annotations"]:
                if a.get("area") is None or a.get("iscrowd") not in (0, 1):
                    rec = self.by_id[a["image_id"]]
                    area = a.get("area")
                    if area is None:
                        area = segmentation_area(a["segmentation"], rec.height, rec.width)
                    a = {**a, "area": area, "iscrowd": int(bool(a.get("iscrowd")))}  # the file's dict unchanged
                anns.append(a)
            d["annotations"] = anns
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
