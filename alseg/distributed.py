"""One run on N processes: the process group and the few collectives the loop needs.

A run is distributed when it is started by ``torchrun`` (or any launcher that sets the torchrun
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with
``WORLD_SIZE`` > 1; otherwise every function here is the single-process identity (rank 0 of 1)
and nothing touches ``torch.distributed``. Backends: nccl on CUDA, gloo on CPU, so every path runs
and is tested on a CPU machine.

The division of work (``alseg.engine.loop``): every rank reads and checks the same inputs, trains
(DistributedDataParallel) and runs its shard of pool inference and evaluation; rank 0 alone
selects, asks the oracle and writes the run folder, and broadcasts what the others need. Work
done on rank 0 alone goes through ``on_main``, which also broadcasts an error raised there, so
that the other ranks stop with the same error instead of waiting at the next collective.

Like ``torch.distributed`` itself this is process-global state: one process group per process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

from alseg.cluster import env_from_slurm
from alseg.errors import ConfigError

T = TypeVar("T")

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def together() -> bool:
    """True where every rank runs the same code and collectives may be called: distributed, and
    not inside ``main_only`` / ``on_main`` (where rank 0 is alone)."""
    return is_distributed() and not _nested


def working_ranks() -> int:
    """How many ranks share the work at this point: ``world_size()`` when ``together()``, else 1
    (what the trainer and the sharded passes divide by)."""
    return world_size() if together() else 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0, the process that selects and writes (always True on one process)."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def requested_world_size(environ=os.environ) -> int:
    """``WORLD_SIZE`` of the environment (1 when unset); ConfigError when it is not a positive
    integer or the other torchrun variables are missing."""
    raw = environ.get("WORLD_SIZE")
    if raw is None:
        return 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"WORLD_SIZE: must be a positive integer (the number of processes), got {raw!r}")
    if n > 1:
        missing = [v for v in TORCHRUN_VARIABLES if v not in environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={n} but {', '.join(missing)} not set; start a multi-process run with "
                              f"torchrun --nproc_per_node={n} -m alseg ...")
    return n


def process_device(device: str) -> str:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a distributed run (one
    GPU per process); ``cpu`` and an explicit ``cuda:N`` on one process are kept."""
    if is_distributed() and device.startswith("cuda"):
        if device != "cuda":
            raise ConfigError(f"device: {device!r} names one GPU, but a run on {world_size()} processes uses one GPU "
                              f"per process (LOCAL_RANK); use device=cuda or device=auto")
        return f"cuda:{_gpu_of(local_rank())}"
    return device


def _gpu_of(local: int) -> int:
    """The GPU of local rank ``local``: itself, modulo the GPUs this process sees (a SLURM task
    given one GPU of its own sees it as cuda:0)."""
    return local % max(torch.cuda.device_count(), 1)


@contextlib.contextmanager
def process_group(device: str, timeout_minutes: float = 60.0, environ=os.environ) -> Iterator[str]:
    """Initialise the process group when ``WORLD_SIZE`` > 1 (nccl for a CUDA ``device``, else
    gloo) and destroy it on exit; yields this process's device (``process_device``). On one process
    it yields ``device`` and does nothing. ``timeout_minutes`` bounds how long a rank waits for the
    others at a collective (rank 0's selection runs while the others wait).

    A task that SLURM's ``srun`` started (one per GPU; ``alseg.cluster.env_from_slurm``) gets the
    torchrun variables from SLURM's first.

    Raises ConfigError for a bad ``WORLD_SIZE`` or missing torchrun variables."""
    if environ is os.environ:
        os.environ.update(env_from_slurm() or {})
    n = requested_world_size(environ)
    if n == 1 or is_distributed():
        yield process_device(device)
        return
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(_gpu_of(int(environ.get("LOCAL_RANK", 0))))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    try:
        yield process_device(device)
    finally:
        dist.destroy_process_group()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not together():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def gather_objects(obj) -> list | None:
    """The ``obj`` of every rank, in rank order, on rank 0; None on the others."""
    if not together():
        return [obj]
    out = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_reduce_sum(value: float | torch.Tensor) -> float | torch.Tensor:
    """The sum over ranks of a number or a tensor (a new tensor; the input is not changed)."""
    if not together():
        return value
    t = value.detach().clone() if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)
    device = _collective_device()
    out = t.to(device)
    dist.all_reduce(out)
    return out.to(t.device) if torch.is_tensor(value) else float(out)


