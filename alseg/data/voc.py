"""Pascal VOC 2012 instance segmentation (SegmentationObject + SegmentationClass PNGs) as COCO.

Object PNGs hold instance indices 1..N, class PNGs class indices 1..20; 0 is background and 255
the void boundary, which belongs to no instance.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from alseg.data.coco import CocoDataset
from alseg.data.validation import OK, check_coco
from alseg.errors import DataError
from alseg.files import one_line

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOID = 255


def split_file(voc_root: str | os.PathLike, split: str) -> Path:
    return Path(voc_root) / "ImageSets" / "Segmentation" / f"{split}.txt"


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:  # unreadable, or not UTF-8 text
        raise DataError(f"{path}: split file cannot be read ({e})") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split file lists no image ids")
    return ids


def _numeric_ids(ids: list[str]) -> list[int]:
    """'2007_000032' -> 2007000032, so image ids stay the same across splits; 1..N otherwise."""
    digits = [i.replace("_", "") for i in ids]
    if all(d.isdigit() for d in digits) and len(set(map(int, digits))) == len(ids):
        return [int(d) for d in digits]
    return list(range(1, len(ids) + 1))


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: PNG not found")
    try:
        with Image.open(path) as im:
            arr = np.array(im)  # palette indices, not RGB colours
    except Exception as e:  # OSError, PIL's SyntaxError 'broken PNG file', DecompressionBombError, ...
        raise DataError(f"{path}: cannot be read ({one_line(e)})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a single-channel palette PNG, got shape {arr.shape}")
    return arr


def _difficult_flags(path: Path) -> list[int] | None:
    """Per-object difficult flags of the XML, in file order; None when there is no XML."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None
    return [int((obj.findtext("difficult") or "0").strip() == "1") for obj in root.iter("object")]


def voc_to_coco_dict(voc_root: str | os.PathLike, split: str = "train", difficult_as_crowd: bool = False) -> dict:
    """COCO dict (RLE masks, categories 1..20 in ``VOC_CLASSES`` order) of one VOC segmentation split."""
    root = Path(voc_root)
    ids = _read_ids(split_file(root, split))
    images, annotations, mismatched = [], [], 0
    for image_id, voc_id in zip(_numeric_ids(ids), ids):
        obj_path = root / "SegmentationObject" / f"{voc_id}.png"
        cls_path = root / "SegmentationClass" / f"{voc_id}.png"
        obj, cls = _read_png(obj_path), _read_png(cls_path)
        if obj.shape != cls.shape:
            raise DataError(f"{cls_path}: shape {cls.shape} differs from {obj_path.name} shape {obj.shape}")
        height, width = obj.shape
        images.append({"id": image_id, "file_name": f"{voc_id}.jpg", "width": width, "height": height})
        indices = [int(k) for k in np.unique(obj) if k not in (0, VOID)]
        flags = _difficult_flags(root / "Annotations" / f"{voc_id}.xml")
        if flags is not None and len(flags) != len(indices):
            mismatched, flags = mismatched + 1, None
        for k in indices:
            m = obj == k
            values = cls[m]
            bad = values[(values > len(VOC_CLASSES)) & (values != VOID)]
            if bad.size:
                raise DataError(f"{cls_path}: class value {int(bad[0])} outside 1..{len(VOC_CLASSES)}")
            counts = np.bincount(values[(values >= 1) & (values <= len(VOC_CLASSES))], minlength=len(VOC_CLASSES) + 1)
            if not counts.any():
                raise DataError(f"{cls_path}: class of instance {k} of {obj_path.name} cannot be determined "
                                f"(only background/void under it)")
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            difficult = int(flags is not None and k <= len(flags) and flags[k - 1] != 0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(counts.argmax()),
                "segmentation": rle, "area": int(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": int(difficult_as_crowd and difficult), "difficult": difficult,
            })
    if mismatched:
        log.warning("%s: %d image(s) whose XML object count differs from the mask instances; "
                    "their difficult flags are set to 0", root, mismatched)
    categories = [{"id": i + 1, "name": n, "supercategory": "voc"} for i, n in enumerate(VOC_CLASSES)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    _check_converted(data, split_file(root, split))
    return data


def _check_converted(data: dict, source: Path) -> None:
    """The converted dict passes the validation every COCO file goes through (alseg.data.validation;
    RLEs made by pycocotools: cheap), so that neither alseg nor a written COCO file ever holds an
    annotation the loader or alseg-prune would reject. DataError naming the split file otherwise."""
    check = check_coco(data, str(source), require_names=True)
    if check.file_problems:
        p = check.file_problems[0]
        raise DataError(f"{source}: {p.where}: {p.text}")
    bad = np.flatnonzero(check.annotations.status != OK)
    if bad.size:
        ann = data["annotations"][int(bad[0])]
        image = next(i["file_name"] for i in data["images"] if i["id"] == ann["image_id"])
        raise DataError(f"{source}: image {image}: {check.describe(data['annotations'], int(bad[0]))} "
                        f"({bad.size} invalid converted annotations)")


def load_voc(voc_root: str | os.PathLike, split: str = "train", difficult_as_crowd: bool = False,
             **coco_kwargs) -> CocoDataset:
    root = Path(voc_root)
    data = voc_to_coco_dict(root, split, difficult_as_crowd=difficult_as_crowd)
    return CocoDataset(data, image_dir=root / "JPEGImages", source=str(split_file(root, split)), **coco_kwargs)
