"""Point selection on prediction sets for active pointly-supervised instance segmentation (APIS,
apis-active-pointly-supervised.txt Sec. 3.2, Eq. 3-5; difficulty probes of Sec. 4.3, Table 1).

For one ground-truth instance the prediction set is a stack of K probability maps (K, h, w) over
its ground-truth box Omega, all in the box frame: the maps cover the box (x1, y1, x2, y2) with
h x w cells, cell (r, c) centred at

    x = x1 + (c + 0.5) * (x2 - x1) / w,   y = y1 + (r + 0.5) * (y2 - y1) / h

(image coordinates, pixel centres at +0.5). ``bring_to_box`` produces such maps from Mask R-CNN
RoI-resolution predictions of proposals matched to the instance (the "multiple anchors" set, and,
concatenated, those of several models or scales).

Rules (Sec. 3.2): ``entropy`` picks the cell of highest entropy of the mean prediction (Eq. 4),
``variance`` the cell of highest variance across the K predictions (Eq. 5, population variance),
``lowest_entropy`` the most certain cell (Fig. 2a's control), ``random`` a uniform point in the
box. K = 0 (instance not predicted) gives a uniform random point in the box; K = 1 turns
``variance`` into ``entropy`` (a single prediction has no disagreement). Ties between cells are
broken uniformly at random by ``rng``. Entropies use the natural log; H(0) = H(1) = 0.

Everything is numpy (float64); torch tensors are accepted (moved to the CPU).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "METRICS",
    "PointChoice",
    "binary_entropy",
    "bring_many_to_box",
    "bring_to_box",
    "cell_centers",
    "entropy_map",
    "random_point_in_box",
    "sample_points_in_boxes",
    "select_point",
    "select_point_error",
    "variance_map",
]

METRICS = ("entropy", "variance", "lowest_entropy", "random")
ERROR_MODES = ("max", "least")
TIE_ATOL = 1e-12  # scores within this of the best count as tied


class PointChoice(NamedTuple):
    """A selected point: image coordinates, the score of its cell (NaN for a random point), and
    the rule actually applied ("random" when K = 0, "entropy" for variance with K = 1)."""

    x: float
    y: float
    score: float
    metric: str


def _np(a, dtype=np.float64) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def _as_rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _stack(probs) -> np.ndarray:
    p = _np(probs)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"probs must be (K, h, w), got shape {p.shape}")
    return p


def binary_entropy(p) -> np.ndarray:
    """H(p) = -p log p - (1 - p) log(1 - p) (Eq. 3), natural log, 0 at p in {0, 1}."""
    p = np.clip(_np(p), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0) - np.where(q > 0, q * np.log(q), 0.0)
    return h


def entropy_map(probs) -> np.ndarray:
    """H(mean over K of the maps) (Eq. 3-4), (h, w). Needs K >= 1."""
    p = _stack(probs)
    if p.shape[0] == 0:
        raise ValueError("entropy_map needs at least one prediction (K >= 1)")
    return binary_entropy(p.mean(axis=0))


def variance_map(probs) -> np.ndarray:
    """Population variance across the K maps (Eq. 5), (h, w); 0 everywhere for K = 1. Needs K >= 1."""
    p = _stack(probs)
    if p.shape[0] == 0:
        raise ValueError("variance_map needs at least one prediction (K >= 1)")
    return p.var(axis=0)


def cell_centers(box: Sequence[float], h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Image x (w,) and y (h,) of the cell centres of an h x w grid covering ``box``."""
    x1, y1, x2, y2 = (float(v) for v in _np(box).reshape(4))
    xs = x1 + (np.arange(w) + 0.5) * (x2 - x1) / w
    ys = y1 + (np.arange(h) + 0.5) * (y2 - y1) / h
    return xs, ys


def random_point_in_box(box: Sequence[float], rng) -> tuple[float, float]:
    """A uniform point in [x1, x2) x [y1, y2) (the box's left/top edge for a degenerate box)."""
    x1, y1, x2, y2 = (float(v) for v in _np(box).reshape(4))
    u, v = _as_rng(rng).random(2)
    return x1 + u * max(x2 - x1, 0.0), y1 + v * max(y2 - y1, 0.0)


def sample_points_in_boxes(boxes, rng) -> np.ndarray:
    """One uniform point per box (P0, Sec. 3.1): (n, 2) x, y with x1 <= x < x2, y1 <= y < y2."""
    b = _np(boxes).reshape(-1, 4)
    uv = _as_rng(rng).random((b.shape[0], 2))
    wh = np.maximum(b[:, 2:] - b[:, :2], 0.0)
    return b[:, :2] + uv * wh


def _pick(score: np.ndarray, best: str, rng: np.random.Generator, box) -> tuple[float, float, float]:
    """Cell of the highest (best="max") or lowest score, ties at random; its centre and score."""
    h, w = score.shape
    flat = score.reshape(-1)
    target = flat.max() if best == "max" else flat.min()
    tied = np.flatnonzero(np.abs(flat - target) <= TIE_ATOL)
    k = int(tied[rng.integers(len(tied))]) if len(tied) > 1 else int(tied[0])
    r, c = divmod(k, w)
    xs, ys = cell_centers(box, h, w)
    return float(xs[c]), float(ys[r]), float(flat[k])


