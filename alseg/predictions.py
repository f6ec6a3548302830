"""A model's predictions on a dataset's images, below the engine so that strategies and tools use
them without importing ``alseg.engine``.

- ``predict``: per image, the model's detections with masks pasted to the image (evaluation,
  visualisation, mask-entropy scores).
- ``infer_pool``: inference on the pool, once per round, keeping only compact per-instance arrays
  (``PoolPredictions``): box-frame mask probabilities (never pasted to image size), class scores
  and embeddings, in float16 where precision does not matter. Strategies read it through
  ``ctx.get("pool_predictions")``.

Both call only the model interface (``alseg.models.base.InstanceSegmenter``): ``model(images)``
and ``model.predict_instances``. In a run on N processes (``alseg.distributed``) ``infer_pool`` is
sharded by image across them (each rank infers whole single-process batches) and merged on rank 0;
``shard_images`` gives a rank its share for other per-image passes (evaluation).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from alseg import distributed
from alseg.data.coco import CocoDataset
from alseg.data.torch_dataset import ImageSet, collate
from alseg.models.base import (MASK_IOU_HEAD, SOFTMAX_WITH_BACKGROUND, class_distribution,
                               class_prob_columns)


@torch.no_grad()
def predict(model, data: CocoDataset, image_ids=None, device="cpu", batch_size: int = 4, mask_threshold: float = 0.5,
            desc: str = "predict", progress: bool = True):
    """Run the model (in eval mode) on ``image_ids`` (default: every image of ``data``); yields
    (image_id, boxes (n, 4) float32 xyxy in pixels, scores (n,), labels (n,) int64 1..C, masks):
    masks are bool (n, H, W), or the float mask probabilities when ``mask_threshold`` is None, or
    None for a model without a mask branch."""
    model.eval()
    loader = DataLoader(ImageSet(data, image_ids), batch_size=batch_size, collate_fn=collate, num_workers=0)
    for images, ids in tqdm(loader, desc=desc, leave=False, disable=not progress):
        outputs = model([im.to(device) for im in images])
        for image_id, out in zip(ids, outputs):
            masks = None
            if "masks" in out:
                probs = out["masks"][:, 0]
                masks = (probs.float() if mask_threshold is None else probs >= mask_threshold).cpu().numpy()
            yield (image_id, out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy(), masks)


@dataclass
class PoolPredictions:
    """Per-instance arrays of a model's detections on some images (``alseg.models.base`` says what
    each family puts in them)."""

    image_ids: list[int]  # the images inferred, in order
    image_index: np.ndarray  # (n,) int64: row of each instance's image in image_ids
    boxes: np.ndarray  # (n, 4) float32 xyxy, original image frame
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64, 1..C
    class_probs: np.ndarray  # (n, C + 1) or (n, C) float32 as the model gives them: see class_prob_layout
    mask_probs: np.ndarray  # (n, M, M) float16, predicted class, over the detection box (base.MASK_FRAME)
    embeddings: np.ndarray  # (n, D) float32, the family's instance embedding (Mask R-CNN: mask head, pooled)
    image_embeddings: np.ndarray  # (len(image_ids), D') float32 (Mask R-CNN: finest FPN level, pooled)
    pred_iou: np.ndarray | None = None  # (n,) float32 when the model has a mask-IoU head
    class_prob_layout: str = SOFTMAX_WITH_BACKGROUND  # base.SOFTMAX_WITH_BACKGROUND or base.SIGMOID

    def class_distribution(self) -> np.ndarray:
        """(n, C + 1) class distribution, background at column 0, whatever the layout
        (``alseg.models.base.class_distribution``): what classification margin and entropy read."""
        return class_distribution(self.class_probs, self.class_prob_layout)

    @property
    def areas(self) -> np.ndarray:
        """Box areas in pixels of the original image (the instance size of TAUDIS Eq. 4-5)."""
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    def __len__(self) -> int:
        return len(self.scores)

    _ARRAYS = ("image_index", "boxes", "scores", "labels", "class_probs", "mask_probs", "embeddings",
               "image_embeddings", "pred_iou")

    def save(self, folder: Path) -> None:
        """To ``folder``: one .npy file per array (``load`` maps them back), the layout as text."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "image_ids.npy", np.asarray(self.image_ids, np.int64))
        for name in self._ARRAYS:
            if getattr(self, name) is not None:
                np.save(folder / f"{name}.npy", getattr(self, name))
        (folder / "class_prob_layout.txt").write_text(self.class_prob_layout)

    @classmethod
    def load(cls, folder: Path) -> "PoolPredictions":
        """What ``save`` wrote, each array memory-mapped copy-on-write (read from disk as it is
        used; changes stay in memory), so that a COCO-sized pool is not held in memory."""
        folder = Path(folder)
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c") if (folder / f"{name}.npy").is_file() else None
                  for name in cls._ARRAYS}
        return cls(image_ids=np.load(folder / "image_ids.npy").tolist(),
                   class_prob_layout=(folder / "class_prob_layout.txt").read_text(), **arrays)

    @classmethod
    def merge_saved(cls, folders: list[Path], out: Path) -> "PoolPredictions":
        """The predictions saved in ``folders`` (disjoint image lists, in order) joined array by array
        into ``out`` without loading any whole (rows and images appended, ``image_index`` shifted to the
        joined ``image_ids``), memory-mapped."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        parts = [cls.load(f) for f in folders]
        np.save(out / "image_ids.npy", np.asarray([i for p in parts for i in p.image_ids], np.int64))
        (out / "class_prob_layout.txt").write_text(parts[0].class_prob_layout)
        offsets = np.cumsum([0] + [len(p.image_ids) for p in parts])
        for name in cls._ARRAYS:
            arrays = [getattr(p, name) for p in parts]
            if arrays[0] is None:
                continue
            shaped = [a for a in arrays if a.size] or arrays[:1]
            rows = sum(len(a) for a in shaped)
            merged = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=shaped[0].dtype,
                                               shape=(rows, *shaped[0].shape[1:]))
            row = 0
            for a, offset in zip(arrays, offsets):
                if a.size:
                    merged[row:row + len(a)] = a + offset if name == "image_index" else a
                    row += len(a)
            merged.flush()
            del merged
        return cls.load(out)


def shard_images(image_ids: list[int], batch_size: int) -> list[int]:
    """This rank's contiguous share of ``image_ids`` in whole batches of ``batch_size``, so that its
    batches are exactly those of the single-process run (``alseg.distributed.shard_bounds``)."""
    return distributed.shard(image_ids, chunk=batch_size)


def infer_pool(model, data: CocoDataset, image_ids: list[int], device: str = "cpu", batch_size: int = 4,
               score_threshold: float = 0.0, progress: bool = True, shard_dir: Path | None = None
               ) -> PoolPredictions | None:
    """``PoolPredictions`` of ``model`` (an ``InstanceSegmenter``) on ``image_ids`` of ``data``,
    detections with a score below ``score_threshold`` dropped.

    On N processes every rank must call it: each infers its share (``shard_images``), and rank 0
    returns the merged predictions, equal to the single-process ones; the other ranks return None.
    The shares go through ``shard_dir`` (a folder per rank, removed after the merge; the merged
    arrays in ``shard_dir/merged``, memory-mapped, so that rank 0 does not hold a COCO-sized pool in
    memory; the caller removes the folder when done). ValueError without ``shard_dir`` there."""
    if not distributed.together():
        return _infer_images(model, data, image_ids, device, batch_size, score_threshold, progress)
    part = distributed.agree(lambda: _infer_images(model, data, shard_images(image_ids, batch_size), device,
                                                    batch_size, score_threshold, progress and distributed.is_main()))
    if shard_dir is None:
        raise ValueError("infer_pool on several processes needs a shard_dir for the ranks' shares")
    shard_dir = Path(shard_dir)
    distributed.agree(lambda: part.save(shard_dir / f"rank_{distributed.rank():03d}"))
    return distributed.main_only(lambda: _merge_shards(shard_dir, distributed.world_size()))


def _merge_shards(shard_dir: Path, ranks: int) -> PoolPredictions:
    """The ranks' shares joined into ``shard_dir/merged`` (memory-mapped); the shares removed."""
    folders = [shard_dir / f"rank_{r:03d}" for r in range(ranks)]
    merged = PoolPredictions.merge_saved(folders, shard_dir / "merged")
    for f in folders:
        shutil.rmtree(f)
    return merged


