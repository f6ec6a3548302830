"""Every file of a run folder can be damaged, and every write can fail: one line naming the file and
what to do, never a traceback, and nothing already written changed. The data a run started on is
fingerprinted, and strategies' needs are checked before round 0."""

import errno
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alseg import files
from alseg.engine.loop import ActiveLearningLoop
from alseg.errors import AlsegError, ConfigError, DataError
from alseg.strategies.random_sampling import RandomImages

from conftest import as_json, make_cfg


class RandomWithModels(RandomImages):
    """Random images, after asking for a reference model and a two-model ensemble: a run with
    every kind of checkpoint the loop keeps (round_k/model.pt, reference/model.pt, ensemble_1.pt)."""

    name = "random_with_models"
    needs = frozenset({"model", "reference_model", "ensemble"})
    ensemble_size = 2

    def rank(self, ctx, budget, rng):
        assert len(ctx.get("ensemble")) == 2 and ctx.get("reference_model") is not None
        return super().rank(ctx, budget, rng)


class Needs(RandomImages):
    """Random images declaring whatever ``needs`` a test gives it (``strategy.needs=[...]``)."""

    def __init__(self, name=None, needs=()):
        super().__init__(name)
        self.needs = needs if isinstance(needs, str) else frozenset(needs)


WITH_MODELS = (f"strategy._target_={__name__}.RandomWithModels", "al.rounds=1")


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(exc: AlsegError, *fragments):
    msg = str(exc)
    assert "\n" not in msg and len(msg) < 600, msg
    for f in fragments:
        assert f in msg, msg


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 2-round run with every kind of checkpoint (made once for this module)."""
    tmp = tmp_path_factory.mktemp("base")
    ActiveLearningLoop(make_cfg(tmp, *WITH_MODELS), tmp / "run").run()
    return tmp


def _cut(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_state(run, **changes):
    state = json.loads((run / "state.json").read_text())
    for k, v in changes.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    (run / "state.json").write_text(json.dumps(state))


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _insert_line(path: Path, line: str, at: int = 1):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:at] + [line] + lines[at:]))


def _as_version_2_at_trained(run):
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps({**{k: v for k, v in state.items() if k not in ("phase_results", "fingerprint")},
                                                "version": 2, "round": 1, "phase": "trained",
                                                "records": state["records"][:1]}))
    _cut(run / "round_001" / "selection.json")


REDO_1 = "round_001 and every later round folder to redo the run from round 1"
AWAY = "move the run folder away"
DAMAGED = [
    ("state.json truncated", lambda r: _cut(r / "state.json"), ["state.json: not valid JSON", AWAY]),
    ("state.json empty", lambda r: (r / "state.json").write_bytes(b""), ["state.json: empty file", AWAY]),
    ("state.json binary", lambda r: (r / "state.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe"),
     ["state.json: not text", AWAY]),
    ("state.json not an object", lambda r: (r / "state.json").write_text("[1, 2]"),
     ["state.json: not a run state", AWAY]),
    ("state.json unknown phase", lambda r: _edit_state(r, phase="trainedd"), ["'phase' must be one of", AWAY]),
    ("state.json without config", lambda r: _edit_state(r, config=None), ["'config' must be an object"]),
    ("state.json negative round", lambda r: _edit_state(r, round=-1), ["'round' must be an integer >= 0"]),
    ("state.json round beyond its records", lambda r: _edit_state(r, round=1000000),
     ["'round' 1000000 at phase 'start' needs the records of rounds 0-999999; 'records' hold 0-1", AWAY]),
    ("state.json records of a later round lost", lambda r: _edit_state(r, records=json.loads((r / "state.json").read_text())["records"][1:]),
     ["needs the records of rounds 0-1; 'records' hold 1", AWAY]),
    ("state.json round of 10^18", lambda r: _edit_state(r, round=10**18), ["needs the records of rounds 0-999999999999999999"]),
    ("state.json from a newer alseg", lambda r: _edit_state(r, version=99), ["state version 99 is not supported"]),
    ("state.json trained without results", lambda r: _edit_state(r, round=1, phase="trained", phase_results={}),
     ["phase 'trained' without the select result"]),
    ("state.json malformed train result", lambda r: _edit_state(r, round=1, phase="trained", phase_results={
        "select": {"queries": 4, "seconds": 1.0, "analysis": {}}, "train": {"iters": "six"}}),
     ["malformed train result"]),
    ("labels.jsonl cut mid-line", lambda r: _cut(r / "round_001" / "labels.jsonl", 0.7),
     ["round_001/labels.jsonl: line", "cut short", REDO_1]),
    ("labels.jsonl garbage line", lambda r: _insert_line(r / "round_001" / "labels.jsonl", "{not json\n"),
     ["round_001/labels.jsonl: line 2: not valid JSON", REDO_1]),
    ("labels.jsonl array line", lambda r: _insert_line(r / "round_001" / "labels.jsonl", "[1, 2]\n"),
     ["line 2: expected a JSON object"]),
    ("labels.jsonl unknown kind", lambda r: _insert_line(r / "round_001" / "labels.jsonl",
                                                        '{"kind": "polygon", "image_id": 3}\n', 0),
     ["round_001/labels.jsonl: line 1: 'kind' must be one of"]),
    ("labels.jsonl point without coordinates", lambda r: _insert_line(
        r / "round_000" / "labels.jsonl", '{"kind": "point", "image_id": 3, "ann_id": 5}\n'),
     ["round_000/labels.jsonl: line 2: a point label needs", "redo the run from round 0"]),
    ("labels.jsonl missing", lambda r: (r / "round_000" / "labels.jsonl").unlink(),
     ["round_000/labels.jsonl: missing", "redo the run from round 0"]),
    ("model.pt truncated", lambda r: _cut(r / "round_001" / "model.pt"),
     ["round_001/model.pt: not a readable checkpoint", REDO_1]),
    ("model.pt empty", lambda r: (r / "round_001" / "model.pt").write_bytes(b""),
     ["round_001/model.pt: not a readable checkpoint"]),
    ("model.pt one byte flipped", lambda r: _flip_byte(r / "round_001" / "model.pt"),
     ["round_001/model.pt: not a readable checkpoint", REDO_1]),
    ("model.pt of another model", lambda r: torch.save({"model": {"w": torch.zeros(2)}}, r / "round_001" / "model.pt"),
     ["round_001/model.pt: does not fit the model"]),
    ("model.pt not an alseg checkpoint", lambda r: torch.save([1, 2], r / "round_001" / "model.pt"),
     ["round_001/model.pt: not an alseg checkpoint"]),
    ("model.pt missing", lambda r: (r / "round_001" / "model.pt").unlink(), ["round_001/model.pt: missing", REDO_1]),
    ("reference/model.pt truncated", lambda r: _cut(r / "reference" / "model.pt"),
     ["reference/model.pt: not a readable checkpoint", "remove it to train the reference model again"]),
    ("ensemble_1.pt garbage", lambda r: (r / "round_001" / "ensemble_1.pt").write_bytes(b"\0" * 100),
     ["round_001/ensemble_1.pt: not a readable checkpoint", "remove it to train that ensemble member again"]),
    ("a round folder removed out of order", lambda r: shutil.rmtree(r / "round_000"),
     ["round_000: missing while", "round_001 exists"]),
    ("selection.json truncated (version-2 run)", _as_version_2_at_trained,
     ["round_001/selection.json: not valid JSON", REDO_1]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, damage, fragments", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_a_damaged_run_folder_file_is_one_line_and_changes_nothing(base_run, tmp_path, case, damage, fragments):
    run = tmp_path / "run"
    shutil.copytree(base_run / "run", run)
    damage(run)
    before = _digest(run)
    with pytest.raises(AlsegError) as info:
        ActiveLearningLoop(make_cfg(base_run, *WITH_MODELS[:-1], "al.rounds=2"), run).run()
    _one_line_error(info.value, *fragments)
    assert _digest(run) == before


@pytest.mark.slow
def test_removed_last_rounds_are_redone_with_the_same_results(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run / "run", run)
    shutil.rmtree(run / "round_001")
    records = ActiveLearningLoop(make_cfg(base_run, *WITH_MODELS), run).run()
    assert as_json(records) == as_json(json.loads((base_run / "run" / "state.json").read_text())["records"])
    for name in ("results.jsonl", "round_001/labels.jsonl", "round_001/metrics.json"):
        assert (run / name).read_text() == (base_run / "run" / name).read_text()


@pytest.mark.slow
def test_a_damaged_initial_run_source_is_named_before_anything_is_written(base_run, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(base_run / "run", source)
    overrides = (*WITH_MODELS[:-1], "al.rounds=1", f"al.initial_run={source}")
    cases = [("state.json", lambda p: _cut(p), "state.json: not a readable run state"),
             ("round_000/model.pt", lambda p: _cut(p), "round_000/model.pt: not a readable checkpoint"),
             ("round_000/labels.jsonl", lambda p: _insert_line(p, "{oops\n"), "round_000/labels.jsonl: line 2"),
             ("round_000/selection.json", lambda p: p.write_text('{"queries": 3}'), "round_000/selection.json: not a selection"),
             ("round_000/metrics.json", lambda p: _cut(p), "round_000/metrics.json: not valid JSON"),
             ("round_000/eval.json", lambda p: p.write_text("[1, 2]"), "round_000/eval.json: ")]
    for name, damage, fragment in cases:
        saved = (source / name).read_bytes()
        damage(source / name)
        before = _digest(source)
        with pytest.raises(ConfigError) as info:
            ActiveLearningLoop(make_cfg(base_run, *overrides), tmp_path / "new").run()
        _one_line_error(info.value, "al.initial_run: ", fragment)
        assert _digest(source) == before and not (tmp_path / "new").exists()
        (source / name).write_bytes(saved)


# ------------------------------------------------------------------------------- data fingerprint
@pytest.fixture
def small_run(tmp_path):
    run = tmp_path / "run"
    ActiveLearningLoop(make_cfg(tmp_path, "al.rounds=0"), run).run()
    root = next((tmp_path / "cache").glob("synthetic-*"))
    return tmp_path, run, root


@pytest.mark.slow
def test_resuming_on_a_rewritten_annotation_file_is_refused(small_run):
    tmp, run, root = small_run
    ann = json.loads((root / "train.json").read_text())
    ann["annotations"][0]["bbox"][0] += 1  # same path, same images, one box moved by a pixel
    (root / "train.json").write_text(json.dumps(ann))
    before = _digest(run)
    with pytest.raises(DataError) as info:
        ActiveLearningLoop(make_cfg(tmp, "al.rounds=1"), run).run()
    _one_line_error(info.value, f"{root / 'train.json'}: the train annotations differ from those the run started on",
                    "restore the data")
    assert _digest(run) == before


@pytest.mark.slow
def test_resuming_on_a_replaced_image_is_refused(small_run):
    tmp, run, root = small_run
    val = json.loads((root / "val.json").read_text())
    image = root / "images" / val["images"][0]["file_name"]
    image.write_bytes(image.read_bytes() + b"\0")  # another file of another size
    before = _digest(run)
    with pytest.raises(DataError) as info:
        ActiveLearningLoop(make_cfg(tmp, "al.rounds=1"), run).run()
    _one_line_error(info.value, f"{root / 'images'}: the val images", "differ from those the run started on")
    assert _digest(run) == before


@pytest.mark.slow
def test_the_fingerprint_hashes_the_annotation_bytes_and_the_image_list(small_run):
    tmp, run, root = small_run
    fp = json.loads((run / "state.json").read_text())["fingerprint"]
    assert fp["train"]["annotations_sha256"] == hashlib.sha256((root / "train.json").read_bytes()).hexdigest()
    train = json.loads((root / "train.json").read_text())["images"]
    listing = "".join(f"{im['file_name']}\t{(root / 'images' / im['file_name']).stat().st_size}\n"
                      for im in sorted(train, key=lambda im: im["id"]))
    assert fp["train"]["image_list_sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert fp["train"]["images"] == 24 and fp["val"]["images"] == 8


# ------------------------------------------------------------------------------- failed writes
@pytest.mark.slow
def test_a_full_disk_leaves_the_run_folder_as_it_was(small_run, monkeypatch):
    tmp, run, _ = small_run
    before = _digest(run)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(files.WriteError) as info:
        ActiveLearningLoop(make_cfg(tmp, "al.rounds=1"), run).run()
    _one_line_error(info.value, f"{run / 'config.yaml'}: cannot write (No space left on device)", "free space")
    assert _digest(run) == before  # the old files whole, no temporary file left


def test_failed_writes_name_the_file_and_keep_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "out" / "state.json"
    files.atomic_write_json(target, {"a": 1})

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.raises(files.WriteError, match=r"out/state.json: cannot write \(Permission denied\)"):
        files.atomic_write_json(target, {"a": 2})
    with pytest.raises(files.WriteError, match=r"out/model.pt: cannot write \(Permission denied\)"):
        files.atomic_torch_save({"model": {}}, target.parent / "model.pt")
    monkeypatch.undo()
    with pytest.raises(files.WriteError, match=r"out/state.json: cannot write \(a file is where a folder should be\)"):
        files.atomic_write_json(target / "x.json", {})  # a file where a folder should be
    assert json.loads(target.read_text()) == {"a": 1} and sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_written_files_get_the_umask_mode_or_keep_the_destinations(tmp_path):
    """mkstemp makes 0600 files: every writer (atomic writes, staged outputs, the TFDP score cache,
    tools/voc_to_coco.py) gives a new file open()'s mode and a replaced file its old mode."""
    from alseg.tfdp.scoring import ScoreResult, ShapeStats, save_cached

    umask = os.umask(0o027)
    try:
        new, kept = tmp_path / "new.json", tmp_path / "kept.json"
        files.atomic_write_json(kept, {})
        os.chmod(kept, 0o604)
        files.atomic_write_json(new, {"a": 1})
        files.atomic_write_json(kept, {"a": 2})
        staged = files.StagedFiles()
        staged.write(tmp_path / "staged.csv", lambda f: f.write("x\n"))
        staged.commit()
        empty = np.zeros(0)
        result = ScoreResult(variant="scs", contour="largest",
                             stats=ShapeStats(*(np.zeros(0, np.int64),) * 3, empty, empty, np.zeros(0, np.int8),
                                              np.zeros(0, bool)),
                             instance_scores=empty, image_ids=np.zeros(0, np.int64), image_scores=empty,
                             problems={}, n_crowd=0, elapsed_s=0.0)
        save_cached(tmp_path / "cache.npz", result, "0" * 40)
        voc_out = tmp_path / "voc.json"
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
        try:
            from voc_to_coco import write_json_atomic
        finally:
            sys.path.pop(0)
        write_json_atomic({}, voc_out)
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"new.json": 0o640, "kept.json": 0o604, "staged.csv": 0o640, "cache.npz": 0o640,
                     "voc.json": 0o640}


