"""alseg.tools: alseg-compare (aggregation over seeds, outputs, errors), EDA counts, drawing, visualize."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from alseg.tools import compare, eda, paired
from alseg.tools.visualize import draw_instances

# mask_AP per (strategy, seed) and round. Per round, over the two seeds:
#   random : round 0: 0.2, 0.4 -> mean 0.3, std 0.1 sqrt 2;  round 1: 0.3, 0.5 -> 0.4, 0.1 sqrt 2;  round 2: 0.4, 0.4 -> 0.4, 0.0
#   entropy: round 0: 0.1, 0.5 -> mean 0.3, std 0.2 sqrt 2;  round 1: 0.6, 0.6 -> 0.6, 0.0;  round 2: only seed 0 (incomplete)
# std is the sample std (ddof=1; two values a, b: |a - b| / sqrt 2), as alseg-compare and alseg.plots use.
MASK_AP = {
    ("random", 0): [0.2, 0.3, 0.4],
    ("random", 1): [0.4, 0.5, 0.4],
    ("entropy", 0): [0.1, 0.6, 0.7],
    ("entropy", 1): [0.5, 0.6],
}


def write_run(root: Path, strategy: str, seed: int, values: list[float], dataset: str = "synthetic",
              strategy_in_records: bool = True) -> Path:
    run = root / "exp" / f"strategy={strategy},seed={seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"experiment_name: exp\nseed: {seed}\nstrategy:\n  name: {strategy}\n"
        f"dataset:\n  name: {dataset}\nal:\n  rounds: 2\n")
    lines = []
    for k, v in enumerate(values):
        rec = {"round": k, "seed": seed, "labeled_images": 10 * (k + 1), "labeled_masks": 30 * (k + 1),
               "seconds": 3600.0 * (k + 1), "hours": 1.0 * (k + 1), "mask_AP": v, "mask_AP50": 2 * v,
               "box_AP": v / 2, "mask_AP/cat": v}
        if strategy_in_records:
            rec["strategy"] = strategy
        lines.append(json.dumps(rec))
    (run / "results.jsonl").write_text("\n".join(lines) + "\n")
    (run / "round_000").mkdir()
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for (strategy, seed), values in MASK_AP.items():
        write_run(root, strategy, seed, values)
    return root


def read_csv(path: Path) -> dict[tuple[str, int], dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    key = next(iter(rows[0]))  # the group column (named after --group-by)
    return {(r[key], int(r["round"])): r for r in rows}


# --------------------------------------------------------------------------- alseg-compare
def test_compare_mean_std_over_seeds(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert compare.main([str(runs), "--out", str(out)]) == 0
    rows = read_csv(out / "compare.csv")
    r0 = rows[("random", 0)]
    assert r0["n_seeds"] == "2"
    assert float(r0["mask_AP_mean"]) == pytest.approx(0.3)
    assert float(r0["mask_AP_std"]) == pytest.approx(0.1 * 2 ** 0.5)  # sample std of 0.2, 0.4
    assert float(r0["mask_AP50_mean"]) == pytest.approx(0.6)
    assert float(r0["box_AP_mean"]) == pytest.approx(0.15)
    assert float(r0["labeled_images"]) == 10 and float(r0["hours"]) == pytest.approx(1.0)
    assert float(rows[("random", 1)]["mask_AP_mean"]) == pytest.approx(0.4)
    assert float(rows[("random", 1)]["mask_AP_std"]) == pytest.approx(0.1 * 2 ** 0.5)
    assert float(rows[("random", 2)]["mask_AP_std"]) == pytest.approx(0.0)
    assert float(rows[("entropy", 0)]["mask_AP_mean"]) == pytest.approx(0.3)
    assert float(rows[("entropy", 0)]["mask_AP_std"]) == pytest.approx(0.2 * 2 ** 0.5)
    # Round 2 of entropy is in one seed only: not aggregated, and the incomplete run is reported.
    assert ("entropy", 2) not in rows
    assert set(rows) == {("random", 0), ("random", 1), ("random", 2), ("entropy", 0), ("entropy", 1)}
    md = (out / "compare.md").read_text()
    assert "0.300 ± 0.141" in md and "incomplete run" in md and "seed=1" in md
    png = out / "compare.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert "0.300 ± 0.141" in stdout and "incomplete run" in stdout


def test_compare_png_title_and_legend(runs, tmp_path, figure_spy):
    seen = figure_spy
    compare.compare([runs], metrics=["mask_AP"], out=tmp_path / "out", show=False)
    assert seen["title"] == ("exp: mask_AP per strategy\nline: mean over seeds, band: ± 1 std (sample, ddof=1) where a "
                             "group has 2 or more; seeds per group in the legend")
    assert seen["legend"] == ["entropy (2 seeds)", "random (2 seeds)"]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000


def test_compare_metric_choice_and_run_folders(runs, tmp_path):
    out = tmp_path / "out"
    a, b = runs / "exp" / "strategy=random,seed=0", runs / "exp" / "strategy=random,seed=1"
    assert compare.main([str(a), str(b / "results.jsonl"), "--metric", "mask_AP/cat", "--out", str(out)]) == 0
    rows = read_csv(out / "compare.csv")
    assert set(rows) == {("random", 0), ("random", 1), ("random", 2)}
    assert float(rows[("random", 0)]["mask_AP/cat_mean"]) == pytest.approx(0.3)
    assert "mask_AP_mean" not in rows[("random", 0)]


def test_compare_strategy_from_config_and_group_by(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "random", 0, [0.2], dataset="voc", strategy_in_records=False)
    write_run(root, "random", 1, [0.4], dataset="voc", strategy_in_records=False)
    write_run(root, "entropy", 0, [0.8], dataset="coco", strategy_in_records=False)
    out = tmp_path / "out"
    assert compare.main([str(root), "--out", str(out)]) == 0  # strategy.name of config.yaml
    rows = read_csv(out / "compare.csv")
    assert float(rows[("random", 0)]["mask_AP_mean"]) == pytest.approx(0.3)
    assert rows[("entropy", 0)]["mask_AP_std"] == ""  # one seed: no std
    assert compare.main([str(root), "--out", str(out), "--group-by", "dataset.name"]) == 0
    rows = read_csv(out / "compare.csv")
    assert set(rows) == {("voc", 0), ("coco", 0)}
    assert compare.main([str(root), "--out", str(out), "--group-by", "dataset.name,strategy"]) == 0
    assert set(read_csv(out / "compare.csv")) == {("voc / random", 0), ("coco / entropy", 0)}


class _StubRun:
    def __init__(self, run_name, **values):
        self.name, self.values = run_name, values

    def value(self, key):
        return self.values.get(key)

    def has_key(self, key):
        return key in self.values


def test_group_labels_leave_out_missing_keys():
    runs = [_StubRun("r0", name="random"), _StubRun("r1", name="random"),
            _StubRun("t0", name="tfdp", variant="scs"), _StubRun("t1", name="tfdp", variant="si_cb_scs"),
            _StubRun("e0")]
    notes = []
    groups = compare.group_runs(runs, ["name", "variant"], notes)
    assert {k: [r.name for r in v] for k, v in groups.items()} == {
        "random": ["r0", "r1"], "tfdp / scs": ["t0"], "tfdp / si_cb_scs": ["t1"], "?": ["e0"]}
    assert notes == ["no 'name' in config.yaml or results.jsonl of 1 run(s) (e0); left out of their labels",
                     "no 'variant' in config.yaml or results.jsonl of 3 run(s) (r0, r1, e0); left out of their labels"]
    # leaving a value out must not merge different groups: 'x' without a variant vs. no name and variant 'x'
    groups = compare.group_runs([_StubRun("a", name="x"), _StubRun("b", variant="x"), _StubRun("c", name="y")],
                                ["name", "variant"], [])
    assert {k: [r.name for r in v] for k, v in groups.items()} == {"x / ?": ["a"], "? / x": ["b"], "y": ["c"]}
    with pytest.raises(compare.CompareError, match="--group-by nope: not found"):
        compare.group_runs(runs, ["name", "nope"], [])
    # a key every run sets to null (no S set in this sweep) is no typo: left out, with a note
    notes = []
    groups = compare.group_runs([_StubRun("a", name="x", scales=None), _StubRun("b", name="y", scales=None)],
                                ["name", "scales"], notes)
    assert {k: [r.name for r in v] for k, v in groups.items()} == {"x": ["a"], "y": ["b"]}
    assert notes == ["'scales' is unset (null) in every run; left out of the labels"]


def test_compare_group_by_a_key_null_in_every_config(tmp_path):
    root = tmp_path / "runs"
    for strategy, seed in (("random", 0), ("entropy", 0)):
        run = write_run(root, strategy, seed, [0.2, 0.3])
        cfg = run / "config.yaml"
        cfg.write_text(cfg.read_text().replace("strategy:\n", "strategy:\n  scales: null\n"))
    out = tmp_path / "out"
    assert compare.main([str(root), "--out", str(out), "--group-by", "strategy.name,strategy.scales"]) == 0
    assert set(read_csv(out / "compare.csv")) == {(s, k) for s in ("random", "entropy") for k in (0, 1)}
    with pytest.raises(SystemExit):
        compare.main([str(root), "--out", str(out), "--group-by", "strategy.name,strategy.scale"])


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        compare.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("alseg-compare: error: ") and err.count("\n") == 1, err  # one line, no traceback
    return err


def test_compare_malformed_line(runs, tmp_path, capsys):
    bad = runs / "exp" / "strategy=random,seed=1" / "results.jsonl"
    with open(bad, "a") as f:
        f.write('{"round": 3, "mask_AP": \n')
    err = _error(capsys, [str(runs), "--out", str(tmp_path / "out")])
    assert str(bad) in err and "line 4" in err
    bad.write_text('{"round": 0, "mask_AP": 0.1}\n["not", "an", "object"]\n')
    err = _error(capsys, [str(runs), "--out", str(tmp_path / "out")])
    assert str(bad) in err and "line 2" in err
    bad.write_text('{"round": 0, "labeled_images": 4, "hours": 1, "mask_AP": "high"}\n')
    err = _error(capsys, [str(runs), "--out", str(tmp_path / "out")])
    assert str(bad) in err and "line 1" in err and "mask_AP" in err
    assert not (tmp_path / "out" / "compare.csv").exists()


def test_compare_bad_paths(tmp_path, capsys):
    err = _error(capsys, [str(tmp_path / "missing")])
    assert str(tmp_path / "missing") in err
    (tmp_path / "empty").mkdir()
    err = _error(capsys, [str(tmp_path / "empty")])
    assert "no run folder" in err
    write_run(tmp_path / "runs", "random", 0, [0.2])
    err = _error(capsys, [str(tmp_path / "runs"), "--metric", "nope", "--out", str(tmp_path)])
    assert "nope" in err


# --------------------------------------------------------------------------- EDA
def _square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def _ann(i, image_id, cat, x, y, s, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "segmentation": _square(x, y, s),
            "bbox": [x, y, s, s], "area": float(s * s), "iscrowd": crowd}


@pytest.fixture
def coco_file(tmp_path) -> Path:
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 300, "height": 300} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "bird"}],
        "annotations": [
            _ann(1, 1, 1, 0, 0, 10),  # cat, small (100 < 32²)
            _ann(2, 1, 1, 50, 50, 40),  # cat, medium (1600)
            _ann(3, 2, 1, 0, 0, 100),  # cat, large (10000 >= 96²)
            _ann(4, 2, 2, 150, 150, 20),  # dog, small
            _ann(5, 2, 2, 200, 0, 60, crowd=1),  # crowd: not an instance
        ],  # image 3 and bird: nothing
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_eda_counts(coco_file):
    st = eda.load_stats(coco_file)
    assert st.counts() == {"cat": 3, "dog": 1, "bird": 0}
    assert st.images_per_class() == {"cat": 2, "dog": 1, "bird": 0}
    assert st.per_class["cat"].sizes == {"small": 1, "medium": 1, "large": 1}
    assert st.sizes() == {"small": 2, "medium": 1, "large": 1}
    assert (st.num_images, st.num_instances, st.empty_images, st.crowd) == (3, 4, 1, 1)
    sub = eda.load_stats(coco_file, ["dog"])
    assert sub.counts() == {"dog": 1} and sub.crowd == 1 and sub.empty_images == 2


def test_eda_main(coco_file, tmp_path, capsys):
    out = tmp_path / "counts.png"
    assert eda.main(["--ann", str(coco_file), "--classes", "cat", "dog", "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "cat" in text and "small 2" in text and "medium 1" in text and "large 1" in text
    with pytest.raises(SystemExit) as e:
        eda.main(["--ann", str(coco_file), "--classes", "horse", "--out", str(out)])
    assert e.value.code == 2
    assert "horse" in capsys.readouterr().err


def test_eda_plot_table_leaves_out_empty_classes_and_counts_images(coco_file):
    st = eda.load_stats(coco_file)
    assert eda.class_order(st, "count") == ["cat", "dog", "bird"]
    assert eda.class_order(st, "name") == ["bird", "cat", "dog"] and eda.class_order(st, "id") == ["cat", "dog", "bird"]
    # cat: 3 instances in 2 images (two in image 1); dog: 1 in image 2 (its crowd region is no instance).
    assert eda.plot_table(st, eda.class_order(st, "name")) == ([("cat", 3, 2), ("dog", 1, 1)], ["bird"])
    with pytest.raises(ValueError, match="count, name or id"):
        eda.class_order(st, "size")


def test_eda_figure_shows_instances_and_images_of_non_empty_classes(coco_file):
    import matplotlib.pyplot as plt

    st = eda.load_stats(coco_file)
    fig = eda.counts_figure(st, eda.class_order(st))
    try:
        ax, ax_img = fig.axes
        assert [t.get_text() for t in ax_img.get_xticklabels()] == ["cat", "dog"]  # no bird
        assert [p.get_height() for p in ax_img.patches] == [2, 1]  # images per class
        stacked = np.array([p.get_height() for p in ax.patches]).reshape(3, 2)  # small, medium, large x class
        assert stacked.sum(0).tolist() == [3, 1]
        assert ax.get_ylabel() == "instances" and ax_img.get_ylabel() == "images holding the class"
        title = fig.get_suptitle()
        assert "4 instances of 2 classes in 2 of 3 images" in title
        assert "1 class without any instance not shown (bird)" in title
    finally:
        plt.close(fig)
    empty = eda.load_stats(coco_file, ["bird"])
    fig = eda.counts_figure(empty, ["bird"])
    try:
        assert len(fig.axes[1].patches) == 0 and "not shown (bird)" in fig.get_suptitle()
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- drawing
def test_draw_instances_changes_mask_pixels_only():
    img = np.full((100, 120, 3), 128, np.uint8)
    mask = np.zeros((1, 100, 120), bool)
    mask[0, 40:70, 50:80] = True
    out = draw_instances(img, mask, [1], ["cat"])
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 128).all()  # input untouched
    inside = mask[0].copy()
    inside[40, :] = inside[69, :] = inside[:, 50] = inside[:, 79] = False  # the contour row/cols
    assert (out[inside] != img[inside]).any(axis=1).all()
    far = np.ones((100, 120), bool)
    far[20:75, 30:85] = False  # the mask, its contour and its label (drawn just above it)
    assert (out[far] == img[far]).all()


def test_draw_instances_boxes_scores_and_empty():
    img = np.zeros((64, 64, 3), np.float32)  # float images in [0, 1] are accepted
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 5:20, 5:20] = 1
    masks[1, 30:60, 30:60] = 1
    out = draw_instances(img, masks, [1, 2], ["a", "b"], boxes=np.array([[5, 5, 20, 20], [30, 30, 60, 60]]),
                         scores=[0.9, 0.6])
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8 and out[45, 45].any()
    empty = draw_instances(np.full((10, 10, 3), 7, np.uint8), np.zeros((0, 10, 10), bool), [], ["a"])
    assert (empty == 7).all()
    with pytest.raises(ValueError):
        draw_instances(img, masks[:1], [1, 2], ["a", "b"])


# --------------------------------------------------------------------------- matching and the grid
def _masks(shape, *squares):
    out = np.zeros((len(squares), *shape), bool)
    for i, (y, x, s) in enumerate(squares):
        out[i, y:y + s, x:x + s] = True
    return out


# Ground truth: A (10..30), B (40..60), C (65..85 x 75..95). Predictions: B exactly, A shifted by 2
# (IoU 18² / (2·20² - 18²) = 324 / 476 = 0.681), one far from everything, and a second copy of B
# shifted by 1 (IoU 19·20 / (2·400 - 380) = 0.905; B is taken, so it is a false positive). C is missed.
GT = _masks((100, 100), (10, 10, 20), (40, 40, 20), (65, 75, 20))
PRED = _masks((100, 100), (40, 40, 20), (12, 12, 20), (75, 5, 10), (41, 40, 20))


def test_match_instances_one_to_one_fp_and_missed():
    from alseg.tools.visualize import match_instances

    m = match_instances(GT, PRED)
    assert [(g, p) for g, p, _ in m.pairs] == [(0, 1), (1, 0)]
    assert [round(iou, 3) for _, _, iou in m.pairs] == [0.681, 1.0]
    assert m.false_positives == [2, 3] and m.missed == [2]
    # Hungarian, not greedy. Objects: 10x10 (0) and its left 6 columns (1). Prediction 0, columns 0..8:
    # IoU 0.9 with object 0, 60/90 = 0.667 with object 1; prediction 1, columns 2..9: IoU 0.8 with object 0,
    # 40/100 = 0.4 with object 1. Greedy takes (0, 0) at 0.9 and leaves one match; the assignment has two.
    gt = np.zeros((2, 10, 10), bool)
    gt[0], gt[1, :, :6] = True, True
    pred = np.zeros((2, 10, 10), bool)
    pred[0, :, :9], pred[1, :, 2:] = True, True
    m = match_instances(gt, pred)
    assert [(g, p, round(iou, 3)) for g, p, iou in m.pairs] == [(0, 1, 0.8), (1, 0, 0.667)]
    assert m.false_positives == m.missed == []
    assert match_instances(GT, PRED[:0]).missed == [0, 1, 2]
    assert match_instances(GT[:0], PRED).false_positives == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        match_instances(GT, PRED[:, :50])


def test_prediction_panel_colours_matched_objects_alike_marks_fp_and_missed():
    from alseg.tools.visualize import FP_COLOR, object_color, prediction_panel

    img = np.full((100, 100, 3), 128, np.uint8)
    gt, pred, m = prediction_panel(img, GT, [1, 1, 2], PRED, [1, 2, 1, 1], [0.9, 0.8, 0.7, 0.6], ["cat", "dog"])
    assert (len(m.pairs), len(m.false_positives), len(m.missed)) == (2, 2, 1)
    assert object_color(0) != object_color(1)
    # Inside B (matched exactly) and inside both A and its prediction: the same fill in both panels,
    # although the prediction of A says "dog" (its class colour would differ).
    for y, x in ((50, 50), (25, 25)):
        assert (gt[y, x] == pred[y, x]).all() and (pred[y, x] != 128).any()
    # The far false positive: a grey dashed outline, no fill.
    assert (pred[80, 10] == 128).all()
    outline = pred[75:85, 5:15][~np.pad(np.ones((6, 6), bool), 2)]
    assert (outline == FP_COLOR).all(axis=1).any() and (outline == 128).all(axis=1).any()  # dashes and gaps
    # The missed object C: no fill in the prediction panel, its own colour on its outline.
    assert (pred[75, 85] == 128).all() and (gt[75, 85] != 128).any()
    assert (pred[63:87, 73:97] == object_color(2)).all(axis=-1).any()


def test_grid_figure_title_clear_of_the_panels_and_png_written(tmp_path):
    import matplotlib.pyplot as plt

    from alseg.tools.visualize import CAPTION, grid_figure, render_grid

    panels = [(np.zeros((64, 80, 3), np.uint8), np.zeros((64, 80, 3), np.uint8))] * 2
    titles = [("image 1: ground truth (2)", "prediction: 1 matched, 0 FP, 1 missed")] * 2
    fig = grid_figure(panels, titles, "runs/exp/run - round 3", CAPTION)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        top = fig._suptitle.get_window_extent(r)
        for ax in fig.axes:
            b = ax.get_tightbbox(r)  # the panel with its title
            assert b.y1 <= top.y0
        assert "FP" in fig._supxlabel.get_text() and "missed" in fig._supxlabel.get_text()
    finally:
        plt.close(fig)
    out = render_grid(panels, titles, tmp_path / "grid.png", "t", CAPTION)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- visualize (untrained model)
def test_visualize_run(cfg_factory, tmp_path):
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from alseg.tools.visualize import checkpoint_rounds, visualize_run

    cfg = cfg_factory()
    run = tmp_path / "run"
    (run / "round_001").mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    data = instantiate(cfg.dataset, _convert_="all")
    model = instantiate(cfg.model, num_classes=data.train.num_classes, _convert_="all")
    torch.save({"model": model.state_dict(), "round": 1}, run / "round_001" / "model.pt")
    assert checkpoint_rounds(run) == [1]
    path = visualize_run(run, num_images=2, score_threshold=0.0, out=tmp_path / "grid.png")
    assert path.is_file() and path.stat().st_size > 0


# --------------------------------------------------------------------------- alseg-compare: input faults
ODD = "$x^$ a_b"  # '$' pairs would be mathtext; '_' and '^' too inside it


def _one_run(root: Path, name: str, records: list[dict], config: str = "") -> Path:
    run = root / "exp" / name
    run.mkdir(parents=True)
    if config:
        (run / "config.yaml").write_text(config)
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run / "results.jsonl"


def _rec(k, ap, strategy="random", **kw):
    return {"round": k, "strategy": strategy, "initial_strategy": strategy, "pool_images": 10, "mask_AP": ap,
            "labeled_images": k + 1, "hours": k + 1, **kw}


def test_compare_shows_dollar_labels_literally(tmp_path, figure_spy, capsys):
    root = tmp_path / "runs"
    _one_run(root, "$a$_s0", [_rec(0, 0.1, ODD, seed=0), _rec(1, 0.2, ODD, seed=0)])
    _one_run(root, "$a$_s1", [_rec(0, 0.3, ODD, seed=1), _rec(1, 0.4, ODD, seed=1)])
    out = tmp_path / "out"
    assert compare.main([str(root), "--metric", "mask_AP", "--out", str(out)]) == 0
    assert figure_spy["legend"] == ["$x^$ a_b (2 seeds)"]  # mathtext off: drawn as written
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert set(read_csv(out / "compare.csv")) == {(ODD, 0), (ODD, 1)}
    # A run folder name with '$' in the title (the experiment folder) and a group-by value.
    (root / "exp").rename(root / "$e^$")
    assert compare.main([str(root), "--metric", "mask_AP", "--out", str(out)]) == 0
    assert figure_spy["title"].startswith("$e^$: mask_AP per strategy")


def test_compare_failure_leaves_previous_outputs(runs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare.csv").write_text("old csv\n")
    (out / "compare.md").write_text("old md\n")
    (out / "compare.png").mkdir()
    err = _error(capsys, [str(runs), "--out", str(out)])
    assert str(out / "compare.png") in err
    assert (out / "compare.csv").read_text() == "old csv\n" and (out / "compare.md").read_text() == "old md\n"
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md", "compare.png"]  # no temporaries


def test_compare_huge_round_numbers(tmp_path, capsys):
    import time

    root = tmp_path / "runs"
    _one_run(root, "s0", [_rec(0, 0.1), _rec(10 ** 12, 0.2, labeled_images=5, hours=5)])
    _one_run(root, "s1", [_rec(0, 0.3)], config="al:\n  rounds: 1000000000000\n")
    t = time.monotonic()
    groups = compare.compare([root], metrics=["mask_AP"], out=tmp_path / "out", show=False)
    assert time.monotonic() - t < 30
    assert [r.round for r in groups[0].rows] == [0]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "lacks 1-999999999999" in md and "lacks 1-1000000000000" in md
    assert compare._gaps([1, 2, 5], 8) == [(0, 0), (3, 4), (6, 7)] and compare._gaps([0, 1], 2) == []


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "1e308", "-1e308", "1e13", "true"])
@pytest.mark.parametrize("key", ["mask_AP", "hours", "labeled_images"])
def test_compare_rejects_non_finite_and_huge_values(tmp_path, capsys, key, value):
    root = tmp_path / "runs"
    good = _one_run(root, "s0", [_rec(0, 0.1), _rec(1, 0.2)])
    bad = _one_run(root, "s1", [_rec(0, 0.1)])
    line = json.dumps(_rec(1, 0.3)).replace(f'"{key}": ', f'"{key}": {value}, "_was": ', 1)
    with open(bad, "a") as f:
        f.write(line + "\n")
    err = _error(capsys, [str(root), "--metric", "mask_AP", "--out", str(tmp_path / "out")])
    assert str(bad) in err and "line 2" in err and f"'{key}'" in err and str(good) not in err
    assert not (tmp_path / "out").exists()


def test_compare_null_and_nan_metrics_stay_missing(tmp_path, capsys):
    root = tmp_path / "runs"
    _one_run(root, "s0", [_rec(0, 0.1), _rec(1, None)])
    _one_run(root, "s1", [_rec(0, 0.3), _rec(1, float("nan"))])
    groups = compare.compare([root], metrics=["mask_AP"], out=tmp_path / "out", show=False)
    assert groups[0].rows[0].metrics["mask_AP"] == pytest.approx((0.2, 0.2 / 2 ** 0.5))
    assert groups[0].rows[1].metrics["mask_AP"] is None


@pytest.mark.parametrize("value,reason", [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                                          ("9" * 5000, "4300 digits")])
def test_compare_json_too_deep_or_with_too_long_numbers_is_one_line(runs, tmp_path, capsys, value, reason):
    """A line json cannot build (RecursionError, ValueError, not JSONDecodeError): one line naming it."""
    bad = runs / "exp" / "strategy=random,seed=1" / "results.jsonl"
    bad.write_text('{"round": 0, "labeled_images": 4, "hours": 1, "mask_AP": 0.1}\n'
                   '{"round": 1, "mask_AP": ' + value + '}\n')
    err = _error(capsys, [str(runs), "--out", str(tmp_path / "out")])
    assert str(bad) in err and "line 2" in err and reason in err and "set_int_max_str_digits" not in err
    assert not (tmp_path / "out").exists()


def test_compare_lines_are_split_at_newlines_only(tmp_path, capsys):
    """A JSON string may hold U+2028 or U+0085 as they are: the record is whole, and
    the line numbers of errors are those of an editor (str.splitlines split there too)."""
    res = _one_run(tmp_path, "r", [])
    res.write_text(json.dumps(_rec(0, 0.1, strategy="a\u2028b\x85c"), ensure_ascii=False) + "\n"
                   + json.dumps(_rec(1, 0.2)) + "\n" + '{"round": 2, "mask_AP": }\n')
    err = _error(capsys, [str(tmp_path / "exp"), "--metric", "mask_AP", "--out", str(tmp_path / "out")])
    assert "line 3" in err
    res.write_text(json.dumps(_rec(0, 0.1, strategy="a\u2028b"), ensure_ascii=False) + "\n")
    assert compare.main([str(tmp_path / "exp"), "--metric", "mask_AP", "--out", str(tmp_path / "out")]) == 0
    assert read_csv(tmp_path / "out" / "compare.csv").keys() == {("a\\u2028b", 0)}


def test_compare_any_seed_and_label_value(tmp_path, capsys):
    """config.yaml / record values of any type and text: a seed that is a mapping or a list (two
    runs: no 'unhashable' TypeError), a label with a newline or a lone surrogate (printable
    escapes in the table, the outputs and the figure)."""
    for i, (seed, strategy) in enumerate([({"a": 1}, "bad\ud800"), ({"a": 1}, "two\nlines"), ([1], "x"), ([1], "x")]):
        _one_run(tmp_path, f"r{i}", [_rec(0, 0.1 + i / 10, strategy=strategy)], config=f"seed: {json.dumps(seed)}\n")
    out = tmp_path / "out"
    assert compare.main([str(tmp_path / "exp"), "--metric", "mask_AP", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    printed.encode("utf-8")
    assert set(read_csv(out / "compare.csv")) == {("bad\\ud800", 0), ("two\\nlines", 0), ("x", 0)}
    md = (out / "compare.md").read_text()
    assert "| two\\nlines | 0 |" in md and "seed(s) [1] appear in more than one run" in md


def _apis_run(root: Path, name: str, seed: int, metric: str, model: str, aps: list[float]) -> None:
    config = (f"seed: {seed}\nstrategy:\n  name: apis\n  metric: {metric}\n  scales: null\n"
              f"model:\n  _target_: {model}\n  min_size: 128\nal:\n  rounds: {len(aps) - 1}\n")
    _one_run(root, name, [_rec(k, ap, "apis", seed=seed) for k, ap in enumerate(aps)], config)


def test_compare_notes_groups_that_mix_strategy_or_model_settings(tmp_path):
    # APIS entropy and variance runs are all named 'apis': grouped by name they would be averaged
    # together; so would a Mask R-CNN and a CondInst run of one rule
    root = tmp_path / "runs"
    _apis_run(root, "e0", 0, "entropy", "build_maskrcnn", [0.1, 0.2])
    _apis_run(root, "v0", 0, "variance", "build_maskrcnn", [0.1, 0.4])
    _apis_run(root, "c0", 0, "variance", "build_condinst", [0.0, 0.1])
    notes: list[str] = []
    groups = compare.group_runs(compare.read_finished_runs([root], notes), ["strategy"], notes)
    assert list(groups) == ["apis"]
    compare.aggregate("apis", groups["apis"], ["mask_AP"], ["strategy"], notes)
    assert notes == ["group apis: seed(s) 0 appear in more than one run",
                     "group apis mixes runs whose model._target_, strategy.metric differ "
                     "(add --group-by strategy,model._target_ to separate them)"]

    notes = []
    runs = compare.read_finished_runs([root], notes)
    groups = compare.group_runs(runs, ["strategy.metric", "model._target_"], notes)
    assert set(groups) == {"entropy / build_maskrcnn", "variance / build_maskrcnn", "variance / build_condinst"}
    for label, rs in groups.items():
        compare.aggregate(label, rs, ["mask_AP"], ["strategy.metric", "model._target_"], notes)
    assert notes == []
    # the same settings in every run: nothing to say
    assert compare.differing_settings([{"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}, None], "model") == []
    assert compare.differing_settings([{"a": 1}, {"a": 1, "b": None}], "model") == ["model.b"]


# --------------------------------------------------------------------------- alseg-compare --baseline
def test_compare_paired_differences_hand_computed(runs, tmp_path, capsys):
    # entropy minus random per seed (MASK_AP above):
    #   round 0: -0.1, +0.1 -> mean 0.0, std 0.1 sqrt 2, t = 0 -> p = 1
    #   round 1: +0.3, +0.1 -> mean 0.2, std 0.1 sqrt 2, t = 0.2 / (0.1 sqrt 2 / sqrt 2) = 2 on 1 degree
    #            of freedom (Cauchy): two-sided p = 1 - (2 / pi) atan(2) = 0.2952
    #   round 2: seed 0 only, +0.3: one pair, no std, no p
    out = tmp_path / "out"
    assert compare.main([str(runs), "--metric", "mask_AP", "--baseline", "random", "--out", str(out)]) == 0
    rows = read_csv(out / "paired.csv")
    assert set(rows) == {("entropy", 0), ("entropy", 1), ("entropy", 2)}
    r0, r1, r2 = rows[("entropy", 0)], rows[("entropy", 1)], rows[("entropy", 2)]
    assert r0["baseline"] == "random" and r0["mask_AP_n_pairs"] == "2"
    assert float(r0["mask_AP_diff_mean"]) == pytest.approx(0.0, abs=1e-12)
    assert float(r0["mask_AP_diff_std"]) == pytest.approx(0.1 * 2 ** 0.5)
    assert float(r0["mask_AP_p"]) == pytest.approx(1.0)
    assert float(r1["mask_AP_diff_mean"]) == pytest.approx(0.2)
    assert float(r1["mask_AP_p"]) == pytest.approx(1 - 2 / np.pi * np.arctan(2.0), abs=1e-6)
    assert r2["mask_AP_n_pairs"] == "1" and float(r2["mask_AP_diff_mean"]) == pytest.approx(0.3)
    assert r2["mask_AP_diff_std"] == "" and r2["mask_AP_p"] == ""
    md = (out / "compare.md").read_text()
    assert "Paired differences to random" in md
    assert "| entropy | 1 | 2 | +0.200 ± 0.141 (p 0.30) |" in md and "| entropy | 2 | 1 | +0.300 |" in md
    assert "+0.200 ± 0.141 (p 0.30)" in capsys.readouterr().out


def test_paired_difference_equals_scipy_ttest_rel():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 0.02, 3), rng.normal(0.28, 0.02, 3)
    d = paired.difference(a - b)
    ref = stats.ttest_rel(a, b)
    assert d.n == 3 and d.mean == pytest.approx((a - b).mean()) and d.std == pytest.approx((a - b).std(ddof=1))
    assert d.p == pytest.approx(ref.pvalue)
    # every pair the same (round 0 from a shared initial run): no p, not a division warning
    assert paired.difference([0.0, 0.0, 0.0]).p is None
    assert paired.difference([0.3 - 0.2, 0.2 - 0.1, 0.1]).p is None  # equal but for float rounding
    assert paired.fmt_difference(paired.difference([0.02, 0.021, 0.019]), 3) == "+0.020 ± 0.001 (p <0.01)"
    # two pairs: t = 0.025 / (0.005 sqrt 2 / sqrt 2) = 5 on 1 degree of freedom, p = 1 - (2 / pi) atan(5) = 0.126
    assert paired.fmt_difference(paired.difference([0.02, 0.03]), 3) == "+0.025 ± 0.007 (p 0.13) (n=2)"


def test_compare_paired_unpaired_seed_and_missing_values(tmp_path):
    root = tmp_path / "runs"
    write_run(root, "random", 0, [0.2, 0.3])
    write_run(root, "random", 1, [0.4, 0.5])
    write_run(root, "entropy", 0, [0.2, 0.5])
    write_run(root, "entropy", 1, [0.4, 0.6])
    write_run(root, "entropy", 7, [0.1, 0.9])  # no random run of seed 7
    res = root / "exp" / "strategy=entropy,seed=1" / "results.jsonl"  # seed 1's round-1 AP is null
    lines = [json.loads(x) for x in res.read_text().splitlines()]
    lines[1]["mask_AP"] = None
    res.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    assert compare.main([str(root), "--metric", "mask_AP", "--baseline", "random", "--out", str(out)]) == 0
    rows = read_csv(out / "paired.csv")
    assert rows[("entropy", 1)]["mask_AP_n_pairs"] == "1"
    assert float(rows[("entropy", 1)]["mask_AP_diff_mean"]) == pytest.approx(0.2)  # seed 0 only
    assert "seed 7 without a random run" in (out / "compare.md").read_text()


def test_compare_paired_errors_are_one_line_and_write_nothing(runs, tmp_path, capsys):
    out = tmp_path / "out"
    err = _error(capsys, [str(runs), "--baseline", "randm", "--out", str(out)])
    assert "--baseline 'randm'" in err and "'entropy', 'random'" in err
    assert not out.exists()
    # two runs of one group with the same seed: which to pair is not guessed
    write_run(tmp_path / "more", "random", 0, [0.2, 0.3, 0.4])
    err = _error(capsys, [str(runs), str(tmp_path / "more"), "--baseline", "random", "--out", str(out)])
    assert "group random" in err and "seed=0" in err and "one run per seed" in err
    err = _error(capsys, [str(runs), "--baseline", "random", "--pair-by", "dataset.nme", "--out", str(out)])
    assert "no 'dataset.nme'" in err and "strategy=" in err
    assert not out.exists()


def test_compare_runs_csv_holds_every_run_value(runs, tmp_path):
    out = tmp_path / "out"
    assert compare.main([str(runs), "--metric", "mask_AP", "--out", str(out)]) == 0
    with open(out / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["strategy", "run", "seed", "round", "labeled_images", "hours", "mask_AP"]
    got = {(r["strategy"], int(r["seed"]), int(r["round"])): float(r["mask_AP"]) for r in rows}
    # every record of every run, the incomplete one's too (entropy seed 1: two rounds)
    assert got == {(s, seed, k): v for (s, seed), vals in MASK_AP.items() for k, v in enumerate(vals)}
    assert all(r["run"].endswith(f"seed={r['seed']}") for r in rows)
