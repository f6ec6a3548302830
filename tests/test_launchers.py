"""Sweeps beyond one process: Hydra's joblib launcher (parallel local jobs), the submitit SLURM
launcher (composed and written as an sbatch script; no SLURM here), and alseg.cluster (SLURM
variables to torchrun's, the sweep-worker mark)."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alseg import cluster
from alseg.tools import compare
from conftest import checkout_env, fast_overrides

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e .[cluster]")


def _alseg(tmp_path, *args, extra_env=None, timeout=300):
    env = checkout_env(ALSEG_CACHE=str(tmp_path / "cache"), WANDB_MODE="disabled", OMP_NUM_THREADS="1",
                       **(extra_env or {}))
    cmd = [sys.executable, "-m", "alseg.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- joblib
def test_joblib_sweep_two_parallel_runs_then_compare(tmp_path, capsys):
    # Progress bars on (FAST turns them off): the jobs must turn them off themselves. A DataLoader
    # worker process: loky's start method, the default in its workers, cannot start it.
    overrides = [o for o in fast_overrides() if not o.startswith("progress=")]
    sweep = ["-m", f"paths.runs={tmp_path / 'runs'}", *overrides, "al.rounds=0", "seed=0,1",
             "trainer.schedule.num_workers=1"]
    res = _alseg(tmp_path, *sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert "it/s]" not in res.stderr  # no progress bar drawn by two processes on one terminal
    lines = res.stdout.splitlines()
    for job in (0, 1):  # each job's console lines name it, as Hydra's list of jobs does
        assert any(line.startswith(f"[#{job}] run folder: ") for line in lines), res.stdout[-3000:]
        assert any(line.startswith(f"[#{job}] round 0: evaluated") for line in lines), res.stdout[-3000:]

    runs = sorted(p.parent for p in (tmp_path / "runs" / "default").glob("*/results.jsonl"))
    assert len(runs) == 2  # each job its own run folder
    seeds = {yaml.safe_load((r / "config.yaml").read_text())["seed"] for r in runs}
    assert seeds == {0, 1}
    assert all("[#" not in (r / "run.log").read_text() for r in runs)  # the prefix is the console's only
    records = [json.loads((r / "results.jsonl").read_text().splitlines()[0]) for r in runs]
    assert records[0]["hours"] != records[1]["hours"]  # two seeds: two initial sets

    out = tmp_path / "compare"
    assert compare.main([str(tmp_path / "runs" / "default"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 1 and rows[0]["strategy"] == "random" and rows[0]["round"] == "0"
    assert rows[0]["n_seeds"] == "2"
    assert float(rows[0]["hours"]) == pytest.approx((records[0]["hours"] + records[1]["hours"]) / 2, abs=1e-3)
    assert "random" in capsys.readouterr().out

    # The sequential launcher names the same folders: the same sweep resumes them (nothing to do).
    again = _alseg(tmp_path, *sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.parent for p in (tmp_path / "runs" / "default").glob("*/results.jsonl")) == runs
    assert again.stdout.count("resuming ") == 2 and "evaluated on" not in again.stdout, again.stdout[-3000:]


# --------------------------------------------------------------------------- submitit (SLURM)
FAKE_SLURM = """#!/bin/sh
cat "$@" > "{log}" 2>/dev/null
echo "sbatch: error: no SLURM on this machine" >&2
exit 1
"""


def test_submitit_slurm_composes_and_writes_the_sbatch_script(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[cluster]")
    res = _alseg(tmp_path, "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4",
                 "hydra.launcher.tasks_per_node=4", "--cfg", "hydra", "-p", "hydra.launcher")
    assert res.returncode == 0, res.stderr[-3000:]
    launcher = yaml.safe_load(res.stdout)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == 4 and launcher["tasks_per_node"] == 4

    # Submitting: submitit writes the sbatch script, then calls sbatch (a stand-in that keeps it).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "srun"):  # submitit checks that srun exists
        (bin_dir / name).write_text(FAKE_SLURM.format(log=tmp_path / "sbatch_script.sh"))
        (bin_dir / name).chmod(0o755)
    res = _alseg(tmp_path, "-m", f"paths.runs={tmp_path / 'runs'}", "hydra/launcher=submitit_slurm",
                 "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
                 "hydra.launcher.timeout_min=600", "seed=0,1",
                 extra_env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    # sbatch's refusal: sbatch's own line (submitit passes its stderr on), then alseg's one line
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert err == ["sbatch: error: no SLURM on this machine", err[1]] and \
        err[1].startswith("alseg: error: hydra.launcher: SLURM refused") and "no SLURM on this machine" in err[1]
    script = (tmp_path / "sbatch_script.sh").read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --nodes=1", "#SBATCH --time=600", "#SBATCH --signal=USR2@120"):
        assert line in script
    assert "srun " in script and "submitit.core._submit" in script
    assert len(list((tmp_path / "runs" / "default" / ".submitit").glob("*.pkl"))) == 2  # one job per run


# --------------------------------------------------------------------------- alseg.cluster
SLURM_2x4_RANK5 = {  # task 5 of 8: the second of 2 nodes, 4 tasks (GPUs) each
    "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_NODELIST": "gpu[017-018]", "SLURM_JOB_ID": "1234567", "SLURM_NODEID": "1",
}


def test_env_from_slurm_two_nodes_four_tasks_each():
    assert cluster.env_from_slurm(SLURM_2x4_RANK5) == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu017", "MASTER_PORT": str(20000 + 1234567 % 20000),  # 34567
    }


def test_env_from_slurm_keeps_what_is_set_and_is_none_outside_slurm():
    assert cluster.env_from_slurm({}) is None
    assert cluster.env_from_slurm({"PATH": "/bin"}) is None
    assert cluster.env_from_slurm({**SLURM_2x4_RANK5, "RANK": "0"}) is None  # torchrun inside the job
    env = cluster.env_from_slurm({**SLURM_2x4_RANK5, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert "MASTER_ADDR" not in env and "MASTER_PORT" not in env and env["RANK"] == "5"
    assert cluster.env_from_slurm(SLURM_2x4_RANK5, port=29400)["MASTER_PORT"] == "29400"
    one = cluster.env_from_slurm({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0",
                                  "SLURM_TASKS_PER_NODE": "1", "SLURM_NODELIST": "cn7", "SLURM_JOB_ID": "42"})
    assert one == {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                   "MASTER_ADDR": "cn7", "MASTER_PORT": "20042"}


@pytest.mark.parametrize("nodelist, first", [
    ("node[003-005,7],gpu1", "node003"), ("a,b", "a"), ("cn7", "cn7"), ("gpu-[12]", "gpu-12"),
    ("rack[1-2]-gpu[08-09]", "rack1-gpu08"), ("x[7,3-4]", "x7"),
])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert cluster.first_host(nodelist) == first


def test_in_sweep_worker_only_under_this_hosts_launching_parent():
    host = socket.gethostname()
    assert cluster.in_sweep_worker({cluster.LAUNCHER_ENV: f"{host}:{os.getppid()}"})
    assert not cluster.in_sweep_worker({cluster.LAUNCHER_ENV: f"{host}:{os.getpid()}"})  # the launcher itself
    assert not cluster.in_sweep_worker({cluster.LAUNCHER_ENV: f"other-{host}:{os.getppid()}"})  # a SLURM node
    assert not cluster.in_sweep_worker({})
    with cluster.launcher_marked():
        assert os.environ[cluster.LAUNCHER_ENV] == f"{host}:{os.getpid()}"
        assert not cluster.in_sweep_worker()
    assert cluster.LAUNCHER_ENV not in os.environ or os.environ[cluster.LAUNCHER_ENV] != f"{host}:{os.getpid()}"


# A sweep worker (a child of a marked launcher) in a job, then between jobs; the launcher is killed.
WORKER = """
import sys, time
from alseg import cluster, interrupts
out, idle = sys.argv[1], sys.argv[2] == "idle"
try:
    with interrupts.handled(), cluster.stopping_with_launcher(poll_s=0.05):
        open(out + ".started", "w").close()
        if not idle:
            time.sleep(30)
    time.sleep(30)
