"""Spread of a figure over seeds, as alseg-compare, alseg.plots and the pruning curve report it."""

from __future__ import annotations

import numpy as np


def seed_std(values, axis: int = 0) -> np.ndarray:
    """Spread over seeds: the sample standard deviation (ddof=1) along ``axis``; 0 where fewer than
    two values. With 3 seeds the population std (ddof=0) would understate the spread by a factor
    sqrt(2/3) ~ 0.82."""
    a = np.asarray(values, dtype=float)
    if a.shape[axis] < 2:
        return np.zeros_like(a.sum(axis=axis))
    return a.std(axis=axis, ddof=1)
