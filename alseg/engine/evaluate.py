"""Evaluation: pycocotools COCOeval (segm + bbox: AP, AP50, AP75, APs/m/l, per-class AP), plus the
mean Dice and greedy IoU matching of the COCO-subset report."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from alseg import distributed
from alseg.data.coco import CocoDataset
from alseg.masks import mask_overlaps
from alseg.predictions import predict, shard_images  # noqa: F401  (predict re-exported: alseg.engine.evaluate.predict)

log = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(data: CocoDataset, image_id, boxes, scores, labels, masks) -> tuple[list, list]:
    segm, bbox = [], []
    for k in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        base = {"image_id": int(image_id), "category_id": data.label_to_cat_id[int(labels[k])], "score": float(scores[k])}
        bbox.append({**base, "bbox": [x1, y1, x2 - x1, y2 - y1]})
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            segm.append({**base, "segmentation": rle})
    return segm, bbox


def _coco_eval(gt, results: list, iou_type: str, class_names: list[str]) -> dict:
    """COCOeval (``iou_type`` "segm" or "bbox") of ``results`` against ``gt``: mask_/box_ AP, AP50,
    AP75, APs, APm, APl and AP/<class>, floats in [0, 1].

    A value COCOeval cannot compute (its -1: no ground-truth object in that size range, or no
    ground truth at all) is NaN, never 0; a class without ground truth has no AP/<class> key.
    Without any detection, COCOeval runs on an empty result set: AP 0 wherever ground truth
    exists, NaN where it does not.
    """
    prefix = "mask_" if iou_type == "segm" else "box_"
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes refuses an empty list
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {prefix + n: (float(v) if v >= 0 else math.nan) for n, v in zip(STAT_NAMES, ev.stats[:6])}
    # Per-class AP over IoU .50:.95, all areas, 100 detections; -1 (no ground truth) is skipped.
    prec = ev.eval["precision"][:, :, :, 0, -1]
    for k, cat_id in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        p = p[p > -1]
        if p.size:
            out[f"{prefix}AP/{class_names[k]}"] = float(p.mean())
    return out


def dice_and_greedy_iou(gt_masks: np.ndarray, pred_masks: np.ndarray) -> tuple[list[float], list[float]]:
    """Greedy matching, as in the COCO-subset report: each ground-truth mask takes the unused
    prediction it overlaps most; unmatched ground truth counts as 0. Returns per-instance Dice, IoU."""
    if len(gt_masks) == 0:
        return [], []
    if pred_masks is None or len(pred_masks) == 0:
        return [0.0] * len(gt_masks), [0.0] * len(gt_masks)
    iou, dice_mat = mask_overlaps(gt_masks, pred_masks)
    used = np.zeros(len(pred_masks), bool)
    dices, ious = [0.0] * len(gt_masks), [0.0] * len(gt_masks)
    # Pairs in order of decreasing IoU: the greedy one-to-one assignment.
    for flat in np.argsort(-iou, axis=None):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] <= 0:
            break
        if dices[i] == 0.0 and ious[i] == 0.0 and not used[j]:
            used[j] = True
            ious[i], dices[i] = float(iou[i, j]), float(dice_mat[i, j])
    return dices, ious


def evaluate(model, data: CocoDataset, device="cpu", batch_size: int = 4, score_threshold_dice: float = 0.5,
             progress: bool = True) -> dict:
    """All metrics of a model on a dataset, as a flat dict of floats (NaN: not computable, e.g. APl
    without any large object; see ``_coco_eval``).

    On N processes every rank must call it: each predicts its share of the images
    (``alseg.predictions.shard_images``), rank 0 gathers the results in image order, runs COCOeval
    and every rank returns its metrics (equal to the single-process ones)."""
    start = time.perf_counter()
    ids = shard_images(data.image_ids, batch_size) if distributed.together() else None
    part = distributed.agree(lambda: _predict_results(model, data, ids, device, batch_size, score_threshold_dice,
                                                       progress and distributed.is_main()))
    parts = distributed.gather_objects(part)
    predicted = time.perf_counter()
    metrics = distributed.on_main(lambda: _metrics(data, parts))
    log.info("evaluate: predictions and Dice on %d images in %.1f s, COCOeval in %.1f s", len(data.image_ids),
             predicted - start, time.perf_counter() - predicted)
    return metrics


def _predict_results(model, data: CocoDataset, image_ids, device, batch_size: int, score_threshold_dice: float,
                     progress: bool) -> tuple[list, list, list, list]:
    """COCO results (segm, bbox) and per-instance Dice and IoU of ``image_ids`` (None: all)."""
    segm, bbox, dices, ious = [], [], [], []
    for image_id, boxes, scores, labels, masks in predict(model, data, image_ids, device=device,
                                                          batch_size=batch_size, desc="evaluate", progress=progress):
        s, b = to_coco_results(data, image_id, boxes, scores, labels, masks)
        segm += s
        bbox += b
        keep = scores >= score_threshold_dice
        d, i = dice_and_greedy_iou(data.by_id[image_id].decode_masks(), masks[keep] if masks is not None else None)
        dices += d
        ious += i
    return segm, bbox, dices, ious


def _metrics(data: CocoDataset, parts: list[tuple[list, list, list, list]]) -> dict:
    segm, bbox, dices, ious = ([x for part in parts for x in part[j]] for j in range(4))
    metrics = {}
    metrics.update(_coco_eval(data.coco_gt, segm, "segm", data.class_names))
    metrics.update(_coco_eval(data.coco_gt, bbox, "bbox", data.class_names))
    metrics["mean_dice"] = float(np.mean(dices)) if dices else 0.0
    metrics["mean_greedy_iou"] = float(np.mean(ious)) if ious else 0.0
    metrics["num_detections"] = len(bbox)
    return metrics