_nested = False


def main_only(fn: Callable[[], T]) -> T | None:
    """``fn()`` run on rank 0 only: its result there, None on the other ranks. An exception raised
    there is raised on every rank (same type and message), so that no rank is left waiting at a
    collective that rank 0 will never reach. Every rank must call it."""
    global _nested
    if not together():  # one process, or inside another main_only: rank 0 alone is here
        return fn()
    result, error = None, None
    if is_main():
        _nested = True
        try:
            result = fn()
        except Exception as e:
            _nested = False
            broadcast_object(_picklable(e))
            raise shared(e)
        finally:
            _nested = False
    error = broadcast_object(error)
    if error is not None:
        raise shared(error)
    return result


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only, its result (pickled) on every rank; an error raised there is
    raised on every rank (``main_only``)."""
    if not together():
        return fn()
    return broadcast_object(main_only(fn))


def agree(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank; if it failed on any, every rank raises the error of the first rank
    that failed (same type and message; marked ``shared``), instead of the healthy ranks going on
    to a collective that the failed one never reaches. For checks of inputs that a rank may see
    differently (files on another node) and for sharded passes."""
    if not together():
        return fn()
    error = None
    try:
        result = fn()
    except Exception as e:
        error = _picklable(e)
    errors = [None] * world_size()
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise shared(first)
    return result


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank, rank 0 first (an error there stops every rank): for work that fills
    a cache the other ranks then read (e.g. generating or indexing a dataset)."""
    if not together():
        return fn()
    result = main_only(fn)
    return result if is_main() else fn()


def shard_bounds(n: int, chunk: int, ranks: int | None = None, which: int | None = None) -> tuple[int, int]:
    """[start, stop) of rank ``which``'s contiguous share of ``n`` items split into whole chunks of
    ``chunk`` (so that each rank's batches are exactly the single-process batches); the earlier
    ranks take one chunk more when the chunks do not divide evenly."""
    ranks = world_size() if ranks is None else ranks
    which = rank() if which is None else which
    chunks = -(-n // chunk)
    base, extra = divmod(chunks, ranks)
    first = which * base + min(which, extra)
    count = base + (which < extra)
    return min(first * chunk, n), min((first + count) * chunk, n)


def shard(items: Sequence[T], chunk: int = 1) -> list[T]:
    """This rank's contiguous share of ``items`` (``shard_bounds``); all of them on one process."""
    start, stop = shard_bounds(len(items), chunk)
    return list(items[start:stop])


def broadcast_model(model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers copied into ``model`` on every rank (after work done on
    rank 0 alone, e.g. fitting the mask-IoU head)."""
    if not together():
        return
    for t in list(model.parameters()) + list(model.buffers()):
        with torch.no_grad():
            buf = t.detach().to(_collective_device())
            dist.broadcast(buf, src=0)
            t.copy_(buf.to(t.device))


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def is_shared(e: BaseException) -> bool:
    """Whether ``e`` was raised on every rank (by ``main_only``, ``on_main`` or ``agree``), so that
    rank 0 alone needs to report it."""
    return bool(getattr(e, "alseg_shared", False))


def shared(e: Exception) -> Exception:
    """``e`` marked as raised on every rank (``is_shared``): for an error that every rank meets
    at the same point from the same values (e.g. a non-finite loss after the all-reduce)."""
    e.alseg_shared = True
    return e


def _picklable(e: Exception) -> Exception:
    """``e`` when it survives pickling, else a RuntimeError with its message."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")
