"""Plots of AP against annotation effort (labeled images, or points or steps, and annotation hours).

Every figure of alseg is drawn with mathtext off (``text.parse_math``, set when this module is
imported; every plotting module of alseg imports it): the texts come from user data (strategy and
group names, run and experiment folder names, class names, metric keys) and matplotlib would read a
pair of ``$`` as mathtext (``$x^$`` fails to parse, ``a_$b$`` renders a subscript).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # texts are data: see the module docstring
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alseg.spread import seed_std  # noqa: E402


def mean_std_by_round(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds present in every run, with mean and std (``seed_std``, over runs) of ``key``."""
    rounds = sorted(set.intersection(*(set(r["round"] for r in run if key in r) for run in runs))) if runs else []
    vals = np.array([[next(r[key] for r in run if r["round"] == k) for k in rounds] for run in runs], float)
    if not rounds:
        return np.array([]), np.array([]), np.array([])
    return np.array(rounds), vals.mean(0), seed_std(vals, 0)


# Strategy config keys whose value says which variant runs (e.g. apis' metric "entropy").
STRATEGY_KEY_PARAMS = ("metric", "aggregation", "level", "variant")
PANEL_LEGEND_MAX = 4  # groups; more: one legend beside the panels
MAX_STRATEGY_LABEL = 48  # characters; longer, the label is the strategy's name alone


def strategy_label(strategy: dict | None) -> str:
    """A short name of a strategy config (a dict as in config.yaml): its ``name``, then its key
    parameters in brackets where they fit, e.g. ``taudis (se)``, ``apis (entropy, anchors)``,
    ``apis (entropy, anchors+scales+flip)``. A value already a ``_``-separated part of the name is
    left out (``mean_se``, not ``mean_se (se, mean)``). APIS's prediction set (``scales``, ``flip``,
    ``models`` keys; Sec. 3.2) is named as the sets it joins. "?" for a missing config."""
    if not isinstance(strategy, dict):
        return "?"
    name = str(strategy.get("name") or str(strategy.get("_target_", "?")).rsplit(".", 1)[-1])
    tokens = set(name.split("_"))
    params = [str(strategy[k]) for k in STRATEGY_KEY_PARAMS
              if isinstance(strategy.get(k), str) and strategy[k] not in tokens]
    if any(k in strategy for k in ("scales", "flip", "models")):
        sets = ["anchors"] + (["scales"] if strategy.get("scales") else []) + (["flip"] if strategy.get("flip") else [])
        models = strategy.get("models")
        if isinstance(models, int) and not isinstance(models, bool) and models > 1:
            sets.append(f"{models} models")
        params.append("+".join(sets))
    label = f"{name} ({', '.join(params)})" if params else name
    return label if len(label) <= MAX_STRATEGY_LABEL else name


def run_title(config: dict, run_dir: str | Path | None = None) -> str:
    """Two lines naming a run: strategy (``strategy_label``), dataset and seed of its resolved
    config (a dict; missing keys are left out), then the run folder as ``<experiment>/<run>``."""
    config = config if isinstance(config, dict) else {}
    dataset = config.get("dataset")
    parts = []
    if "strategy" in config:
        parts.append(f"strategy {strategy_label(config['strategy'])}")
    if isinstance(dataset, dict) and dataset.get("name"):
        parts.append(f"dataset {dataset['name']}")
    if "seed" in config:
        parts.append(f"seed {config['seed']}")
    lines = [",  ".join(parts)] if parts else []
    if run_dir is not None:
        run_dir = Path(run_dir)
        lines.append(f"run {run_dir.parent.name}/{run_dir.name}")
    return "\n".join(lines)


# The count of labels on the first column of the AP-vs-cost figure, the first that grows over rounds.
EFFORT_KEYS = ("labeled_images", "labeled_points")


def effort_key(groups: dict[str, list[list[dict]]]) -> str:
    """The x key of the figure's first column: the first of ``EFFORT_KEYS`` that every record has
    (a number) and whose value changes between rounds in some run, else ``round``. Point-supervised
    runs (APIS) label points on images that all count as unlabeled (``labeled_images`` 0 every
    step), where images would put every round at one x."""
    runs = [run for group in groups.values() for run in group]
    for key in EFFORT_KEYS:
        values = [[r.get(key) for r in run] for run in runs]
        if all(isinstance(v, (int, float)) for vs in values for v in vs) and any(len(set(vs)) > 1 for vs in values):
            return key
    return "round"