def test_a_file_system_that_refuses_chmod_still_gets_the_file(tmp_path, monkeypatch):
    def refused(fd, mode):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "fchmod", refused)
    files.atomic_write_json(tmp_path / "state.json", {"a": 1})
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]

def test_readers_name_the_file_and_the_fault(tmp_path):
    p = tmp_path / "f.json"
    p.write_text('{"a": [1, 2')
    with pytest.raises(files.DamagedFileError, match=r"f.json: not valid JSON \(line 1, column 12"):
        files.read_json(p)
    p.write_text('"text"')
    with pytest.raises(files.DamagedFileError, match="expected a JSON object, found a string"):
        files.read_json(p, dict)
    p.write_text('{"a": 1}\n{"b": 2}')  # the last line lost its end: the file was cut there
    with pytest.raises(files.DamagedFileError, match="line 2: cut short"):
        files.read_jsonl(p)
    p.write_text('{"a": 1}\n\n{"b": 2}\n{"b": 3}\n')  # a blank line is skipped, line numbers still count it
    assert files.read_jsonl(p) == [{"a": 1}, {"b": 2}, {"b": 3}]
    with pytest.raises(files.DamagedFileError, match="f.json: line 4: b is 3"):
        files.read_jsonl(p, lambda v: "b is 3" if v.get("b") == 3 else None)
    p.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(files.DamagedFileError, match=r"line 2: not text \(byte 16 is not UTF-8\)"):
        files.read_jsonl(p)
    with pytest.raises(files.DamagedFileError, match="nothing.pt: missing"):
        files.load_checkpoint(tmp_path / "nothing.pt")


