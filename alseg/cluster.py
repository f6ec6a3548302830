"""alseg on more than one process: the jobs of a parallel sweep (Hydra's joblib launcher) and the
processes of one run started by SLURM.

A parallel sweep: the ``alseg -m`` process marks itself in the environment (``launcher_marked``);
the jobs Hydra's joblib launcher runs in its loky worker processes (direct children, each job in
the worker's main thread) see the mark (``in_sweep_worker``). Such a job stops as if sent SIGTERM
when the ``alseg -m`` process is gone (``stopping_with_launcher``): ``kill`` of the launcher alone
would otherwise leave its workers training on, orphaned.

SLURM: ``env_from_slurm`` translates the variables ``srun`` gives each task into the ones torchrun
gives each process (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), which the
distributed initialisation reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from typing import Iterator, Mapping

LAUNCHER_ENV = "ALSEG_SWEEP_LAUNCHER"  # "<host>:<pid>" of the `alseg -m` process, inherited by its workers


def _this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def launcher_marked() -> Iterator[None]:
    """Within the block, processes this one starts find it in ``ALSEG_SWEEP_LAUNCHER``. An outer
    mark (a sweep started from inside a job) is restored afterwards."""
    previous = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = _this_process()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(LAUNCHER_ENV, None)
        else:
            os.environ[LAUNCHER_ENV] = previous


def in_sweep_worker(environ: Mapping[str, str] | None = None) -> bool:
    """True in a direct child process of an ``alseg -m`` on this host: a job of a parallel sweep.
    False in the launcher itself (the sequential launcher runs its jobs there), in a plain run, and
    in a SLURM job (another host, another parent; the mark travels there with the environment)."""
    mark = (os.environ if environ is None else environ).get(LAUNCHER_ENV, "")
    host, _, pid = mark.rpartition(":")
    return host == socket.gethostname() and pid == str(os.getppid())


_launcher_gone = threading.Event()
_watch_lock = threading.Lock()
_watching = False  # one watcher thread per worker process, for all the jobs it runs
_in_job = False


def launcher_gone() -> bool:
    """True once the watcher of ``stopping_with_launcher`` saw the launcher end: nobody collects
    this job's result, so the worker process should end with the job."""
    return _launcher_gone.is_set()


def _watch(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    _launcher_gone.set()
    with _watch_lock:
        in_job = _in_job
    if in_job:
        os.kill(os.getpid(), signal.SIGTERM)
    else:  # an idle worker would wait for work that never comes (loky's own idle timeout aside)
        os._exit(128 + signal.SIGTERM)


@contextlib.contextmanager
def stopping_with_launcher(poll_s: float = 1.0) -> Iterator[None]:
    """In a sweep worker: when the launching process is gone (the worker's parent changes), a
    job in this block gets SIGTERM, so that ``alseg.interrupts.handled()`` unwinds the run as on
    ``kill`` (the write in progress completes, run.log says where the run stopped); a worker
    between jobs ends at once. Polls every ``poll_s`` seconds. Elsewhere nothing."""
    global _watching, _in_job
    if not in_sweep_worker():
        yield
        return
    with _watch_lock:
        if not _watching:
            threading.Thread(target=_watch, args=(os.getppid(), poll_s), name="alseg-launcher-watch",
                             daemon=True).start()
            _watching = True
        _in_job = True
    try:
        yield
    finally:
        with _watch_lock:
            _in_job = False


def first_host(nodelist: str) -> str:
    """The first host name of a SLURM node list, as ``scontrol show hostnames`` would print it
    first: ``node[003-005,7],gpu1`` -> ``node003``; ``a,b`` -> ``a``;
    ``rack[1-2]-gpu[08-09]`` -> ``rack1-gpu08``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first item: up to the first comma outside brackets
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], nodelist[:end].strip())


def env_from_slurm(environ: Mapping[str, str] | None = None, port: int | None = None) -> dict[str, str] | None:
    """torchrun's variables for a process that ``srun`` started as one task of a SLURM job step
    (one task per GPU: ``--ntasks-per-node`` = GPUs per node; submitit's ``tasks_per_node``).

    ``RANK`` = SLURM_PROCID, ``WORLD_SIZE`` = SLURM_NTASKS, ``LOCAL_RANK`` = SLURM_LOCALID,
    ``LOCAL_WORLD_SIZE`` = tasks on this node (the first number of SLURM_TASKS_PER_NODE, e.g.
    ``4(x2)`` -> 4), ``MASTER_ADDR`` = the first host of SLURM_JOB_NODELIST (SLURM_NODELIST),
    ``MASTER_PORT`` = ``port``, else MASTER_PORT if set, else 20000 + SLURM_JOB_ID mod 20000 (two
    jobs on one node get different ports). Variables the environment already has (MASTER_ADDR set
    by a job script) are not in the result: a caller does ``os.environ.update(result)``.

    Returns None when not in a SLURM task (no SLURM_PROCID) or when torchrun set RANK already
    (torchrun started inside a SLURM job: its variables win). SLURM_NTASKS is SLURM's since 1.x;
    https://slurm.schedmd.com/srun.html#SECTION_OUTPUT-ENVIRONMENT-VARIABLES.
    """
    env = os.environ if environ is None else environ
    if "SLURM_PROCID" not in env or "RANK" in env:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or socket.gethostname()
    job_id = env.get("SLURM_JOB_ID", "")
    tasks_per_node = env.get("SLURM_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    out = {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS") or env.get("SLURM_NPROCS") or "1",
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": tasks_per_node or "1",
        "MASTER_ADDR": first_host(nodelist),
        "MASTER_PORT": str(port) if port is not None else
        env.get("MASTER_PORT") or str(20000 + int(job_id if job_id.isdigit() else 0) % 20000),
    }
    return {k: v for k, v in out.items() if k not in env}