def select_point(probs, metric: str, rng, box: Sequence[float]) -> PointChoice:
    """The point APIS would query for one instance (module docstring for the rules).

    probs: (K, h, w) probability maps over the GT box (K may be 0); box: the GT box (x1, y1, x2,
    y2) the maps cover; rng: a numpy Generator (or a seed). Returns the chosen cell's centre in
    image coordinates, its score (entropy / variance; NaN for a random point) and the rule used.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown point metric {metric!r}; choose from {METRICS}")
    rng = _as_rng(rng)
    p = _stack(probs)
    if metric == "random" or p.shape[0] == 0:
        x, y = random_point_in_box(box, rng)
        return PointChoice(x, y, float("nan"), "random")
    if p.shape[1] == 0 or p.shape[2] == 0:
        raise ValueError(f"probs has an empty spatial shape {p.shape[1:]}")
    if metric == "variance" and p.shape[0] == 1:
        metric = "entropy"
    if metric == "variance":
        x, y, s = _pick(variance_map(p), "max", rng, box)
    else:
        x, y, s = _pick(entropy_map(p), "max" if metric == "entropy" else "min", rng, box)
    return PointChoice(x, y, s, metric)


def select_point_error(probs, gt_mask_in_box, mode: str, rng, box: Sequence[float]) -> PointChoice:
    """Difficulty probes (Sec. 4.3, Table 1, which use the mask labels): the cell where
    |mean prediction - gt| is largest (``mode="max"``) or smallest (``"least"``), ties at random.
    ``gt_mask_in_box`` (h, w) is the ground-truth mask on the same grid as ``probs``. K = 0 gives a
    random point, as in ``select_point``. The score is the absolute error."""
    if mode not in ERROR_MODES:
        raise ValueError(f"unknown error mode {mode!r}; choose from {ERROR_MODES}")
    rng = _as_rng(rng)
    p = _stack(probs)
    if p.shape[0] == 0:
        x, y = random_point_in_box(box, rng)
        return PointChoice(x, y, float("nan"), "random")
    gt = _np(gt_mask_in_box)
    if gt.shape != p.shape[1:]:
        raise ValueError(f"gt_mask_in_box has shape {gt.shape}, the maps {p.shape[1:]}")
    err = np.abs(p.mean(axis=0) - (gt > 0.5))
    x, y, s = _pick(err, mode, rng, box)
    return PointChoice(x, y, s, f"{mode}_error")


def bring_many_to_box(mask_probs_roi, proposal_boxes, gt_box: Sequence[float], out_size: tuple[int, int]) -> np.ndarray:
    """Resample K proposals' RoI-resolution maps (K, M, M) into the GT box frame, (K, h, w).

    Output cell centres (see ``cell_centers``) are mapped into each proposal's M x M grid with the
    convention of torchvision's ``roi_align(aligned=False)`` used by the point loss
    (``alseg.models.point_supervision``): g = (x - px1) / max(px2 - px1, 1) * M - 0.5, cell j
    centred at g = j; values are bilinear, with coordinates within half a cell of the proposal
    border clamped onto the border cells. Cells whose centre lies outside the proposal box are 0
    (the proposal predicts nothing there: background). Nothing is pasted to the full image.
    """
    m = _stack(mask_probs_roi)
    K, Mh, Mw = m.shape
    h, w = (int(v) for v in out_size)
    if h < 1 or w < 1:
        raise ValueError(f"out_size must be positive, got {out_size}")
    pb = _np(proposal_boxes).reshape(-1, 4)
    if pb.shape[0] != K:
        raise ValueError(f"{K} maps but {pb.shape[0]} proposal boxes")
    if K == 0:
        return np.zeros((0, h, w))
    xs, ys = cell_centers(gt_box, h, w)
    pw = np.maximum(pb[:, 2] - pb[:, 0], 1.0)[:, None]
    ph = np.maximum(pb[:, 3] - pb[:, 1], 1.0)[:, None]
    gx = (xs[None, :] - pb[:, 0:1]) / pw * Mw - 0.5  # (K, w)
    gy = (ys[None, :] - pb[:, 1:2]) / ph * Mh - 0.5  # (K, h)
    in_x = (xs[None, :] >= pb[:, 0:1]) & (xs[None, :] <= pb[:, 2:3])
    in_y = (ys[None, :] >= pb[:, 1:2]) & (ys[None, :] <= pb[:, 3:4])
    gx, gy = np.clip(gx, 0, Mw - 1), np.clip(gy, 0, Mh - 1)
    x0 = np.minimum(np.floor(gx).astype(np.int64), Mw - 1)
    y0 = np.minimum(np.floor(gy).astype(np.int64), Mh - 1)
    x1, y1 = np.minimum(x0 + 1, Mw - 1), np.minimum(y0 + 1, Mh - 1)
    wx, wy = gx - x0, gy - y0  # (K, w), (K, h)
    k = np.arange(K)[:, None, None]
    Y0, Y1, X0, X1 = y0[:, :, None], y1[:, :, None], x0[:, None, :], x1[:, None, :]
    WX, WY = wx[:, None, :], wy[:, :, None]
    out = (m[k, Y0, X0] * (1 - WX) * (1 - WY) + m[k, Y0, X1] * WX * (1 - WY)
           + m[k, Y1, X0] * (1 - WX) * WY + m[k, Y1, X1] * WX * WY)
    return out * (in_y[:, :, None] & in_x[:, None, :])


def bring_to_box(mask_probs_roi, proposal_box: Sequence[float], gt_box: Sequence[float],
                 out_size: tuple[int, int]) -> np.ndarray:
    """One proposal's (M, M) map resampled into the GT box frame at ``out_size`` (h, w); see
    ``bring_many_to_box``."""
    return bring_many_to_box(_stack(mask_probs_roi), _np(proposal_box).reshape(1, 4), gt_box, out_size)[0]