# ------------------------------------------------------------------------------- strategies' needs
@pytest.mark.parametrize("overrides, fragment", [
    (("strategy@al.initial_strategy=mask_entropy",),
     "al.initial_strategy: 'mask_entropy' needs the previous round's model (model), which round 0 does not have"),
    (("strategy@al.initial_strategy=taudis",), "al.initial_strategy: 'taudis' needs the previous round's model's predictions"),
    (("strategy@al.initial_strategy=coreset",), "al.initial_strategy: 'coreset' needs"),
    ((f"strategy._target_={__name__}.Needs", "+strategy.needs=[pool_predictions,mask_iou_head]"),
     "strategy: 'random' needs a model with a mask-IoU head (mask_iou_head); use a model with one"),
    ((f"strategy._target_={__name__}.Needs", "+strategy.needs=[point_supervision]"),
     "strategy: 'random' needs a model trained with point supervision (point_supervision); use model.point_supervision=true"),
    ((f"strategy._target_={__name__}.Needs", "+strategy.needs=[pool_predictionz]"),
     "strategy: 'random' needs 'pool_predictionz', which the loop does not provide; known needs:"),
    ((f"strategy._target_={__name__}.Needs", "+strategy.needs=model"), "declares needs 'model'; expected a set of names"),
])
def test_needs_are_checked_before_round_0(tmp_path, overrides, fragment):
    with pytest.raises(ConfigError) as info:
        ActiveLearningLoop(make_cfg(tmp_path, *overrides), tmp_path / "run").run()
    _one_line_error(info.value, fragment)
    assert not (tmp_path / "run").exists()