def axis_label(key: str) -> str:
    """An axis label with its unit: ``labeled_images`` -> "labeled images", ``labeled_points`` ->
    "labeled points", ``round`` -> "round (step)", ``hours`` -> "annotation hours", an AP key
    (``mask_AP``, ``box_AP50``, ``mask_AP/cat``) -> itself with "(0-1)"."""
    if key in ("labeled_images", "labeled_points"):
        return key.replace("_", " ")
    if key == "round":
        return "round (step)"
    if key == "hours":
        return "annotation hours"
    return f"{key} (0-1)" if "AP" in key else key


def ap_vs_cost_figure(groups: dict[str, list[list[dict]]], metrics=("mask_AP", "mask_AP50"), title: str = "",
                      count_seeds: bool = True):
    """The figure of ``plot_ap_vs_cost`` (matplotlib Figure, open; the caller saves or closes it).

    One row per metric; columns: against labeled images (``effort_key``: labeled points, or the
    round, where images stay constant), against annotation hours (both means over the group's
    runs). Each group is a list of runs (seeds), each run a list of result records; the line is the
    mean, the band one sample std (ddof=1, ``seed_std``), drawn where a group has more than one run.
    Legend entries are the group labels, with "(n seeds)" when ``count_seeds``: in every panel
    for up to ``PANEL_LEGEND_MAX`` groups, else once, right of the panels (a 9-strategy legend would
    hide the curves). ``title`` is the figure's suptitle (constrained layout keeps it clear of the
    panels)."""
    outside = len(groups) > PANEL_LEGEND_MAX
    fig = plt.figure(figsize=(10 + (2.6 if outside else 0), 3.6 * len(metrics) + (0.4 if title else 0)),
                     layout="constrained")
    axes = fig.subplots(len(metrics), 2, squeeze=False)
    xkeys = (effort_key(groups), "hours")
    for row, metric in enumerate(metrics):
        for col, xkey in enumerate(xkeys):
            ax = axes[row, col]
            for label, runs in groups.items():
                rounds, y, ys = mean_std_by_round(runs, metric)
                if not len(rounds):
                    continue
                _, x, _ = mean_std_by_round(runs, xkey)
                n = f" ({len(runs)} seed{'s' if len(runs) > 1 else ''})" if count_seeds else ""
                (line,) = ax.plot(x, y, marker="o", label=label + n)
                if len(runs) > 1:  # the band in its line's colour (fill_between has a colour cycle of its own)
                    ax.fill_between(x, y - ys, y + ys, alpha=0.2, color=line.get_color())
            ax.set_xlabel(axis_label(xkey))
            ax.set_ylabel(axis_label(metric))
            ax.grid(alpha=0.3)
            if ax.lines and not outside:
                ax.legend(fontsize=8)
    if outside:
        handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda hl: len(hl[1]))
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_ap_vs_cost(groups: dict[str, list[list[dict]]], path: str | Path, metrics=("mask_AP", "mask_AP50"),
                    title: str = "", count_seeds: bool = True) -> Path:
    """Write ``ap_vs_cost_figure(groups, metrics, title, count_seeds)`` to ``path`` (PNG, 100 dpi,
    atomically); returns the path. Raises DataError when it cannot be written."""
    return save_figure(ap_vs_cost_figure(groups, metrics, title, count_seeds), path)


def figure_png(fig, what: str | Path) -> bytes:
    """The figure as PNG bytes (100 dpi), rendered in memory, and closed: a tool renders its figure
    before it replaces any output, so a figure that cannot be drawn leaves earlier outputs alone.
    Raises DataError naming ``what`` (the file it is meant for) when it cannot be rendered."""
    import io

    from alseg.errors import DataError

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    except (ValueError, RuntimeError, OverflowError) as e:  # e.g. a mathtext or layout error
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"{what}: the figure cannot be drawn ({type(e).__name__}: {msg})") from None
    finally:
        plt.close(fig)
    return buf.getvalue()


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
