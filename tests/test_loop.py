"""End-to-end runs of the loop on tiny synthetic data: AP is computed, results are resumable."""

import json
import logging
import re
import math
from pathlib import Path

import pytest

from alseg.engine import trainer as trainer_mod
from alseg.engine.loop import ActiveLearningLoop
from alseg.engine.state import STATE_VERSION
from alseg.errors import ConfigError, DataError
from conftest import as_json


def _selections(run_dir):
    return [json.loads((run_dir / f"round_{k:03d}" / "selection.json").read_text())["queries"] for k in range(3)]


@pytest.mark.slow
def test_tiny_run_computes_ap_and_writes_the_run_folder(cfg_factory, tmp_path):
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg_factory(), run).run()
    assert [r["round"] for r in records] == [0, 1, 2]
    assert [r["labeled_images"] for r in records] == [4, 8, 12]
    for r in records:
        for key in ("mask_AP", "mask_AP50", "box_AP", "mean_dice", "mean_greedy_iou"):
            assert math.isfinite(r[key]) and 0.0 <= r[key] <= 1.0
    # Seconds charged equal the oracle's cost of what was selected.
    sel_seconds = sum(json.loads((run / f"round_{k:03d}/selection.json").read_text())["seconds"] for k in range(3))
    assert records[-1]["seconds"] == pytest.approx(sel_seconds)
    lines = (run / "results.jsonl").read_text().splitlines()
    assert [json.loads(l)["round"] for l in lines] == [0, 1, 2]
    state = json.loads((run / "state.json").read_text())
    assert state["round"] == 3 and state["phase"] == "start" and "ledger" not in state
    # Each round's labels are in its own file: 4 images a round, with every instance mask.
    labels = [[json.loads(l) for l in (run / f"round_{k:03d}" / "labels.jsonl").read_text().splitlines()] for k in range(3)]
    assert [len({e["image_id"] for e in lab if e["kind"] == "image"}) for lab in labels] == [4, 4, 4]
    assert sum(e["seconds"] for lab in labels for e in lab) == pytest.approx(records[-1]["seconds"])
    assert (run / "config.yaml").is_file() and (run / "ap_vs_hours.png").is_file() and (run / "results.csv").is_file()
    assert all((run / f"round_{k:03d}" / "model.pt").is_file() for k in range(3))
    # Round 0 trains on trainer.schedule (6 iterations), fine-tuning rounds on trainer.finetune (4).
    assert [r["train/iters"] for r in records] == [6, 4, 4]
    # Selections never repeat an image.
    ids = [q["image_id"] for sel in _selections(run) for q in sel]
    assert len(ids) == len(set(ids)) == 12
    assert not any("pruning_rate" in r for r in records)  # an active-learning run, not a pruning run
    log = (run / "run.log").read_text()
    # run.log follows the training (progress lines with losses, lr, speed, ETA), selection and evaluation.
    assert "round 0 train: 6 iterations, batch 2, base lr 0.02" in log
    assert re.search(r"round 0 train: iter 6/6  loss [0-9.]+ \(loss_classifier [0-9.]+, .*\)  lr \S+  [0-9.]+ it/s  done", log)
    assert "round 2 train: iter 4/4" in log and "round 1: random selected 4 queries" in log
    assert re.search(r"round 2: evaluated on 8 val images in [0-9.]+ s: mask AP [0-9.]+", log)
    assert "training from scratch" not in log  # synthetic shapes learn from scratch


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_interrupted_run_resumes_with_identical_selections(cfg_factory, tmp_path, monkeypatch):
    full = tmp_path / "full"
    ActiveLearningLoop(cfg_factory("strategy=random"), full).run()

    # Kill the second run while it trains round 1 (after round 1's selection was committed).
    part = tmp_path / "part"
    real_train = trainer_mod.Trainer.train
    calls = {"n": 0}

    def dying_train(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Killed()
        return real_train(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train", dying_train)
    with pytest.raises(_Killed):
        ActiveLearningLoop(cfg_factory("strategy=random"), part).run()
    state = json.loads((part / "state.json").read_text())
    assert (state["round"], state["phase"]) == (1, "selected")
    monkeypatch.setattr(trainer_mod.Trainer, "train", real_train)

    records = ActiveLearningLoop(cfg_factory("strategy=random"), part).run()
    assert _selections(part) == _selections(full)
    full_records = [json.loads(l) for l in (full / "results.jsonl").read_text().splitlines()]
    assert [r["labeled_images"] for r in records] == [r["labeled_images"] for r in full_records]
    # Training is deterministic on CPU, so the resumed run reaches the same metrics.
    assert records[-1]["mask_AP"] == pytest.approx(full_records[-1]["mask_AP"], abs=1e-6)


@pytest.mark.slow
def test_more_rounds_extend_a_finished_run_and_other_changes_are_refused(cfg_factory, tmp_path):
    run = tmp_path / "run"
    ActiveLearningLoop(cfg_factory("al.rounds=1"), run).run()
    records = ActiveLearningLoop(cfg_factory("al.rounds=2"), run).run()
    assert [r["round"] for r in records] == [0, 1, 2]
    before = (run / "state.json").read_text()
    with pytest.raises(ConfigError, match="different config .*trainer.schedule.lr"):
        ActiveLearningLoop(cfg_factory("trainer.schedule.lr=0.5"), run).run()
    assert (run / "state.json").read_text() == before


@pytest.mark.parametrize(
    "override, match",
    [
        ("al.initial=100", r"al.initial \(100 images\) is larger than the pool \(24 images\)"),
        ("al.budget=30", "al.budget"),
        ("al.rounds=10", "exceeds the pool of 24 images"),
        ("al.policy=sometimes", "al.policy"),
        ("al.budget_unit=hours", "al.budget_unit: must be one of images"),
        ("trainer.schedule.lr=-1", "trainer.schedule.lr"),
        ("model.backbone=vgg", "model.backbone"),
        ("model.anchor_sizes=[8,16]", "model.anchor_sizes"),
        ("dataset.num_classes=9", "num_classes"),
    ],
)
def test_bad_config_values_fail_before_touching_the_run_folder(cfg_factory, tmp_path, override, match):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        ActiveLearningLoop(cfg_factory(override), run).run()
    assert not run.exists()


@pytest.mark.slow
def test_reset_policy_and_seconds_budget(cfg_factory, tmp_path):
    records = ActiveLearningLoop(cfg_factory("al.policy=reset", "al.budget_unit=seconds", "al.budget=600",
                                             "al.rounds=1"), tmp_path / "r").run()
    spent = records[1]["seconds"] - records[0]["seconds"]
    assert 0 < spent <= 600


@pytest.mark.slow
@pytest.mark.parametrize("initial", ["tfdp", "entropy_reference"])
def test_pruning_run_keeps_a_fraction_chosen_once(cfg_factory, tmp_path, initial):
    run = tmp_path / "prune"
    cfg = cfg_factory(f"strategy@al.initial_strategy={initial}", "al.rounds=0", "al.initial=0.5")
    records = ActiveLearningLoop(cfg, run).run()
    assert len(records) == 1
    r = records[0]
    assert r["initial_strategy"] == initial and r["labeled_images"] == 12 and r["pruning_rate"] == pytest.approx(0.5)
    sel = json.loads((run / "round_000" / "selection.json").read_text())
    scores = [q["score"] for q in sel["queries"]]
    assert scores == sorted(scores, reverse=True)  # the kept images are the best-scored ones
    assert (run / "reference" / "model.pt").is_file() == (initial == "entropy_reference")


@pytest.mark.slow
def test_reference_run_lends_its_reference_model_to_another_pruning_rate(cfg_factory, tmp_path, caplog):
    """TFDP's entropy baseline at a second pruning rate takes the first run's reference model
    (al.reference_run): copied, not trained again; the same kept images as training it anew."""
    first = tmp_path / "keep50"
    ActiveLearningLoop(cfg_factory("strategy@al.initial_strategy=entropy_reference", "al.rounds=0", "al.initial=0.5"),
                       first).run()
    caplog.set_level(logging.INFO)
    caplog.clear()
    second = tmp_path / "keep25"
    ActiveLearningLoop(cfg_factory("strategy@al.initial_strategy=entropy_reference", "al.rounds=0", "al.initial=0.25",
                                   f"al.reference_run={first}"), second).run()
    assert (second / "reference" / "model.pt").read_bytes() == (first / "reference" / "model.pt").read_bytes()
    assert "reference model taken from" in caplog.text and "training the reference model" not in caplog.text
    alone = tmp_path / "alone"
    ActiveLearningLoop(cfg_factory("strategy@al.initial_strategy=entropy_reference", "al.rounds=0", "al.initial=0.25"),
                       alone).run()
    assert (second / "round_000" / "selection.json").read_text() == (alone / "round_000" / "selection.json").read_text()
    with pytest.raises(ConfigError, match=r"al.reference_run: .* another config \(differs at: seed\)"):
        ActiveLearningLoop(cfg_factory("strategy@al.initial_strategy=entropy_reference", "al.rounds=0",
                                       "al.initial=0.25", "seed=1", f"al.reference_run={first}"), tmp_path / "s1").run()
    assert not (tmp_path / "s1").exists()
    with pytest.raises(ConfigError, match=r"al.reference_run: .*alone.*: no reference model"):
        (alone / "reference" / "model.pt").unlink()
        ActiveLearningLoop(cfg_factory("al.rounds=0", f"al.reference_run={alone}"), tmp_path / "s2").run()


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["finetune", "reset"])
def test_finetune_rounds_train_on_the_finetune_schedule(cfg_factory, tmp_path, monkeypatch, policy):
    used = []
    real_init = trainer_mod.Trainer.__init__

    def spying_init(self, model, dataset, cfg, *args, **kwargs):
        used.append((cfg.iters, cfg.lr, list(cfg.steps), cfg.warmup_iters, cfg.batch_size))
        real_init(self, model, dataset, cfg, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "__init__", spying_init)
    cfg = cfg_factory("al.rounds=1", f"al.policy={policy}", "trainer.finetune.lr=0.005", "trainer.finetune.steps=[]",
                      "trainer.finetune.warmup_iters=0")
    ActiveLearningLoop(cfg, tmp_path / "run").run()
    schedule = (6, 0.02, [0.8], 2, 2)
    # Fields left null (batch_size here) come from trainer.schedule.
    assert used == [schedule, (4, 0.005, [], 0, 2) if policy == "finetune" else schedule]


@pytest.mark.parametrize("override, fragment", [("trainer.finetune.iters=0", "trainer.finetune.iters must be >= 1"),
                                                ("trainer.finetune.lr=fast", "trainer.finetune.lr must be a number"),
                                                ("+trainer.finetune.lr_decay=2", "trainer.finetune.lr_decay is not a schedule field"),
                                                ("trainer.schedule.grad_clip=-1", "trainer.schedule.grad_clip must be > 0")])
def test_bad_schedules_are_config_errors(cfg_factory, tmp_path, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ActiveLearningLoop(cfg_factory(override), tmp_path / "run")


@pytest.mark.slow
def test_a_version_1_run_folder_is_converted_and_resumed(cfg_factory, tmp_path):
    """Runs made before the per-round label files kept the whole ledger in state.json."""
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg_factory("al.rounds=1"), run).run()
    files = {k: (run / f"round_{k:03d}" / "labels.jsonl").read_text() for k in (0, 1)}
    state = json.loads((run / "state.json").read_text())
    first_fingerprint = state["fingerprint"]
    ledger = [{**json.loads(l), "round": k} for k, text in files.items() for l in text.splitlines()]
    old = {k: v for k, v in state.items() if k not in ("phase_results", "fingerprint")}  # what version 1 had
    (run / "state.json").write_text(json.dumps({**old, "version": 1, "ledger": ledger}))
    for k in files:
        (run / f"round_{k:03d}" / "labels.jsonl").unlink()

    more = ActiveLearningLoop(cfg_factory("al.rounds=2"), run).run()
    assert {k: (run / f"round_{k:03d}" / "labels.jsonl").read_text() for k in (0, 1)} == files
    assert [r["labeled_images"] for r in more] == [4, 8, 12] and as_json(more[:2]) == as_json(records)
    state = json.loads((run / "state.json").read_text())
    assert state["version"] == STATE_VERSION and "ledger" not in state
    assert state["fingerprint"] == first_fingerprint  # added on resume, from the same data


@pytest.mark.slow
def test_a_missing_label_file_stops_the_resumption(cfg_factory, tmp_path):
    run = tmp_path / "run"
    ActiveLearningLoop(cfg_factory("al.rounds=1"), run).run()
    (run / "round_001" / "labels.jsonl").unlink()
    with pytest.raises(DataError, match="round_001/labels.jsonl: missing; remove .*round_001 and every later round"):
        ActiveLearningLoop(cfg_factory("al.rounds=2"), run).run()


@pytest.mark.slow
def test_initial_run_gives_every_strategy_the_same_round_0(cfg_factory, tmp_path):
    source = tmp_path / "source"
    first = ActiveLearningLoop(cfg_factory("al.rounds=1"), source).run()
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg_factory("al.rounds=1", "strategy=mask_entropy", f"al.initial_run={source}"), run).run()
    for name in ("model.pt", "labels.jsonl", "selection.json"):
        assert (run / "round_000" / name).read_bytes() == (source / "round_000" / name).read_bytes()
    assert records[0]["mask_AP"] == pytest.approx(first[0]["mask_AP"], abs=1e-9)
    # Round 0's record is the source's, train metrics included (only the strategy differs); its
    # metrics are the source's eval.json, not a second evaluation.
    assert {**records[0], "strategy": "random"} == first[0]
    assert "round 0: as evaluated in al.initial_run" in (run / "run.log").read_text()
    assert [r["labeled_images"] for r in records] == [4, 8] and records[1]["strategy"] == "mask_entropy"
    # Resuming the run does not copy round 0 again.
    assert as_json(ActiveLearningLoop(cfg_factory("al.rounds=1", "strategy=mask_entropy", f"al.initial_run={source}"), run).run()) == as_json(records)