def test_needs_met_by_the_model_or_unused_pass(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ActiveLearningLoop, "_load_or_create_state", lambda self, *a: calls.append(1) or 1 / 0)
    ok = [("model=maskrcnn_r18_small_iou", "model.min_size=64", "model.max_size=64", f"strategy._target_={__name__}.Needs",
           "+strategy.needs=[pool_predictions,mask_iou_head]"),
          ("model=maskrcnn_r18_small_points", "model.min_size=64", "model.max_size=64",
           "strategy@al.initial_strategy=apis_initial", f"strategy._target_={__name__}.Needs", "+strategy.needs=[point_supervision,model]"),
          (f"strategy._target_={__name__}.Needs", "+strategy.needs=[mask_iou_head]", "al.rounds=0"),  # never used
          ("strategy@al.initial_strategy=entropy_reference",)]
    for overrides in ok:
        with pytest.raises(ZeroDivisionError):  # got past the checks, to the run state
            ActiveLearningLoop(make_cfg(tmp_path, *overrides), tmp_path / "run").run()
    assert len(calls) == len(ok)


# ------------------------------------------------------------------------------- skipped annotations
@pytest.mark.slow
def test_skipped_annotations_are_counted_in_every_record(tmp_path, monkeypatch):
    from alseg.data import build as data_build

    real = data_build.synthetic

    def with_skips(*a, **k):
        splits = real(*a, **k)
        splits.train.skipped = {"degenerate polygon": 2, "rle counts": 1}
        splits.val.skipped = {"degenerate polygon": 1}
        return splits

    monkeypatch.setattr(data_build, "synthetic", with_skips)
    records = ActiveLearningLoop(make_cfg(tmp_path, "al.rounds=0"), tmp_path / "run").run()
    assert {k: v for k, v in records[0].items() if k.startswith("data/")} == {
        "data/skipped_annotations": 4, "data/skipped_annotations/degenerate polygon": 3,
        "data/skipped_annotations/rle counts": 1}
    assert "invalid annotations skipped (dataset.invalid_annotations=skip): 4" in (tmp_path / "run" / "run.log").read_text()


