"""Dataset builders named by ``configs/dataset/*.yaml`` (``_target_``): each returns train + val."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alseg.data.coco import CocoDataset
from alseg.data.synthetic import SyntheticSpec, generate


@dataclass
class DataSplits:
    name: str
    train: CocoDataset
    val: CocoDataset


def synthetic(cache_dir: str, seed: int = 0, name: str = "synthetic", exif_orientation: str = "apply",
              **spec) -> DataSplits:
    root = generate(SyntheticSpec(**spec), seed, cache_dir)
    train = CocoDataset.from_file(root / "train.json", root / "images", exif_orientation=exif_orientation)
    val = CocoDataset.from_file(root / "val.json", root / "images", exif_orientation=exif_orientation)
    return DataSplits(name, train, val)


def coco(
    train_ann: str,
    train_images: str,
    val_ann: str,
    val_images: str,
    name: str = "coco",
    class_names: Sequence[str] | None = None,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    drop_empty: bool = True,
    invalid_annotations: str = "error",
    exif_orientation: str = "apply",
) -> DataSplits:
    """COCO-format train/val files. With ``class_names``, only those classes are kept and, with
    ``drop_empty``, only training images holding at least one of them (the 4-class study of the
    report). The val split keeps every image: detections on images without objects are false
    positives."""
    common = dict(class_names=list(class_names) if class_names else None, drop_empty=drop_empty,
                  invalid_annotations=invalid_annotations, exif_orientation=exif_orientation)
    train = CocoDataset.from_file(Path(train_ann).expanduser(), Path(train_images).expanduser(),
                                  max_images=max_train_images, **common)
    val = CocoDataset.from_file(Path(val_ann).expanduser(), Path(val_images).expanduser(),
                                max_images=max_val_images, **{**common, "drop_empty": False})
    return DataSplits(name, train, val)


def voc(root: str, train_split: str = "train", val_split: str = "val", name: str = "voc",
        class_names: Sequence[str] | None = None, max_train_images: int | None = None,
        max_val_images: int | None = None, drop_empty: bool = True, exif_orientation: str = "apply") -> DataSplits:
    """Pascal VOC 2012 (SegmentationObject / SegmentationClass), converted to COCO in memory
    (``drop_empty``: training images only; the val split keeps every image)."""
    from alseg.data.voc import load_voc

    common = dict(class_names=list(class_names) if class_names else None, drop_empty=drop_empty,
                  exif_orientation=exif_orientation)
    train = load_voc(Path(root).expanduser(), train_split, max_images=max_train_images, **common)
    val = load_voc(Path(root).expanduser(), val_split, max_images=max_val_images, **{**common, "drop_empty": False})
    return DataSplits(name, train, val)