@pytest.mark.slow
@pytest.mark.parametrize("override, match", [("seed=1", "another config .*seed"),
                                             ("trainer.schedule.iters=7", "another config .*trainer.schedule.iters"),
                                             ("al.initial=5", "another config .*al.initial")])
def test_initial_run_must_share_round_0s_config(cfg_factory, tmp_path, override, match):
    source = tmp_path / "source"
    ActiveLearningLoop(cfg_factory("al.rounds=0"), source).run()
    with pytest.raises(ConfigError, match=match):
        ActiveLearningLoop(cfg_factory(override, f"al.initial_run={source}"), tmp_path / "run").run()
    with pytest.raises(ConfigError, match="not a readable run state"):
        ActiveLearningLoop(cfg_factory(f"al.initial_run={tmp_path / 'nowhere'}"), tmp_path / "run").run()
    assert not (tmp_path / "run").exists()


def test_initial_run_accepts_keys_added_since_the_source_ran_and_another_cache():
    """A source run made before a key existed (e.g. trainer.schedule.sync_bn) or with its data
    cache elsewhere gives its round 0; a changed round-0 key is still a difference."""
    from alseg.engine.initial_run import round0_differences

    source = {"seed": 0, "dataset": {"name": "synthetic", "cache_dir": "/a"}, "trainer": {"schedule": {"iters": 4}},
              "al": {"rounds": 0}}
    new = {"seed": 0, "dataset": {"name": "synthetic", "cache_dir": "/b"},
           "trainer": {"schedule": {"iters": 4, "sync_bn": False}}, "al": {"rounds": 3}}
    assert round0_differences(new, source) == []
    assert round0_differences({**new, "seed": 2}, source) == ["seed"]
    assert round0_differences({**new, "trainer": {"schedule": {"iters": 5, "sync_bn": False}}}, source) == \
        ["trainer.schedule.iters"]


