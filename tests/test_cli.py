"""The `alseg` command on bad input: one line on stderr, exit code 2, no traceback, and an existing
run folder left exactly as it was."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fast_overrides


def _alseg(tmp_path, *overrides):
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    flags = [o for o in overrides if o.startswith("-")]
    overrides = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, "-m", "alseg.cli", *flags, f"paths.runs={tmp_path / 'runs'}", *fast_overrides(*overrides), *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_one_line_error(res, *fragments):
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("alseg: error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr + res.stdout
    for f in fragments:
        assert f in err[0]


@pytest.fixture
def existing_run(tmp_path):
    """A run folder with content, under the name the bad commands below will use."""
    run = tmp_path / "runs" / "default" / "keep"
    (run / "round_000").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"version": 1, "round": 1}))
    (run / "round_000" / "selection.json").write_text("{}")
    return run


def _coco_overrides(train_ann, train_images):
    return ["dataset=coco", f"dataset.train_ann={train_ann}", f"dataset.train_images={train_images}",
            f"dataset.val_ann={train_ann}", f"dataset.val_images={train_images}", "run_name=keep"]


def _write_coco(tmp_path, data):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


GOOD_IMAGE = {"id": 1, "file_name": "1.png", "width": 8, "height": 8}
GOOD_ANN = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}
CATS = [{"id": 1, "name": "thing"}]


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing_file", ["nope.json: annotation file not found"]),
        ("malformed", ["ann.json: not valid JSON"]),
        ("missing_image", ["1.png: image file missing"]),
        ("degenerate_polygon", ["annotations[0] (id=1): degenerate polygon"]),
        ("unknown_class", ["unknown class name(s) ['zebra']"]),
        ("initial_too_large", ["al.initial (4 images) is larger than the pool (1 images)"]),
    ],
)
def test_bad_data_input(tmp_path, existing_run, case, fragments):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "1.png").write_bytes(b"not really a png")
    extra = []
    if case == "missing_file":
        ann = tmp_path / "nope.json"
    elif case == "malformed":
        ann = _write_coco(tmp_path, '{"images": [')
    else:
        data = {"images": [GOOD_IMAGE], "annotations": [dict(GOOD_ANN)], "categories": CATS}
        if case == "missing_image":
            (tmp_path / "imgs" / "1.png").unlink()
        if case == "degenerate_polygon":
            data["annotations"][0]["segmentation"] = [[0, 0, 4, 4]]
        if case == "unknown_class":
            extra = ["dataset.class_names=[zebra]"]
        ann = _write_coco(tmp_path, data)
    before = _tree_digest(existing_run)
    res = _alseg(tmp_path, *_coco_overrides(ann, tmp_path / "imgs"), *extra)
    _assert_one_line_error(res, *fragments)
    assert _tree_digest(existing_run) == before


@pytest.mark.parametrize(
    "override, fragment",
    [("al.policy=sometimes", "al.policy"), ("al.budget=-3", "budget amount"), ("model.norm=weird", "model.norm")],
)
def test_bad_config_values(tmp_path, override, fragment):
    res = _alseg(tmp_path, override)
    _assert_one_line_error(res, fragment)
    assert not (tmp_path / "runs").exists()


def test_unreadable_image_and_nan_loss_are_one_line_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "1.png").write_bytes(b"not really a png")
    ann = _write_coco(tmp_path, {"images": [GOOD_IMAGE], "annotations": [GOOD_ANN], "categories": CATS})
    res = _alseg(tmp_path, *_coco_overrides(ann, tmp_path / "imgs"), "al.initial=1", "al.rounds=0")
    _assert_one_line_error(res, "1.png: image missing or unreadable")

    res = _alseg(tmp_path, "trainer.schedule.lr=1e12", "trainer.schedule.warmup_iters=0", "trainer.schedule.grad_clip=null",
                 "al.rounds=0")
    _assert_one_line_error(res, "non-finite loss")


def test_multirun_sweeps_seeds_into_separate_resumable_runs(tmp_path):
    res = _alseg(tmp_path, "-m", "seed=0,1", "al.rounds=0")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((p for p in (tmp_path / "runs" / "default").iterdir() if p.is_dir()),
                  key=lambda p: json.loads((p / "results.jsonl").read_text().splitlines()[0])["seed"])
    assert len(runs) == 2 and [json.loads((r / "state.json").read_text())["seed"] for r in runs] == [0, 1]
    sel = [json.loads((r / "round_000/selection.json").read_text())["queries"] for r in runs]
    assert sel[0] != sel[1]  # the seed fixes the selection
    assert (tmp_path / "runs" / "default" / "multirun.yaml").is_file()


# ------------------------------------------------------------------ damaged run folders, failed writes
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-round run made in-process, where `_alseg(..., "run_name=keep")` finds it."""
    from conftest import make_cfg

    from alseg.engine.loop import ActiveLearningLoop

    tmp = tmp_path_factory.mktemp("cli_run")
    ActiveLearningLoop(make_cfg(tmp, "run_name=keep", "al.rounds=1"), tmp / "runs" / "default" / "keep").run()
    return tmp


def _cut(path, keep=0.5):
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _rewrite_annotations(tmp):
    ann = next((tmp / "cache").glob("synthetic-*")) / "train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"][1] += 1
    ann.write_text(json.dumps(data))


@pytest.mark.parametrize("case, damage, fragments", [
    ("state.json garbage", lambda t, r: (r / "state.json").write_text("{{{"), ["state.json: not valid JSON", "move the run folder away"]),
    ("labels.jsonl truncated", lambda t, r: _cut(r / "round_001" / "labels.jsonl", 0.6),
     ["round_001/labels.jsonl: line", "cut short", "to redo the run from round 1"]),
    ("model.pt truncated", lambda t, r: _cut(r / "round_001" / "model.pt"), ["round_001/model.pt: not a readable checkpoint"]),
    ("annotation file rewritten", lambda t, r: _rewrite_annotations(t), ["train.json: the train annotations differ"]),
])
def test_damaged_run_folder_is_one_line_and_left_as_it_was(finished_run, tmp_path, case, damage, fragments):
    import shutil

    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    run = tmp_path / "runs" / "default" / "keep"
    damage(tmp_path, run)
    before = _tree_digest(run)
    res = _alseg(tmp_path, "run_name=keep", "al.rounds=2")
    _assert_one_line_error(res, *fragments)
    assert _tree_digest(run) == before


def test_unwritable_runs_and_cache_folders_are_one_line(tmp_path):
    (tmp_path / "blocker").write_text("a file, not a folder")
    res = _alseg(tmp_path, f"paths.runs={tmp_path / 'blocker'}", "al.rounds=0")
    _assert_one_line_error(res, "blocker", "cannot write (a file is where a folder should be)")
    res = _alseg(tmp_path, f"paths.cache_dir={tmp_path / 'blocker' / 'cache'}", "al.rounds=0")
    _assert_one_line_error(res, "blocker", "a file is where a folder should be")
    assert not (tmp_path / "runs").exists()
