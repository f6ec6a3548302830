"""A run killed after any phase, or in the middle of training, and resumed ends with the same
results, line for line, as a run that was never interrupted."""

import json

import numpy as np
import pytest

from alseg.annotation.ledger import Ledger
from alseg.engine import trainer as trainer_mod
from alseg.engine.loop import ActiveLearningLoop
from alseg.strategies.iou_guided import IoUGuidedImages
from conftest import as_json


class IoUGuidedWithAnalysis(IoUGuidedImages):
    """iou_guided with figures about its selection, so that the records carry selection/* keys
    (one of them a numpy scalar, as strategies' analyses often are)."""

    def analyze(self, ctx, queries):
        pp = ctx.get("pool_predictions")
        return {"mean_pred_iou": np.float32(pp.pred_iou.mean()) if len(pp) else 0.0, "picked": len(queries),
                "note": "not a number: kept in selection.json, not in the record"}


# A mask-IoU head (train/loss_mask_iou, iou_mae_*), pool predictions and a selection analysis.
OVERRIDES = ("model=maskrcnn_r18_small_iou", "model.min_size=64", "model.max_size=64", "model.mask_iou.iters=5",
             "strategy=iou_guided", f"strategy._target_={__name__}.IoUGuidedWithAnalysis",
             "strategy.score_threshold=0.0", "al.rounds=1")
COMPARED = ["results.jsonl", "results.csv", "config.yaml"] + [
    f"round_{k:03d}/{name}" for k in (0, 1) for name in ("labels.jsonl", "selection.json", "metrics.json")]


class _Killed(Exception):
    pass


def _files(run):
    return {name: (run / name).read_text() for name in COMPARED}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import make_cfg

    tmp = tmp_path_factory.mktemp("resume")
    run = tmp / "full"
    records = ActiveLearningLoop(make_cfg(tmp, *OVERRIDES), run).run()
    return tmp, run, records


@pytest.mark.slow
def test_a_run_killed_after_every_phase_and_mid_training_ends_as_an_uninterrupted_one(uninterrupted, monkeypatch):
    tmp, full, full_records = uninterrupted
    from conftest import make_cfg

    assert {"train/loss_mask_iou", "train/iters", "train/base_lr", "selection/mean_pred_iou",
            "selection/picked", "data/skipped_annotations"} <= set(full_records[1])
    run = tmp / "killed"
    real_commit = ActiveLearningLoop._commit
    real_step = trainer_mod.Trainer.run_step
    real_save_round = Ledger.save_round
    phases = []
    kill = {"commits": 0, "step": None, "select": False}

    def commit_then_die(self, state):
        real_commit(self, state)
        kill["commits"] += 1
        if kill["commits"] == 2:  # the first commit of a run only rewrites the state it resumed from
            phases.append((state["round"], state["phase"]))
            raise _Killed()

    def step_then_die(self, images, targets):
        if self.iter == kill["step"]:
            kill["step"] = None
            raise _Killed()
        real_step(self, images, targets)

    def save_round_then_die(self, k, path):  # the labels are written, the selection is not
        real_save_round(self, k, path)
        if kill["select"]:
            kill["select"] = False
            raise _Killed()

    monkeypatch.setattr(ActiveLearningLoop, "_commit", commit_then_die)
    monkeypatch.setattr(trainer_mod.Trainer, "run_step", step_then_die)
    monkeypatch.setattr(Ledger, "save_round", save_round_then_die)
    for attempt in range(30):
        kill["commits"] = 0
        state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {"round": 0, "phase": "start"}
        for phase, how in (("start", "mid-select"), ("selected", "mid-train")):
            if state["phase"] == phase and state["round"] <= 1 and (state["round"], how) not in phases:
                kill["select" if how == "mid-select" else "step"] = True if how == "mid-select" else 3
                phases.append((state["round"], how))
        try:
            records = ActiveLearningLoop(make_cfg(tmp, *OVERRIDES), run).run()
            break
        except _Killed:
            continue
    # Killed once in each phase and after it, in both rounds; then it finished.
    assert phases == [(0, "mid-select"), (0, "selected"), (0, "mid-train"), (0, "trained"), (0, "evaluated"),
                      (1, "start"), (1, "mid-select"), (1, "selected"), (1, "mid-train"), (1, "trained"),
                      (1, "evaluated"), (2, "start")]
    assert as_json(records) == as_json(full_records)
    assert _files(run) == _files(full)


@pytest.mark.slow
def test_a_version_2_run_resumed_between_training_and_evaluation(uninterrupted, tmp_path):
    """Runs older than the phase results: the round's record has its selection figures (from
    selection.json) and everything else, but not the train metrics that were never kept."""
    import shutil

    from conftest import make_cfg

    tmp, full, full_records = uninterrupted
    run = tmp_path / "v2"
    shutil.copytree(full, run)
    state = json.loads((run / "state.json").read_text())
    v2 = {k: v for k, v in state.items() if k not in ("phase_results", "fingerprint")}
    v2.update(version=2, round=1, phase="trained", records=state["records"][:1])
    (run / "state.json").write_text(json.dumps(v2))
    records = ActiveLearningLoop(make_cfg(tmp, *OVERRIDES), run).run()
    train_keys = {k for k in full_records[1] if k.startswith("train/")}
    assert records[1] == {k: v for k, v in full_records[1].items() if k not in train_keys}
    state = json.loads((run / "state.json").read_text())
    assert state["version"] == 3 and state["fingerprint"] and state["phase_results"] == {}