def test_config_differences_accept_keys_added_since_the_run_started():
    """A run made before a config key existed resumes (the key holds its default: an override of it
    would name another folder); a changed or removed key is still refused."""
    from alseg.engine.loop import config_differences

    old = {"seed": 0, "dataset": {"name": "coco"}, "al": {"rounds": 1}}
    assert config_differences(old, {**old, "dataset": {"name": "coco", "exif_orientation": "apply"}}) == []
    assert config_differences(old, {**old, "al": {"rounds": 3}}) == []  # resumable
    assert config_differences(old, {**old, "seed": 1}) == ["seed"]
    assert config_differences(old, {"dataset": {"name": "coco"}, "al": {"rounds": 1}}) == ["seed"]


@pytest.mark.slow
def test_data_checks_logged_before_the_run_folder_exists_reach_run_log(cfg_factory, tmp_path):
    """The EXIF warning of case11 (shared/cases/bad_inputs) is logged while the data are built,
    before the run folder may be written; it still ends up in run.log."""
    case = Path(__file__).parent / "data" / "bad_inputs" / "case11"
    cfg = cfg_factory("dataset=coco", f"dataset.train_ann={case / 'train.json'}", f"dataset.train_images={case / 'images'}",
                      f"dataset.val_ann={case / 'val.json'}", f"dataset.val_images={case / 'images'}", "al.rounds=0")
    run = tmp_path / "run"
    ActiveLearningLoop(cfg, run).run()
    text = (run / "run.log").read_text()
    assert "12 of 12 images carry an EXIF orientation tag" in text
    assert "EXIF orientation tag" in text.splitlines()[0]


def test_from_scratch_note_on_real_images_only(cfg_factory):
    from alseg.engine.loop import from_scratch_note

    note = from_scratch_note(cfg_factory("dataset=tiny_coco", "model=maskrcnn_r18_coco", "trainer.schedule.iters=30"))
    assert note.startswith("training from scratch on real images") and "30 iterations in round 0" in note
    assert "mask AP near 0 is expected" in note and "model.backbone_weights=IMAGENET1K_V1" in note
    assert from_scratch_note(cfg_factory("dataset=tiny_coco", "model.backbone_weights=IMAGENET1K_V1")) is None
    assert from_scratch_note(cfg_factory("dataset=tiny_coco", "model.checkpoint=m.pt")) is None
    assert from_scratch_note(cfg_factory()) is None  # synthetic shapes
