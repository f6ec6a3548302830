"""alseg.plots: strategy labels, run titles, and the AP-vs-cost figure (ap_vs_hours.png, compare.png)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from alseg.plots import ap_vs_cost_figure, axis_label, mean_std_by_round, run_title, strategy_label
from alseg.spread import seed_std
from alseg.writers.files import PlotWriter


def _rec(k, ap):
    return {"round": k, "labeled_images": 10 * (k + 1), "hours": 0.5 * (k + 1), "mask_AP": ap, "mask_AP50": ap + 0.2}


APIS = {"_target_": "alseg.strategies.apis.ApisPoints", "name": "apis", "metric": "entropy", "max_cells": 64,
        "match_iou": None, "scales": None, "flip": False, "models": 1}


@pytest.mark.parametrize("cfg, label", [
    ({"name": "random"}, "random"),
    ({"name": "taudis", "metric": "se", "alpha": 150, "beta": 40, "sigma": 0.8}, "taudis (se)"),
    (APIS, "apis (entropy, anchors)"),
    ({**APIS, "scales": [112, 128], "flip": True, "models": 3}, "apis (entropy, anchors+scales+flip+3 models)"),
    ({"name": "mean_se", "metric": "se", "aggregation": "mean"}, "mean_se"),  # both in the name already
    ({"name": "wse", "metric": "se", "aggregation": "weighted_sum"}, "wse (se, weighted_sum)"),
    ({"_target_": "alseg.strategies.random_sampling.RandomImages"}, "RandomImages"),
    ({"name": "x", "variant": "v" * 60}, "x"),  # too long: the name alone
    (None, "?"),
])
def test_strategy_label(cfg, label):
    assert strategy_label(cfg) == label


def test_run_title_names_strategy_dataset_seed_and_run(tmp_path):
    cfg = {"strategy": APIS, "dataset": {"name": "tiny_coco"}, "seed": 3}
    title = run_title(cfg, tmp_path / "runs" / "exp1" / "seed-3+strategy-apis")
    assert title == "strategy apis (entropy, anchors),  dataset tiny_coco,  seed 3\nrun exp1/seed-3+strategy-apis"
    assert run_title({}, None) == ""


def test_axis_labels_have_units():
    assert axis_label("hours") == "annotation hours" and axis_label("labeled_images") == "labeled images"
    assert axis_label("mask_AP50") == "mask_AP50 (0-1)"


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_figure_title_legend_axes_and_no_overlap():
    runs = [[_rec(0, 0.1), _rec(1, 0.3)], [_rec(0, 0.3), _rec(1, 0.5)]]
    fig = ap_vs_cost_figure({"random": runs, "taudis (se)": runs[:1]}, title="exp: mask_AP\nsecond line")
    try:
        assert fig.get_suptitle() == "exp: mask_AP\nsecond line"
        axes = fig.axes
        assert len(axes) == 4
        assert [a.get_xlabel() for a in axes[:2]] == ["labeled images", "annotation hours"]
        assert [a.get_ylabel() for a in axes[::2]] == ["mask_AP (0-1)", "mask_AP50 (0-1)"]
        for ax in axes:  # both panels of both rows carry the legend
            assert [t.get_text() for t in ax.get_legend().get_texts()] == ["random (2 seeds)", "taudis (se) (1 seed)"]
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(r)
        assert not any(_overlaps(title, ax.get_tightbbox(r)) for ax in axes)
    finally:
        plt.close(fig)


def test_plot_writer_titles_the_run(tmp_path, figure_spy):
    seen = figure_spy
    run_dir = tmp_path / "exp1" / "seed-1"
    run_dir.mkdir(parents=True)
    w = PlotWriter()
    w.open(run_dir, {"strategy": APIS, "dataset": {"name": "synthetic"}, "seed": 1}, [_rec(0, 0.1)])
    w.write(_rec(1, 0.2))
    assert seen["title"] == "strategy apis (entropy, anchors),  dataset synthetic,  seed 1\nrun exp1/seed-1"
    assert seen["legend"] == ["apis (entropy, anchors)"]
    assert (run_dir / "ap_vs_hours.png").stat().st_size > 1000


def test_seed_std_is_the_sample_std():
    # 0.2, 0.4, 0.9: mean 0.5, squared deviations 0.09 + 0.01 + 0.16 = 0.26, / (3 - 1) -> sqrt 0.13
    assert float(seed_std([0.2, 0.4, 0.9])) == pytest.approx(0.13 ** 0.5)
    assert float(seed_std([0.7])) == 0.0  # one seed: no spread
    by_round = seed_std([[0.2, 1.0], [0.4, 1.0]], axis=0)  # 2 runs x 2 rounds
    assert by_round == pytest.approx([0.1 * 2 ** 0.5, 0.0])


def test_mean_std_by_round_uses_rounds_every_run_has():
    runs = [[{"round": 0, "mask_AP": 0.2}, {"round": 1, "mask_AP": 0.5}], [{"round": 0, "mask_AP": 0.4}]]
    rounds, mean, std = mean_std_by_round(runs, "mask_AP")
    assert rounds.tolist() == [0] and mean == pytest.approx([0.3]) and std == pytest.approx([0.1 * 2 ** 0.5])


def test_many_groups_share_one_legend_beside_the_panels():
    runs = [[_rec(0, 0.1), _rec(1, 0.3)], [_rec(0, 0.3), _rec(1, 0.5)]]
    names = [f"s{i}" for i in range(9)]
    fig = ap_vs_cost_figure({n: runs for n in names}, title="nine strategies")
    try:
        assert all(ax.get_legend() is None for ax in fig.axes)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"{n} (2 seeds)" for n in names]
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legend = fig.legends[0].get_window_extent(r)
        assert not any(_overlaps(legend, ax.get_tightbbox(r)) for ax in fig.axes)
    finally:
        plt.close(fig)


def test_each_band_has_its_lines_colour():
    one = [[_rec(0, 0.1), _rec(1, 0.3)]]
    two = [[_rec(0, 0.1), _rec(1, 0.3)], [_rec(0, 0.3), _rec(1, 0.5)]]
    fig = ap_vs_cost_figure({"a (one seed, no band)": one, "b": two, "c": two})
    try:
        from matplotlib.colors import to_rgb

        ax = fig.axes[0]
        lines, bands = ax.get_lines(), ax.collections
        assert len(bands) == 2
        for line, band in zip(lines[1:], bands):
            assert to_rgb(band.get_facecolor()[0][:3]) == to_rgb(line.get_color())
    finally:
        plt.close(fig)


def test_every_alseg_figure_draws_dollar_texts_as_written():
    """Class names, file names and titles with '$' (eda, visualize, the TFDP examples) are data:
    mathtext is off for every figure once alseg.plots is imported."""
    fig, ax = plt.subplots()
    try:
        ax.set_title("$x^$ class a_$b$")
        ax.bar([0], [1], label="$cat$")
        ax.legend()
        fig.suptitle("file $1^.png")
        fig.canvas.draw()  # mathtext would fail on '$x^$'
        assert ax.get_title() == "$x^$ class a_$b$"
    finally:
        plt.close(fig)


def _point_rec(k, ap, points=True):
    """An APIS step's record: points on images that stay unlabeled (labeled_images 0 every step)."""
    r = {"round": k, "labeled_images": 0, "hours": 1.96 + 0.22 * k, "mask_AP": ap, "mask_AP50": ap + 0.3}
    if points:
        r["labeled_points"] = 894 * (k + 1)
    return r


@pytest.mark.parametrize("runs, key, x", [
    ([[_rec(0, 0.1), _rec(1, 0.3)]], "labeled images", [10, 20]),
    ([[_point_rec(0, 0.2), _point_rec(1, 0.3), _point_rec(2, 0.4)]], "labeled points", [894, 1788, 2682]),
    ([[_point_rec(0, 0.2, False), _point_rec(1, 0.3, False)]], "round (step)", [0, 1]),  # no points key
])
def test_first_column_is_the_effort_that_grows(runs, key, x):
    fig = ap_vs_cost_figure({"apis (entropy, anchors)": runs})
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel() == key
        assert ax.get_lines()[0].get_xdata().tolist() == x
        assert fig.axes[1].get_xlabel() == "annotation hours"
    finally:
        plt.close(fig)
