"""Overlaps of binary instance masks (used by evaluation and the mask-IoU head's targets)."""

from __future__ import annotations

import numpy as np


def mask_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice matrices, float (len(a), len(b)), of two stacks of binary masks (n, H, W) of
    one image (any dtype; nonzero is foreground). A pair of empty masks scores 0."""
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    sums = fa.sum(1)[:, None] + fb.sum(1)[None, :]
    union = sums - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
    dice = np.where(sums > 0, 2 * inter / np.maximum(sums, 1e-9), 0.0)
    return iou, dice
