"""TFDP figures (score distribution, kept vs pruned examples), their alseg-prune options, and
tools/pruning_curve.py on hand-written run folders."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from alseg.errors import DataError
from alseg.tfdp import score_dataset, select_top
from alseg.tfdp.cli import main as prune_main
from alseg.tfdp.plots import _pick, plot_kept_vs_pruned, plot_score_distribution
from alseg.tools.pruning_curve import main as curve_main
from conftest import checkout_env

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64


# -------------------------------------------------------------------------------------------------
# a small COCO dataset with images on disk


def poly_ann(aid, image_id, cat, pts):
    xs, ys = pts[0::2], pts[1::2]
    x0, y0 = min(xs), min(ys)
    return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": [pts], "iscrowd": 0,
            "area": 1.0, "bbox": [x0, y0, max(xs) - x0, max(ys) - y0]}


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ell(x0, y0, s):
    """An L shape of size s (more complex than a square)."""
    t = max(2, s // 4)
    return [x0, y0, x0 + t, y0, x0 + t, y0 + s - t, x0 + s, y0 + s - t, x0 + s, y0 + s, x0, y0 + s]


def make_coco() -> dict:
    anns = [
        poly_ann(1, 1, 1, rect(4, 4, 30, 30)),
        poly_ann(2, 2, 1, ell(4, 4, 30)),
        poly_ann(3, 2, 2, ell(30, 10, 28)),
        poly_ann(4, 3, 2, rect(10, 10, 40, 40)),
        poly_ann(5, 4, 1, ell(2, 2, 20)),
        poly_ann(6, 4, 2, rect(30, 5, 60, 20)),
        poly_ann(7, 4, 2, ell(30, 22, 20)),
        poly_ann(8, 5, 1, rect(20, 20, 44, 44)),
    ]
    images = [{"id": i, "file_name": f"img_{i}.png", "height": H, "width": W} for i in range(1, 7)]  # 6: no instance
    return {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]}


@pytest.fixture
def dataset(tmp_path):
    data = make_coco()
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    for im in data["images"]:
        assert cv2.imwrite(str(image_dir / im["file_name"]), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return data, image_dir, ann_file


def _is_png(path: Path, shape_min=(50, 50)) -> bool:
    img = cv2.imread(str(path))
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img is not None and img.shape[0] >= shape_min[0]


# -------------------------------------------------------------------------------------------------
# plots


def test_score_distribution_png(dataset, tmp_path):
    data, _, _ = dataset
    for variant in ("si_cb_scs", "scs"):
        result = score_dataset(data, variant=variant, workers=1)
        out = plot_score_distribution(result, data, tmp_path / "fig" / f"dist_{variant}.png")
        assert out == tmp_path / "fig" / f"dist_{variant}.png" and _is_png(out)
    assert not list((tmp_path / "fig").glob("*.tmp*"))
    # Nothing scored at all: still a (empty) figure, no crash.
    empty = {"images": data["images"], "annotations": [], "categories": data["categories"]}
    assert _is_png(plot_score_distribution(score_dataset(empty, workers=1), empty, tmp_path / "empty.png"))


def test_pick_kept_highest_and_pruned_lowest(dataset):
    data, _, _ = dataset
    result = score_dataset(data, variant="si_scs", workers=1)
    score = result.image_score_map()
    kept = select_top(result, keep=0.5)
    assert len(kept) == 3
    top, pruned = _pick(result, set(kept), 2)
    assert set(top) <= set(kept) and not set(pruned) & set(kept)
    assert [score[i] for i in top] == sorted((score[i] for i in kept), reverse=True)[:2]
    rest = [i for i in score if i not in kept]
    assert [score[i] for i in pruned] == sorted(score[i] for i in rest)[:2]
    assert pruned[0] == 6 and score[6] == 0  # the image without instance is pruned first
    with pytest.raises(DataError, match="999"):
        _pick(result, {999}, 2)


def test_kept_vs_pruned_png_and_errors(dataset, tmp_path):
    data, image_dir, _ = dataset
    result = score_dataset(data, variant="si_cb_scs", workers=1)
    kept = select_top(result, keep=0.5)
    out = plot_kept_vs_pruned(result, data, image_dir, kept, tmp_path / "ex.png", n=4)  # fewer than 4 per row: ok
    assert _is_png(out)
    assert _is_png(plot_kept_vs_pruned(result, data, image_dir, iter(kept), tmp_path / "ex2.png", n=2))
    # All kept: the bottom row is empty but the figure is made.
    assert _is_png(plot_kept_vs_pruned(result, data, image_dir, result.image_ids.tolist(), tmp_path / "all.png", n=2))

    for bad_dir in (None, tmp_path / "nowhere"):
        with pytest.raises(DataError) as e:
            plot_kept_vs_pruned(result, data, bad_dir, kept, tmp_path / "x.png")
        assert "\n" not in str(e.value)
    (image_dir / "img_6.png").unlink()  # the lowest-scored pruned image
    with pytest.raises(DataError) as e:
        plot_kept_vs_pruned(result, data, image_dir, kept, tmp_path / "x.png")
    assert "img_6.png" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "x.png").exists()


def test_prune_cli_plot_options(dataset, tmp_path, capsys):
    _, image_dir, ann_file = dataset
    base = ["--ann", str(ann_file), "--keep", "0.5", "--out", str(tmp_path / "kept.json"),
            "--scores", str(tmp_path / "s.csv"), "--no-cache", "--no-progress", "--workers", "1"]
    rc = prune_main(base + ["--plot-scores", str(tmp_path / "p" / "scores.png"),
                            "--plot-examples", str(tmp_path / "p" / "examples.png"), "--images", str(image_dir),
                            "--num-examples", "2"])
    assert rc == 0
    assert _is_png(tmp_path / "p" / "scores.png") and _is_png(tmp_path / "p" / "examples.png")
    out = capsys.readouterr().out
    assert "kept 3 of 6 images" in out and "scores.png" in out and "examples.png" in out
    assert len(json.loads((tmp_path / "kept.json").read_text())["images"]) == 3

    cases = [
        (["--plot-examples", str(tmp_path / "e.png")], "--images"),  # needs --images
        (["--plot-examples", str(tmp_path / "e.png"), "--images", str(tmp_path / "nowhere")], "nowhere"),
        (["--plot-scores", str(tmp_path / "s.csv")], "different files"),
        (["--plot-examples", str(tmp_path / "e.png"), "--images", str(image_dir), "--num-examples", "0"], "--num-examples"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as e:
            prune_main(base + extra)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("alseg-prune: error: ") and err.count("\n") == 1, err
        assert needle in err and "Traceback" not in err
    assert not (tmp_path / "e.png").exists()
    (image_dir / "img_6.png").unlink()
    with pytest.raises(SystemExit) as e:
        prune_main(base + ["--plot-examples", str(tmp_path / "e.png"), "--images", str(image_dir)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "img_6.png" in err and err.count("\n") == 1


# -------------------------------------------------------------------------------------------------
# pruning_curve

# strategy -> pruning rate -> mask_AP per seed (0, 1)
VALUES = {
    "tfdp": {0.5: (0.30, 0.34), 0.75: (0.25, 0.29)},
    "random": {0.5: (0.20, 0.30), 0.75: (0.10, 0.16)},
}
R2 = 2 ** 0.5
EXPECTED = {  # hand-computed mean, sample std (ddof=1): two values a, b give |a - b| / sqrt 2
    ("tfdp", "0.500"): (0.32, 0.04 / R2),
    ("tfdp", "0.750"): (0.27, 0.04 / R2),
    ("random", "0.500"): (0.25, 0.10 / R2),
    ("random", "0.750"): (0.13, 0.06 / R2),
}


def hours_of(strategy: str, labeled: int, seed: int) -> float:
    """Annotation hours of a kept subset: TFDP keeps instance-rich images (more hours per image)."""
    return labeled * (0.08 if strategy == "tfdp" else 0.05) + 0.1 * seed


def make_runs(root: Path) -> Path:
    exp = root / "runs" / "pruning"
    for strategy, by_rate in VALUES.items():
        for rate, vals in by_rate.items():
            for seed, ap in enumerate(vals):
                run = exp / f"{strategy}_{rate}_s{seed}"
                run.mkdir(parents=True)
                labeled = round(200 * (1 - rate))
                (run / "config.yaml").write_text(
                    f"seed: {seed}\nal:\n  rounds: 0\n  initial: {labeled}\n  initial_strategy:\n    name: {strategy}\n")
                rec = {"round": 0, "labeled_images": labeled, "pool_images": 200, "strategy": "random",
                       "seed": seed, "mask_AP": ap, "mask_AP50": ap + 0.2, "box_AP": ap + 0.05,
                       "hours": hours_of(strategy, labeled, seed)}
                if strategy == "tfdp":  # in the record; 'random' runs: config fallback, rate from counts
                    rec["initial_strategy"] = strategy
                    rec["pruning_rate"] = 1 - labeled / 200 + 1e-5  # rounded to 3 decimals
                (run / "results.jsonl").write_text(json.dumps(rec) + "\n")
    return exp


def test_pruning_curve_means_and_std(tmp_path, capsys):
    exp = make_runs(tmp_path)
    out = tmp_path / "report"
    assert curve_main([str(exp), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tfdp" in printed and "random" in printed and "0.320 ± 0.028" in printed
    with open(out / "pruning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["strategy", "pruning_rate", "n", "kept_images", "hours", "mask_AP_mean", "mask_AP_std"]
    got = {(r["strategy"], r["pruning_rate"]): r for r in rows}
    assert set(got) == set(EXPECTED)
    for key, (mean, std) in EXPECTED.items():
        r = got[key]
        assert int(r["n"]) == 2
        assert float(r["mask_AP_mean"]) == pytest.approx(mean, abs=1e-9)
        assert float(r["mask_AP_std"]) == pytest.approx(std, abs=1e-9)
        assert float(r["kept_images"]) == (100 if key[1] == "0.500" else 50)
        kept = 100 if key[1] == "0.500" else 50
        assert float(r["hours"]) == pytest.approx((hours_of(key[0], kept, 0) + hours_of(key[0], kept, 1)) / 2)
    md = (out / "pruning.md").read_text()
    assert "| tfdp | 0.500 | 100 | 8.05 | 0.320 ± 0.028 | 2 |" in md
    assert _is_png(out / "pruning.png")

    # Another metric, and the thin script.
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "pruning_curve.py"), str(exp), "--metric", "box_AP",
                           "--out", str(out / "box")], capture_output=True, text=True, timeout=120,
                          env=checkout_env())
    assert proc.returncode == 0, proc.stderr
    with open(out / "box" / "pruning.csv", newline="") as f:
        box = {(r["strategy"], r["pruning_rate"]): float(r["box_AP_mean"]) for r in csv.DictReader(f)}
    assert box[("random", "0.750")] == pytest.approx(0.18)


def test_pruning_curve_group_by_keeps_tfdp_variants_apart(tmp_path, capsys):
    """Every TFDP variant is named "tfdp": --group-by with the variant draws one curve per variant."""
    exp = tmp_path / "runs"
    for variant, aps in (("scs", (0.30, 0.34)), ("si_cb_scs", (0.40, 0.42))):
        for seed, ap in enumerate(aps):
            run = exp / f"{variant}_s{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(f"seed: {seed}\nal:\n  initial_strategy:\n    name: tfdp\n"
                                             f"    variant: {variant}\n")
            (run / "results.jsonl").write_text(json.dumps(
                {"round": 0, "labeled_images": 100, "pool_images": 200, "initial_strategy": "tfdp", "seed": seed,
                 "mask_AP": ap}) + "\n")
    run = exp / "random_s0"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\nal:\n  initial_strategy:\n    name: random\n")
    (run / "results.jsonl").write_text(json.dumps({"round": 0, "labeled_images": 100, "pool_images": 200,
                                                   "initial_strategy": "random", "seed": 0, "mask_AP": 0.2}) + "\n")
    out = tmp_path / "by_variant"
    assert curve_main([str(exp), "--group-by", "al.initial_strategy.name, al.initial_strategy.variant",
                       "--out", str(out)]) == 0
    capsys.readouterr()
    with open(out / "pruning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[0] == "al.initial_strategy.name / al.initial_strategy.variant"
    got = {r["al.initial_strategy.name / al.initial_strategy.variant"]: (int(r["n"]), float(r["mask_AP_mean"]))
           for r in rows}
    assert got == {"random": (1, 0.2), "tfdp / scs": (2, pytest.approx(0.32)),
                   "tfdp / si_cb_scs": (2, pytest.approx(0.41))}
    # without it, the variants are one group of 4 runs
    assert curve_main([str(exp), "--out", str(tmp_path / "by_name")]) == 0
    capsys.readouterr()
    with open(tmp_path / "by_name" / "pruning.csv", newline="") as f:
        assert {r["strategy"]: int(r["n"]) for r in csv.DictReader(f)} == {"random": 1, "tfdp": 4}
    assert "--group-by nope: not found" in _error([str(exp), "--group-by", "nope", "--out", str(out)], capsys)
    assert "--group-by: give one or more keys" in _error([str(exp), "--group-by", " , ", "--out", str(out)], capsys)


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        curve_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("pruning_curve: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_pruning_curve_bad_input(tmp_path, capsys):
    exp = make_runs(tmp_path)
    out = str(tmp_path / "o")
    assert "--metric nope" in _error([str(exp), "--metric", "nope", "--out", out], capsys)
    assert "no such file" in _error([str(tmp_path / "missing"), "--out", out], capsys)
    bad = exp / "tfdp_0.5_s0" / "results.jsonl"
    bad.write_text('{"round": 0, "mask_AP": 0.3\n')
    assert "not valid JSON" in _error([str(exp), "--out", out], capsys)
    bad.write_text('{"round": 0, "mask_AP": 0.3}\n')  # no pruning rate, no counts
    assert "pruning_rate" in _error([str(exp), "--out", out], capsys)
    bad.write_text('{"round": 0, "mask_AP": 0.3, "pruning_rate": 1.5}\n')
    assert "[0, 1]" in _error([str(exp), "--out", out], capsys)
    bad.write_text('{"round": 0, "mask_AP": "high", "pruning_rate": 0.5}\n')
    assert "mask_AP" in _error([str(exp), "--out", out], capsys)
    assert not Path(out).exists()


def _curve_run(exp: Path, name: str, rec: dict) -> Path:
    run = exp / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "results.jsonl").write_text(json.dumps(rec) + "\n")
    return run / "results.jsonl"


def test_pruning_curve_shows_dollar_strategy_literally(tmp_path, capsys, monkeypatch):
    import alseg.tools.pruning_curve as pc

    seen = {}
    real = pc.curve_figure

    def spy(points, metric):
        fig = real(points, metric)
        seen["legend"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return fig

    monkeypatch.setattr(pc, "curve_figure", spy)
    exp = tmp_path / "runs" / "$p$"
    for seed, ap in enumerate((0.1, 0.2)):
        _curve_run(exp, f"$x^$_s{seed}", {"round": 0, "strategy": "$x^$ a_b", "initial_strategy": "$x^$ a_b",
                                          "pool_images": 10, "mask_AP": ap, "labeled_images": 1, "hours": 1})
    out = tmp_path / "out"
    assert curve_main([str(exp), "--out", str(out)]) == 0
    assert seen["legend"] == ["$x^$ a_b (n=2)"]  # mathtext off: drawn as written
    assert _is_png(out / "pruning.png")
    assert "| $x^$ a_b | 0.900 | 1 | 1.00 | 0.150 ± 0.071 | 2 |" in (out / "pruning.md").read_text()


def test_pruning_curve_against_hours(tmp_path, capsys):
    """The right panel draws each strategy's mean metric at its mean annotation hours; a point whose
    runs do not all have hours is left out of it (and shows '-'); negative hours are refused."""
    import alseg.tools.pruning_curve as pc

    exp = make_runs(tmp_path)
    notes = []
    points = pc.collect([exp], "mask_AP", notes)
    fig = pc.curve_figure(points, "mask_AP")
    rate_ax, hours_ax = fig.axes
    assert [t.get_text() for t in rate_ax.get_legend().get_texts()] == ["random (n=2)", "tfdp (n=2)"]
    for strategy, line_rate, line_hours in zip(("random", "tfdp"), rate_ax.get_lines(), hours_ax.get_lines()):
        assert line_rate.get_color() == line_hours.get_color()
        want = sorted(((hours_of(strategy, k, 0) + hours_of(strategy, k, 1)) / 2, EXPECTED[(strategy, r)][0])
                      for k, r in ((100, "0.500"), (50, "0.750")))
        assert list(line_hours.get_xdata()) == pytest.approx([h for h, _ in want])
        assert list(line_hours.get_ydata()) == pytest.approx([v for _, v in want])
    # one tfdp run at 0.75 without hours: that point leaves the hours panel, the rate panel keeps it
    rec_path = next(p for p in exp.glob("tfdp_0.75_s1/results.jsonl"))
    rec = json.loads(rec_path.read_text())
    del rec["hours"]
    rec_path.write_text(json.dumps(rec) + "\n")
    points = pc.collect([exp], "mask_AP", [])
    fig = pc.curve_figure(points, "mask_AP")
    tfdp_rate, tfdp_hours = fig.axes[0].get_lines()[1], fig.axes[1].get_lines()[1]
    assert len(tfdp_rate.get_xdata()) == 2 and list(tfdp_hours.get_xdata()) == pytest.approx([8.05])
    assert curve_main([str(exp), "--out", str(tmp_path / "o")]) == 0
    assert "| tfdp | 0.750 | 50 | - | 0.270 ± 0.028 | 2 |" in (tmp_path / "o" / "pruning.md").read_text()
    capsys.readouterr()
    rec["hours"] = -1.0
    rec_path.write_text(json.dumps(rec) + "\n")
    err = _error([str(exp), "--out", str(tmp_path / "o")], capsys)
    assert str(rec_path) in err and "'hours' must be >= 0, got -1" in err
    assert "| - |" in (tmp_path / "o" / "pruning.md").read_text()  # the previous outputs are kept


def test_pruning_curve_failure_leaves_previous_outputs(tmp_path, capsys):
    exp = make_runs(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    (out / "pruning.csv").write_text("old csv\n")
    (out / "pruning.md").write_text("old md\n")
    (out / "pruning.png").mkdir()
    assert str(out / "pruning.png") in _error([str(exp), "--out", str(out)], capsys)
    assert (out / "pruning.csv").read_text() == "old csv\n" and (out / "pruning.md").read_text() == "old md\n"
    assert sorted(p.name for p in out.iterdir()) == ["pruning.csv", "pruning.md", "pruning.png"]


@pytest.mark.parametrize("fields, named, not_named", [
    ('"labeled_images": 150, "pool_images": 100', ["'labeled_images' (150)", "'pool_images' (100)"], ["pruning_rate'"]),
    ('"labeled_images": 50, "pool_images": NaN', ["'pool_images'", "nan"], ["must be a number"]),
    ('"labeled_images": 50, "pool_images": Infinity', ["'pool_images'", "inf"], ["'pruning_rate'"]),
    ('"labeled_images": -1, "pool_images": 100', ["'labeled_images'", ">= 0"], ["'pruning_rate'"]),
    ('"labeled_images": 50, "pool_images": 0', ["'pool_images'", "> 0"], ["'pruning_rate'"]),
    ('"labeled_images": 50, "pool_images": 100, "pruning_rate": Infinity', ["'pruning_rate'", "inf"], []),
    ('"labeled_images": 50, "pool_images": 100, "mask_AP": 1e308', ["'mask_AP'", "1e+308"], []),
    ('"labeled_images": 50, "pool_images": 100, "mask_AP": -Infinity', ["'mask_AP'", "-inf"], []),
])
def test_pruning_curve_names_the_fields_at_fault(tmp_path, capsys, fields, named, not_named):
    exp = make_runs(tmp_path)
    bad = exp / "tfdp_0.5_s0" / "results.jsonl"
    bad.write_text('{"round": 0, "mask_AP": 0.3, "initial_strategy": "tfdp", ' + fields + "}\n")
    err = _error([str(exp), "--out", str(tmp_path / "o")], capsys)
    assert str(bad) in err and "line 1" in err
    for s in named:
        assert s in err, err
    for s in not_named:
        assert s not in err, err
    assert not (tmp_path / "o").exists()


def test_pruning_curve_null_metric_is_left_out(tmp_path, capsys):
    exp = make_runs(tmp_path)
    (exp / "tfdp_0.5_s0" / "results.jsonl").write_text(
        '{"round": 0, "mask_AP": NaN, "initial_strategy": "tfdp", "labeled_images": 100, "pool_images": 200}\n')
    out = tmp_path / "o"
    assert curve_main([str(exp), "--out", str(out)]) == 0
    md = (out / "pruning.md").read_text()
    assert "| tfdp | 0.500 | 100 | 8.10 | 0.340 | 1 |" in md and "missing (null or NaN) 'mask_AP'" in md


@pytest.mark.parametrize("value,reason", [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                                          ("9" * 5000, "4300 digits")])
def test_pruning_curve_json_too_deep_or_with_too_long_numbers_is_one_line(tmp_path, capsys, value, reason):
    exp = make_runs(tmp_path)
    bad = exp / "tfdp_0.5_s0" / "results.jsonl"
    bad.write_text('{"round": 0, "mask_AP": ' + value + ', "pruning_rate": 0.5}\n')
    err = _error([str(exp), "--out", str(tmp_path / "o")], capsys)
    assert str(bad) in err and "line 1" in err and reason in err
    assert not (tmp_path / "o").exists()


def test_pruning_curve_any_seed_and_strategy_value(tmp_path, capsys):
    """A seed that is a mapping in config.yaml (two runs of a point: no 'unhashable' TypeError) and
    a strategy with a lone surrogate or a newline (escaped, not a font or encoding crash)."""
    exp = tmp_path / "exp"
    for i, strategy in enumerate(["bad\ud800", "bad\ud800", "two\nlines"]):
        res = _curve_run(exp, f"r{i}", {"round": 0, "mask_AP": 0.1 * i, "pruning_rate": 0.5,
                                         "initial_strategy": strategy})
        (res.parent / "config.yaml").write_text("seed: {a: 1}\n")
    assert curve_main([str(exp), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr().out.encode("utf-8")
    md = (tmp_path / "o" / "pruning.md").read_text()
    assert "| bad\\ud800 | 0.500 |" in md and "| two\\nlines | 0.500 |" in md and "{'a': 1}" in md


def test_pruning_curve_paired_to_random(tmp_path, capsys):
    # tfdp minus random per seed (VALUES): at 0.5: +0.10, +0.04 -> mean 0.07, std 0.06 / sqrt 2,
    # t = 0.07 / 0.03 = 7/3 on 1 degree of freedom: p = 1 - (2 / pi) atan(7/3); at 0.75: +0.15, +0.13
    # -> mean 0.14, std 0.02 / sqrt 2, t = 14: p = 1 - (2 / pi) atan(14)
    exp = make_runs(tmp_path)
    out = tmp_path / "report"
    assert curve_main([str(exp), "--baseline", "random", "--out", str(out)]) == 0
    with open(out / "pruning.csv", newline="") as f:
        got = {(r["strategy"], r["pruning_rate"]): r for r in csv.DictReader(f)}
    for rate, mean, std, t in (("0.500", 0.07, 0.06 / R2, 7 / 3), ("0.750", 0.14, 0.02 / R2, 14.0)):
        r = got[("tfdp", rate)]
        assert r["n_pairs"] == "2"
        assert float(r["mask_AP_diff_mean"]) == pytest.approx(mean)
        assert float(r["mask_AP_diff_std"]) == pytest.approx(std)
        assert float(r["mask_AP_p"]) == pytest.approx(1 - 2 / np.pi * np.arctan(t), abs=1e-5)
        assert got[("random", rate)]["mask_AP_diff_mean"] == ""
    md = (out / "pruning.md").read_text()
    assert "| tfdp | 0.500 | 100 | 8.05 | 0.320 ± 0.028 | 2 | +0.070 ± 0.042 (p 0.26) |" in md
    assert "| random | 0.500 | 100 | 5.05 | 0.250 ± 0.071 | 2 | - |" in md
    assert "+0.070 ± 0.042 (p 0.26)" in capsys.readouterr().out


def test_pruning_curve_paired_errors(tmp_path, capsys):
    exp = make_runs(tmp_path)
    out = tmp_path / "report"
    err = _error([str(exp), "--baseline", "rnd", "--out", str(out)], capsys)
    assert "--baseline 'rnd'" in err and "'random'" in err and "'tfdp'" in err
    err = _error([str(exp), "--baseline", "random", "--pair-by", "sed", "--out", str(out)], capsys)
    assert "no 'sed'" in err
    assert not out.exists()
    # a rate without a baseline run: noted, no difference
    run = exp / "tfdp_0.9_s0"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\nal:\n  rounds: 0\n  initial_strategy:\n    name: tfdp\n")
    (run / "results.jsonl").write_text(json.dumps({"round": 0, "labeled_images": 20, "pool_images": 200,
                                                   "mask_AP": 0.2, "initial_strategy": "tfdp"}) + "\n")
    assert curve_main([str(exp), "--baseline", "random", "--out", str(out)]) == 0
    assert "tfdp at pruning rate 0.9: no random run at this rate" in (out / "pruning.md").read_text()