except KeyboardInterrupt as e:
    open(out, "w").write(f"{e.signal_name} {cluster.launcher_gone()}")
"""
LAUNCHER = """
import subprocess, sys, time
from alseg import cluster
assert not cluster.in_sweep_worker()
with cluster.launcher_marked():
    worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
    print(worker.pid, flush=True)
    time.sleep(60)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc (Linux)")
@pytest.mark.parametrize("idle", [False, True])
def test_a_sweep_worker_stops_when_its_launcher_is_killed(tmp_path, idle):
    import time

    out = tmp_path / "interrupted"
    env = checkout_env()
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, WORKER, str(out), "idle" if idle else "job"],
                                env=env, stdout=subprocess.PIPE, text=True)
    worker_pid = int(launcher.stdout.readline())
    deadline = time.monotonic() + 30
    while not Path(f"{out}.started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher.kill()  # SIGKILL: the launcher cannot pass anything on
    launcher.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:  # the launcher's orphan: gone, or a zombie until init reaps it
            if Path(f"/proc/{worker_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.05)
    else:
        os.kill(worker_pid, 9)
        pytest.fail("the worker outlived its launcher by 10 s")
    if idle:  # between jobs: the worker ends at once, nothing raised in it
        assert not out.exists()
    else:  # in a job: SIGTERM, unwound as a `kill` of a plain run is
        assert out.read_text() == "SIGTERM True"
