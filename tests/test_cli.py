"""The `alseg` command on bad input: one line on stderr, exit code 2, no traceback, and an existing
run folder left exactly as it was."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import checkout_env, fast_overrides


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
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "1.png")  # image headers are checked up front
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
    [("al.policy=sometimes", "al.policy"), ("al.budget=-3", "al.budget: must be an integer >= 1, got -3"),
     ("model.norm=weird", "model.norm"),
     # Numbers of the run itself: the type and range checked up front, the key named (these once raised a
     # traceback, or ran with another value: seed=1.5 as seed 1, al.initial=1.5 as 1 image, al.budget=nan
     # as the whole pool).
     ("al.rounds=abc", "al.rounds: must be an integer >= 0, got 'abc'"), ("al.rounds=null", "al.rounds: must be"),
     ("al.rounds=1.5", "al.rounds: must be an integer >= 0, got 1.5"),
     ("seed=1.5", "seed: must be an integer in [0, 4294967295], got 1.5"), ("seed=true", "seed: must be an integer"),
     ("al.initial=1.5", "al.initial: must be an image count >= 1 or a fraction of the pool in (0, 1], got 1.5"),
     ("al.initial=nan", "al.initial: must be an image count"), ("al.initial=inf", "al.initial: must be an image count"),
     ("al.budget=nan", "al.budget: must be an integer >= 1, got nan"), ("al.budget=inf", "al.budget: must be an integer"),
     ("al.budget_unit=foo", "al.budget_unit: must be one of images"),
     ("al.budget_unit=seconds al.budget=nan", "al.budget: must be a number > 0, got nan"),
     ("distributed.timeout_minutes=soon", "distributed.timeout_minutes must be a number of minutes > 0, got 'soon'"),
     ("trainer.schedule.sync_bn=maybe", "trainer.schedule.sync_bn must be true or false")],
)
def test_bad_config_values(tmp_path, override, fragment):
    res = _alseg(tmp_path, *override.split())
    _assert_one_line_error(res, fragment)
    assert not (tmp_path / "runs").exists()


def test_unreadable_image_and_nan_loss_are_one_line_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "1.png").write_bytes(b"not really a png")
    ann = _write_coco(tmp_path, {"images": [GOOD_IMAGE], "annotations": [GOOD_ANN], "categories": CATS})
    res = _alseg(tmp_path, *_coco_overrides(ann, tmp_path / "imgs"), "al.initial=1", "al.rounds=0")
    _assert_one_line_error(res, "1.png: image unreadable: not an image file")

    res = _alseg(tmp_path, "trainer.schedule.lr=1e12", "trainer.schedule.warmup_iters=0", "trainer.schedule.grad_clip=null",
                 "al.rounds=0")
    _assert_one_line_error(res, "non-finite loss")


@pytest.mark.slow
def test_multirun_sweeps_seeds_into_separate_resumable_runs(tmp_path):
    res = _alseg(tmp_path, "-m", "seed=0,1", "al.rounds=0")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((p for p in (tmp_path / "runs" / "default").iterdir() if p.is_dir()),
                  key=lambda p: json.loads((p / "results.jsonl").read_text().splitlines()[0])["seed"])
    assert len(runs) == 2 and [json.loads((r / "state.json").read_text())["seed"] for r in runs] == [0, 1]
    sel = [json.loads((r / "round_000/selection.json").read_text())["queries"] for r in runs]
    assert sel[0] != sel[1]  # the seed fixes the selection
    assert (tmp_path / "runs" / "default" / "multirun.yaml").is_file()


# ------------------------------------------------------------------------------------ images (issue 11, section 3)
CASE11 = Path(__file__).parent / "data" / "bad_inputs" / "case11"


def _case11_overrides():
    return ["dataset=coco", f"dataset.train_ann={CASE11 / 'train.json'}", f"dataset.train_images={CASE11 / 'images'}",
            f"dataset.val_ann={CASE11 / 'val.json'}", f"dataset.val_images={CASE11 / 'images'}", "run_name=keep"]


def _write_image_case(tmp_path, case):
    """One 48x32 JPEG (stored frame) and its annotation file, damaged as `case` says."""
    import io

    import numpy as np
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    exif = Image.Exif()
    if case == "rotated":
        exif[0x0112] = 6  # displayed 32x48, but annotated below in the stored frame 48x32
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)  # so half the file is pixels
    Image.fromarray(noise).save(buf, "JPEG", exif=exif.tobytes())
    data = buf.getvalue()
    (tmp_path / "imgs" / "1.jpg").write_bytes(data[: len(data) // 2] if case == "truncated" else data)
    image = {"id": 1, "file_name": "1.jpg", "width": 48, "height": 32}
    ann = dict(GOOD_ANN, bbox=[2, 2, 10, 10], segmentation=[[2, 2, 12, 2, 12, 12, 2, 12]])
    return _write_coco(tmp_path, {"images": [image], "annotations": [ann], "categories": CATS})


@pytest.mark.parametrize(
    "case, extra, fragments",
    [
        ("case11", ["dataset.exif_orientation=error"],
         ["train_0.jpg: carries EXIF orientation 3 (rotated 180 degrees) and dataset.exif_orientation=error refuses"]),
        ("rotated", [], ["1.jpg: image is 32x48 but the annotation file says 48x32", "EXIF orientation 6",
                         "set dataset.exif_orientation=ignore"]),
        ("truncated", [], ["1.jpg: image cannot be decoded completely", "truncated", "(image_id=1;"]),
        ("bad_policy", ["dataset.exif_orientation=sideways"],
         ["dataset.exif_orientation: must be one of apply, ignore, error, got 'sideways'"]),
    ],
)
def test_bad_image_input_is_one_line_before_training(tmp_path, existing_run, case, extra, fragments):
    if case == "case11":
        overrides = _case11_overrides()
    else:
        ann = _write_image_case(tmp_path, "plain" if case == "bad_policy" else case)
        overrides = _coco_overrides(ann, tmp_path / "imgs")
    before = _tree_digest(existing_run)
    res = _alseg(tmp_path, *overrides, *extra)
    _assert_one_line_error(res, *fragments)
    assert _tree_digest(existing_run) == before


def test_case11_default_reads_as_displayed_and_says_so(tmp_path, existing_run):
    # al.initial larger than the pool stops the run after the data check, before anything is written.
    res = _alseg(tmp_path, *_case11_overrides(), "al.initial=100")
    _assert_one_line_error(res, "al.initial (100 images) is larger than the pool")
    out = res.stdout + res.stderr
    assert "12 of 12 images carry an EXIF orientation tag" in out and "4 of 4 images" in out
    assert "dataset.exif_orientation=apply" in out and "set dataset.exif_orientation=ignore" in out
    res = _alseg(tmp_path, *_case11_overrides(), "al.initial=100", "dataset.exif_orientation=ignore")
    _assert_one_line_error(res, "al.initial (100 images) is larger than the pool")
    out = res.stdout + res.stderr
    assert "leaves their size unchanged" not in out
    assert "4 of 4 images carry an EXIF orientation tag; dataset.exif_orientation=ignore reads them in the stored" in out


# --------------------------------------------------------------------------------------------------
# Annotations are validated up front (every split, crowd regions included): one line naming the
# file, the annotation and the reason, before the run folder is touched.

BAD_INPUTS = Path(__file__).parent / "data" / "bad_inputs"


def _case_overrides(case, *extra):
    d = BAD_INPUTS / case
    return ["dataset=coco", f"dataset.train_ann={d / 'train.json'}", f"dataset.train_images={d / 'images'}",
            f"dataset.val_ann={d / 'val.json'}", f"dataset.val_images={d / 'images'}", "run_name=keep", *extra]


def test_case08_wrong_rle_counts_is_a_one_line_error_before_anything_is_built(tmp_path, existing_run):
    before = _tree_digest(existing_run)
    res = _alseg(tmp_path, *_case_overrides("case08"))
    _assert_one_line_error(res, f"{BAD_INPUTS / 'case08' / 'train.json'}: annotations[0] (id=10001): RLE counts add up "
                                "to 150 pixels, not height x width = 64 x 64 = 4096",
                           "dataset.invalid_annotations=skip")
    assert _tree_digest(existing_run) == before


@pytest.mark.slow
def test_case08_skip_drops_and_counts_then_runs(tmp_path):
    res = _alseg(tmp_path, *_case_overrides("case08", "dataset.invalid_annotations=skip", "al.rounds=0"))
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "runs" / "default" / "keep" / "run.log").read_text() + res.stderr + res.stdout
    assert "train.json: skipped 1 invalid annotations of 16 (invalid_rle=1)" in log
    assert "val.json: skipped 1 invalid annotations of 5 (invalid_rle=1)" in log


@pytest.mark.slow
def test_case03_val_keeps_its_empty_images(tmp_path):
    """case03: the pool drops its 6 empty images (and says so); val keeps all 4 images, whose objects
    are all small, so APm and APl are missing (null), not 0."""
    res = _alseg(tmp_path, *_case_overrides("case03", "al.rounds=0"))
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "default" / "keep"
    log = res.stderr + res.stdout
    assert "train.json: drop_empty: dropped 6 of 12 images" in log and "val.json: drop_empty" not in log
    [record] = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert record["pool_images"] == 6
    assert record["box_APm"] is None and record["box_APl"] is None and record["mask_APl"] is None
    assert isinstance(record["box_APs"], float) and isinstance(record["mask_AP"], float)


def _bad_coco(tmp_path, case):
    good = dict(GOOD_ANN, iscrowd=0, area=16.0)
    images = [dict(GOOD_IMAGE)]
    anns = [good]
    if case == "crowd_empty_polygon":
        anns.append(dict(good, id=2, iscrowd=1, segmentation=[]))
    elif case == "crowd_two_points":
        anns.append(dict(good, id=2, iscrowd=1, segmentation=[[0, 0, 4, 4]]))
    elif case == "coordinates_1e8":
        anns.append(dict(good, id=2, segmentation=[[0, 0, 1e8, 0, 1e8, 1e8]]))
    elif case == "rle_size_mismatch":
        anns.append(dict(good, id=2, segmentation={"counts": [400], "size": [20, 20]}))
    elif case == "bbox_zero_height":
        anns.append(dict(good, id=2, bbox=[0, 0, 4, 0]))
    elif case == "duplicate_id":
        anns.append(dict(good))
    elif case == "iscrowd_2":
        anns.append(dict(good, id=2, iscrowd=2))
    elif case == "unknown_image_under_skip":
        anns.append(dict(good, id=2, image_id=5))
    elif case == "image_width_0":
        images[0]["width"] = 0
    return _write_coco(tmp_path, {"images": images, "annotations": anns, "categories": CATS})


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("crowd_empty_polygon", ["ann.json: annotations[1] (id=2): empty polygon list"]),
        ("crowd_two_points", ["annotations[1] (id=2): degenerate polygon: no part with 3 points or more"]),
        ("coordinates_1e8", ["annotations[1] (id=2): polygon coordinates far outside the 8x8 image"]),
        ("rle_size_mismatch", ["annotations[1] (id=2): RLE size [20, 20] differs from image size [8, 8]"]),
        ("bbox_zero_height", ["annotations[1] (id=2): invalid bbox [0, 0, 4, 0]"]),
        ("duplicate_id", ["annotations[1] (id=1): duplicate annotation id 1 (also annotations[0])"]),
        ("iscrowd_2", ["annotations[1] (id=2): 'iscrowd' must be 0 or 1, got 2"]),
        ("unknown_image_under_skip", ["annotations[1] (id=2): unknown image_id 5", "right annotation file"]),
        ("image_width_0", ["ann.json: images[0] (id=1): 'width' and 'height' must be positive integers of at most 100000, got 0 x 8"]),
    ],
)
def test_malformed_annotations_are_one_line_errors(tmp_path, existing_run, case, fragments):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "1.png").write_bytes(b"not really a png")
    ann = _bad_coco(tmp_path, case)
    extra = ["dataset.invalid_annotations=skip"] if case == "unknown_image_under_skip" else []
    before = _tree_digest(existing_run)
    res = _alseg(tmp_path, *_coco_overrides(ann, tmp_path / "imgs"), *extra)
    _assert_one_line_error(res, *fragments)
    assert _tree_digest(existing_run) == before


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["strategy=mask_entropy", "strategy.score_threshold=abc"],
         "alseg: error: strategy.score_threshold: must be a number in [0, 1], got 'abc' (str)"),
        (["strategy@al.initial_strategy=mask_entropy", "al.initial_strategy.score_threshold=2"],
         "alseg: error: al.initial_strategy.score_threshold: must be a number in [0, 1], got 2"),
        (["strategy=apis", "strategy.models=2.5"], "alseg: error: strategy.models: must be an integer >= 1, got 2.5"),
        (["strategy=iou_guided", "strategy.betta=0.2"], "alseg: error: strategy.betta: no such key in the config"),
        (["strategy=iou_guided", "+strategy.betta=0.2"],
         "alseg: error: strategy.betta: not a parameter of alseg.strategies.iou_guided.IoUGuidedImages"),
        (["strategy=nope"], "alseg: error: In 'config': Could not find 'strategy/nope'; Available options in 'strategy': "),
        (["al.initial_run=runs/default/seed=1,al.rounds=2"],
         "alseg: error: al.initial_run=runs/default/seed=1,al.rounds=2: not a valid override"),
    ],
)
def test_bad_strategy_parameter_or_key_fails_before_round_0(tmp_path, existing_run, overrides, fragment):
    """Checked when the strategies are built, before round 0 trains (it used to fail at round 1's
    selection with a numpy traceback); Hydra's own errors are one line too. The run is untouched."""
    before = _tree_digest(existing_run)
    res = _alseg(tmp_path, *overrides, "run_name=keep")
    _assert_one_line_error(res, fragment)
    assert _tree_digest(existing_run) == before
    assert sorted(p.name for p in existing_run.parent.iterdir()) == ["keep"]


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


@pytest.mark.slow
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


def test_help_says_what_alseg_is_and_shows_first_commands(tmp_path):
    res = subprocess.run([sys.executable, "-m", "alseg.cli", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=checkout_env())
    assert res.returncode == 0, res.stderr
    head = res.stdout.split("== Configuration groups ==")[0]
    assert head.startswith("alseg: active learning and data selection for instance segmentation")
    for command in ("alseg experiment=tiny_coco_smoke", "alseg -m experiment=random_synthetic seed=0,1,2",
                    "alseg-prune --help"):
        assert command in head
    assert "powered by Hydra" not in res.stdout
