"""torch Datasets: training targets derived from what the annotator revealed, and plain images for
inference. Images are read by ``alseg.data.images.read_image`` (PIL, decoded completely, in the EXIF
frame of the dataset's ``exif_orientation``); a missing, truncated or wrongly sized file is a
one-line DataError."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from alseg.data import images
from alseg.data.coco import CocoDataset, ImageRecord, decode_segmentation
from alseg.data.transforms import Compose


@dataclass
class ImageView:
    """What training may use of one image: instances with a known box, those with a known mask,
    labeled points (ann_id, x, y, label), and whether the whole image is annotated (then an image
    with no instance is a valid all-background example)."""

    full_image: bool = False

    box_ann_ids: set[int] = field(default_factory=set)
    mask_ann_ids: set[int] = field(default_factory=set)
    points: list[tuple[int, float, float, int]] = field(default_factory=list)


def read_image(rec: ImageRecord) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a record's image, in the frame of its masks: ``alseg.data.images.read_image``
    with the record's ``exif_orientation`` and its annotated (height, width) checked (DataError)."""
    return images.read_image(rec.path, rec.exif_orientation, (rec.height, rec.width), rec.image_id)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)


def build_sample(rec: ImageRecord, view: ImageView) -> dict:
    insts = [i for i in rec.instances if i.ann_id in view.box_ann_ids or i.ann_id in view.mask_ann_ids]
    n = len(insts)
    masks = np.zeros((n, rec.height, rec.width), np.uint8)
    has_mask = np.zeros(n, bool)
    for k, inst in enumerate(insts):
        if inst.ann_id in view.mask_ann_ids:
            masks[k] = decode_segmentation(inst.segmentation, rec.height, rec.width)
            has_mask[k] = True
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (i.bbox for i in insts)], np.float32).reshape(-1, 4)
    index = {inst.ann_id: k for k, inst in enumerate(insts)}
    pts = [(index[a], x, y, lab) for a, x, y, lab in view.points if a in index]
    return {
        "image": read_image(rec),
        "boxes": boxes,
        "labels": np.array([i.label for i in insts], np.int64),
        "masks": masks,
        "has_mask": has_mask,
        "ann_ids": np.array([i.ann_id for i in insts], np.int64),
        "points": np.array(pts, np.float32).reshape(-1, 4),
    }


def sample_to_target(s: dict, image_id: int) -> tuple[torch.Tensor, dict]:
    target = {
        "boxes": torch.from_numpy(s["boxes"]).float(),
        "labels": torch.from_numpy(s["labels"]),
        "masks": torch.from_numpy(s["masks"]),
        "has_mask": torch.from_numpy(s["has_mask"]),
        "points": torch.from_numpy(s["points"]),
        "ann_ids": torch.from_numpy(s["ann_ids"]),
        "image_id": image_id,
    }
    return to_tensor(s["image"]), target


class TrainingSet(Dataset):
    """Labeled images with their targets; augmentation randomness is a function of (seed, draw)."""

    def __init__(self, data: CocoDataset, views: dict[int, ImageView], transforms: Compose | None, seed: int = 0):
        self.data = data
        self.image_ids = sorted(i for i, v in views.items() if v.full_image or v.box_ann_ids or v.mask_ann_ids)
        self.views = views
        self.transforms = transforms
        self.seed = seed

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key):
        # The sampler passes (index, draw number) so augmentations are reproducible on resume.
        index, draw = key if isinstance(key, tuple) else (key, 0)
        image_id = self.image_ids[index]
        s = build_sample(self.data.by_id[image_id], self.views[image_id])
        if self.transforms is not None:
            s = self.transforms(s, np.random.default_rng([self.seed, draw, index]))
        return sample_to_target(s, image_id)


class ImageSet(Dataset):
    """Images only (evaluation, pool inference)."""

    def __init__(self, data: CocoDataset, image_ids: list[int] | None = None):
        self.data = data
        self.image_ids = list(image_ids) if image_ids is not None else data.image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int):
        rec = self.data.by_id[self.image_ids[index]]
        return to_tensor(read_image(rec)), rec.image_id


def collate(batch):
    return tuple(zip(*batch))