def test_results_files_follow_the_resumed_records(tmp_path):
    """A run redoing removed rounds starts from fewer records than results.jsonl holds: the file
    is brought back to them at once, not when the next round ends."""
    from alseg.writers.files import CsvWriter, JsonlWriter

    recs = [{"round": k, "mask_AP": 0.1 * k} for k in range(3)]
    for writer in (JsonlWriter(), CsvWriter()):
        writer.open(tmp_path, {}, recs)
        writer.open(tmp_path, {}, recs[:1])
    assert (tmp_path / "results.jsonl").read_text() == '{"mask_AP": 0.0, "round": 0}\n'
    assert (tmp_path / "results.csv").read_text().splitlines() == ["round,mask_AP", "0,0.0"]


@pytest.mark.parametrize("text, fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"round": ' + "9" * 5000 + "}", "JSON that cannot be read"),
])
def test_run_folder_json_that_python_cannot_build_is_one_line(tmp_path, text, fragment):
    """Well-formed JSON that json cannot turn into objects (nesting past the recursion limit, an
    integer over Python's digit limit) in a run folder's JSON or JSON-lines file: DamagedFileError."""
    (tmp_path / "state.json").write_text(text)
    (tmp_path / "labels.jsonl").write_text('{"kind": "image", "image_id": 1}\n' + text + "\n")
    with pytest.raises(files.DamagedFileError) as info:
        files.read_json(tmp_path / "state.json")
    _one_line_error(info.value, "state.json: ", fragment)
    with pytest.raises(files.DamagedFileError) as info:
        files.read_jsonl(tmp_path / "labels.jsonl")
    _one_line_error(info.value, "labels.jsonl: line 2: ", fragment)
