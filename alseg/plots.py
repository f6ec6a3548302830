"""Plots of AP against annotation effort (labeled images and annotation hours)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def mean_std_by_round(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds present in every run, with mean and std (over runs) of ``key``."""
    rounds = sorted(set.intersection(*(set(r["round"] for r in run if key in r) for run in runs))) if runs else []
    vals = np.array([[next(r[key] for r in run if r["round"] == k) for k in rounds] for run in runs], float)
    if not rounds:
        return np.array([]), np.array([]), np.array([])
    return np.array(rounds), vals.mean(0), vals.std(0)


def plot_ap_vs_cost(groups: dict[str, list[list[dict]]], path: str | Path, metrics=("mask_AP", "mask_AP50")) -> Path:
    """One row per metric; columns: against labeled images, against annotation hours.
    Each group is a list of runs (seeds); the line is the mean, the band one std."""
    fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.6 * len(metrics)), squeeze=False)
    for row, metric in enumerate(metrics):
        for col, xkey in enumerate(("labeled_images", "hours")):
            ax = axes[row, col]
            for label, runs in groups.items():
                rounds, y, ys = mean_std_by_round(runs, metric)
                if not len(rounds):
                    continue
                _, x, _ = mean_std_by_round(runs, xkey)
                n = f" (n={len(runs)})" if len(runs) > 1 else ""
                ax.plot(x, y, marker="o", label=label + n)
                if len(runs) > 1:
                    ax.fill_between(x, y - ys, y + ys, alpha=0.2)
            ax.set_xlabel("labeled images" if xkey == "labeled_images" else "annotation hours")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            if groups:
                ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure atomically (a reader never sees half a PNG) and close it."""
    from alseg.errors import DataError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    except (OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot be written ({e})") from None
    finally:
        plt.close(fig)
    return path
