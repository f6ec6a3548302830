"""Ctrl-C and SIGTERM alike: the signal becomes ``Interrupted`` (a KeyboardInterrupt), a write in
progress completes first, the CLI says how to resume on a line of its own and exits 128 + signal."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alseg import files, interrupts
from alseg.engine.loop import ActiveLearningLoop
from conftest import fast_overrides


def test_sigterm_and_sigint_raise_interrupted_with_the_shells_exit_code():
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        with pytest.raises(interrupts.Interrupted) as info:
            with interrupts.handled():
                os.kill(os.getpid(), signum)
                time.sleep(1)  # the handler runs in the main thread at the next bytecode
        assert info.value.signum == signum and interrupts.exit_code_of(info.value) == code
    assert interrupts.exit_code_of(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the block


def test_a_signal_inside_deferred_is_raised_when_the_block_ends():
    done = []
    with pytest.raises(interrupts.Interrupted):
        with interrupts.handled():
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                done.append("after the signal")
    assert done == ["after the signal"]


def test_the_blocks_own_error_wins_over_a_pending_signal():
    with interrupts.handled():
        with pytest.raises(ValueError):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)
                raise ValueError("disk")
        with interrupts.deferred():  # nothing left pending from the block above
            pass


def test_an_atomic_write_interrupted_midway_completes_then_stops(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text('{"old": 1}')
    real_fsync = os.fsync

    def fsync_then_signal(fd):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync_then_signal)
    with pytest.raises(interrupts.Interrupted):
        with interrupts.handled():
            files.atomic_write_json(target, {"new": 2})
    assert target.read_text() == '{\n "new": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left


def test_the_loop_logs_an_interruption_with_round_and_phase(cfg_factory, tmp_path, monkeypatch, caplog):
    def stop(self, *a, **k):
        raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(ActiveLearningLoop, "_train", stop)
    with caplog.at_level(logging.WARNING), pytest.raises(interrupts.Interrupted):
        ActiveLearningLoop(cfg_factory("al.rounds=0"), tmp_path / "run").run()
    assert "interrupted (SIGTERM) during round 0 training; every finished phase is saved" in caplog.text
    assert "interrupted (SIGTERM) during round 0 training" in (tmp_path / "run" / "run.log").read_text()


@pytest.mark.slow
def test_sigterm_during_a_run_then_the_same_command_resumes(tmp_path):
    """`alseg` killed with SIGTERM while training: exit 143, the message on its own line, run.log says
    so; the same command again finishes the run."""
    env = {**os.environ, "ALSEG_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled"}
    overrides = [*fast_overrides(), "al.rounds=0", "trainer.schedule.iters=60", "trainer.log_every=1", "run_name=r"]
    cmd = [sys.executable, "-m", "alseg.cli", f"paths.runs={tmp_path / 'runs'}", *overrides]
    run = tmp_path / "runs" / "default" / "r"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and "iter 2/60" not in _read(run / "run.log"):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err + out
    assert "\nalseg: interrupted (SIGTERM); every finished phase is saved in" in "\n" + err
    assert "interrupted (SIGTERM) during round 0" in _read(run / "run.log")
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    log = _read(run / "run.log")
    assert f"resuming {run} at round 0" in log and "iter 60/60" in log
    assert len((run / "results.jsonl").read_text().splitlines()) == 1


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_alseg_prune_stops_on_sigterm_with_143_and_a_line_of_its_own(tmp_path, monkeypatch, capsys):
    from alseg.tfdp import cli

    def run(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)

    monkeypatch.setattr(cli, "run", run)
    with pytest.raises(SystemExit) as info:
        cli.main(["--ann", str(tmp_path / "a.json"), "--keep", "0.5", "--out", str(tmp_path / "o.json"),
                  "--scores", str(tmp_path / "s.csv")])
    assert info.value.code == 143
    err = capsys.readouterr().err
    assert err.startswith("\nalseg-prune: interrupted (SIGTERM); every output file is whole or untouched")