@torch.no_grad()
def _infer_images(model, data: CocoDataset, image_ids: list[int], device: str, batch_size: int,
                  score_threshold: float, progress: bool) -> PoolPredictions:
    loader = DataLoader(ImageSet(data, image_ids), batch_size=batch_size, collate_fn=collate, num_workers=0)
    fields = ("image_index", "boxes", "scores", "labels", "class_probs", "mask_probs", "embeddings", "pred_iou")
    parts: dict[str, list] = {k: [] for k in fields}
    image_embeddings, order = [], []
    for images, ids in tqdm(loader, desc="pool inference", leave=False, disable=not progress):
        for image_id, rec in zip(ids, model.predict_instances([im.to(device) for im in images])):
            keep = rec["scores"] >= score_threshold
            row = len(order)
            order.append(int(image_id))
            image_embeddings.append(rec["image_embedding"].float().cpu().numpy())
            parts["image_index"].append(np.full(int(keep.sum()), row, np.int64))
            for k, dtype in (("boxes", np.float32), ("scores", np.float32), ("labels", np.int64),
                             ("class_probs", np.float32), ("mask_probs", np.float16), ("embeddings", np.float32),
                             ("pred_iou", np.float32)):
                if k in rec:
                    parts[k].append(rec[k][keep].cpu().numpy().astype(dtype))
    num_classes = len(data.class_names)
    layout, m = model.class_prob_layout, model.mask_size
    empty = {"image_index": (0,), "boxes": (0, 4), "scores": (0,), "labels": (0,),
             "class_probs": (0, class_prob_columns(layout, num_classes)), "mask_probs": (0, m, m), "embeddings": (0, 0)}
    arrays = {k: (np.concatenate(v) if v else np.zeros(empty.get(k, (0,)))) for k, v in parts.items()}
    if MASK_IOU_HEAD not in model.capabilities:
        arrays["pred_iou"] = None
    return PoolPredictions(image_ids=order, image_embeddings=np.stack(image_embeddings) if image_embeddings
                           else np.zeros((0, 0), np.float32), class_prob_layout=layout, **arrays)
