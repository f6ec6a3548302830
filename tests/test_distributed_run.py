"""`torchrun --nproc_per_node=2 -m alseg ...` on the synthetic data, as a user runs it: one run
folder, a killed run resumed by the same command to the records of an uninterrupted one, and a
selection from a given round's model equal to the single-process one."""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, checkout_env

pytestmark = pytest.mark.slow

ARGS = [*(o for o in FAST if not o.startswith("al.rounds=")), "al.rounds=1", "eval.batch_size=2"]


def _env(tmp: Path) -> dict:
    return checkout_env(ALSEG_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", WANDB_MODE="offline")


def _torchrun(tmp: Path, *overrides: str, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "alseg",
           *ARGS, *overrides]
    proc = subprocess.Popen(cmd, cwd=tmp, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ddp")


def test_two_processes_write_one_run_folder_and_a_killed_run_resumes_to_the_same_records(tmp):
    out = _torchrun(tmp, "strategy=taudis", "run_name=whole")
    runs = tmp / "runs" / "default"
    assert sorted(p.name for p in runs.iterdir()) == ["whole"]  # every rank resolved the same folder
    whole = runs / "whole"
    assert sorted(p.name for p in whole.iterdir() if p.is_dir() and p.name.startswith("round")) == \
        ["round_000", "round_001"]
    assert not list(whole.glob("**/pool_inference"))  # per-rank shards (round_k/pool_inference) merged and removed
    assert "batch 2 (1 per process x 2 processes)" in (whole / "run.log").read_text()
    assert out.count("results: ") == 1  # rank 0 alone reports

    proc = _torchrun(tmp, "strategy=taudis", "run_name=killed", wait=False)
    state = runs / "killed" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["round"] >= 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler stops a job: every process of the run
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert json.loads(state.read_text())["round"] >= 1 and not (runs / "killed" / "results.jsonl").read_text().count(
        '"round": 1')

    out = _torchrun(tmp, "strategy=taudis", "run_name=killed")
    assert "resuming" in (runs / "killed" / "run.log").read_text()
    assert _records(runs / "killed") == _records(whole)


@pytest.mark.parametrize("strategy", ["taudis", "coreset"])  # coreset reads pool and labeled predictions
def test_a_selection_on_two_processes_equals_the_single_process_one(tmp, strategy):
    single, again = f"single_{strategy}", f"again_{strategy}"
    subprocess.run([sys.executable, "-m", "alseg", *ARGS, f"strategy={strategy}", f"run_name={single}"], cwd=tmp,
                   env=_env(tmp), check=True, stdout=subprocess.DEVNULL)
    runs = tmp / "runs" / "default"
    shutil.copytree(runs / single, runs / again)
    shutil.rmtree(runs / again / "round_001")  # round 1 is redone from round 0's model, on 2 processes
    _torchrun(tmp, f"strategy={strategy}", f"run_name={again}")
    selection = [json.loads((runs / name / "round_001" / "selection.json").read_text()) for name in (single, again)]
    assert selection[0]["queries"] == selection[1]["queries"] and len(selection[0]["queries"]) == 4
    assert selection[0]["analysis"] == selection[1]["analysis"]
    assert not (runs / again / "round_001" / "pool_inference").exists()


@pytest.mark.parametrize("override, line", [
    ("trainer.schedule.sync_bn=true", "alseg: error: trainer.schedule.sync_bn: SyncBatchNorm needs CUDA"),
    ("trainer.schedule.batch_size=3", "alseg: error: trainer.schedule.batch_size (3) must be a multiple of the "
                                      "number of processes (2)"),
    # Met by rank 0 alone in round 1's selection (after round 0 was written): shared with rank 1.
    # (1 second of annotation: no image's masks cost that little.)
    ("al.budget_unit=seconds al.budget=1", "alseg: error: round 1: strategy 'taudis' selected nothing within the budget"),
])
def test_a_bad_config_on_two_processes_is_one_line(tmp, override, line):
    proc = _torchrun(tmp, "strategy=taudis", f"run_name=bad_{override.split('=')[0]}", *override.split(), wait=False)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    errors = [x for x in out.splitlines() if x.startswith("alseg: error")]
    assert len(errors) == 1 and errors[0].startswith(line), out[-2000:]
    # No traceback of alseg's (torchrun reports the failed processes with its own, from its own code).
    assert not re.search(r'File ".*/alseg/', out), out[-3000:]
    if not override.startswith("al.budget"):  # refused before anything is written
        assert not (tmp / "runs" / "default" / f"bad_{override.split('=')[0]}").exists()
