"""`alseg`: the Hydra entry point. With no argument it runs the default experiment."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from alseg import cluster, interrupts
from alseg.distributed import is_shared
from alseg.errors import AlsegError
from alseg.run_naming import legacy_run_name, previous_run_name, run_name

log = logging.getLogger("alseg")

# Configs live in the repository's configs/ (editable install) or, for a wheel, inside the package.
_here = Path(__file__).resolve().parent
CONFIG_DIR = str(_here / "configs" if (_here / "configs").is_dir() else _here.parent / "configs")


def run_dir_of(cfg: DictConfig) -> Path:
    """runs/<experiment_name>/<run_name>: ``run_name`` if given (``/`` as ``_``), else the name made
    from the command-line overrides by ``alseg.run_naming.run_name``. A folder of the same command
    under the name older alseg versions made is used if it holds a run and the new one does not."""
    parent = Path(cfg.paths.runs) / str(cfg.experiment_name)
    if cfg.get("run_name"):
        return parent / str(cfg.run_name).replace("/", "_")
    task = list(HydraConfig.get().overrides.task)
    run_dir = parent / run_name(task, experiment_names_folder=str(cfg.experiment_name) != "default")
    if (run_dir / "state.json").exists():
        return run_dir
    for older in (previous_run_name(task, experiment_names_folder=str(cfg.experiment_name) != "default"),
                  legacy_run_name(task)):
        if parent / older != run_dir and (parent / older / "state.json").is_file():
            log.info("using %s, the folder an older alseg made for this command (its name today: %s)",
                     parent / older, run_dir)
            return parent / older
    return run_dir


def _hydra_error_line(e: Exception) -> str:
    """One line for an error Hydra raises before the run starts (composition, override grammar)."""
    if isinstance(e, OverrideParseException):
        reason = e.message.splitlines()[0] if e.message else "cannot be parsed"
        return (f"{e.override}: not a valid override ({reason}); quote a value that holds = , [ ] {{ }} "
                f"or spaces, e.g. 'key=\"a=b\"' (https://hydra.cc/docs/advanced/override_grammar/basic/)")
    cause = e.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    if key and "not in struct" in str(cause):
        return f"{key}: no such key in the config (a typo?); to add a new key write +{key}=VALUE"
    text = str(e).split("Config search path:")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(cause, OmegaConfBaseException):
        lines.append(str(cause).splitlines()[0])
    line = "; ".join(lines).replace(":; ", ": ")
    return f"{key}: {line}" if key else line


def _hydra_errors_in_one_line(hydra_main):
    """Hydra's own errors (an unknown key, a value its grammar rejects, a missing config option) as
    one ``alseg: error:`` line and exit 2; HYDRA_FULL_ERROR=1 keeps Hydra's full report."""

    @functools.wraps(hydra_main)
    def wrapper(*args, **kwargs):
        if os.environ.get("HYDRA_FULL_ERROR"):
            with cluster.launcher_marked():
                return hydra_main(*args, **kwargs)
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises its errors instead of printing them
        try:
            with cluster.launcher_marked():  # the jobs of `-m hydra/launcher=joblib` know their launcher
                return hydra_main(*args, **kwargs)
        except HydraException as e:
            print(f"alseg: error: {_hydra_error_line(e)}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # `alseg --help | head`: the reader left; as Python's docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as e:
            if type(e).__name__ != "FailedJobError" or not type(e).__module__.startswith("submitit"):
                raise
            # sbatch refused the jobs (a partition, account or resource SLURM does not have)
            reason = " ".join(str(e).split()) or "no reason given"
            print(f"alseg: error: hydra.launcher: SLURM refused the sweep's jobs: {reason}; check "
                  f"hydra.launcher (partition, account, gpus_per_node, timeout_min, ...)", file=sys.stderr)
            sys.exit(2)
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)

    return wrapper


def _rank() -> str:
    """This process's rank in a run on N processes (torchrun's RANK; "0" on one process)."""
    return os.environ.get("RANK", "0")


def _fail(message: str, shared: bool = False) -> None:
    """The one-line error of a user-input problem on stderr, exit code 2. In a run on N processes
    an error every rank raised (``alseg.distributed.is_shared``) is printed by rank 0 alone, and
    one a single rank met names it."""
    rank = _rank()
    if rank != "0" and shared:
        sys.exit(2)
    where = f" (rank {rank})" if rank != "0" else ""
    print(f"alseg: error{where}: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(2)


class _JobPrefix(logging.Formatter):
    """Console lines of a parallel sweep's job start with its number, as Hydra lists the jobs."""

    def __init__(self, inner: logging.Formatter | None, prefix: str):
        super().__init__()
        self.inner, self.prefix = inner or logging.Formatter(), prefix

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + self.inner.format(record)


def _as_sweep_worker(cfg: DictConfig) -> None:
    """A job of a parallel sweep shares the terminal with the others: its console log lines get
    ``[#N]`` (N: Hydra's job number) and progress bars are off (the log shows training progress).
    Its DataLoader workers start as in a plain run: loky makes its own start method the default in
    its workers, and torch's worker processes fail under it (hydra issue #964)."""
    import multiprocessing

    multiprocessing.set_start_method(None, force=True)  # back to the platform's default
    prefix = f"[#{HydraConfig.get().job.num}] "
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and not isinstance(handler.formatter, _JobPrefix):
            handler.setFormatter(_JobPrefix(handler.formatter, prefix))
    cfg.progress = False


def _interrupted(e: KeyboardInterrupt, run_dir: Path) -> int:
    """Say on a line of its own (not after a progress bar's) how to go on; the exit code."""
    name = getattr(e, "signal_name", "SIGINT")
    if (run_dir / "state.json").is_file():
        advice = f"every finished phase is saved in {run_dir}; run the same command again to resume"
    else:
        advice = "nothing was written; run the same command again to start"
    for bar in list(getattr(tqdm, "_instances", ())):  # bars the unwinding left open (leave=False: erased)
        bar.close()
    sys.stdout.flush()
    if _rank() == "0":  # a run on N processes: every one was stopped; rank 0 says so
        print(f"\nalseg: interrupted ({name}); {advice}", file=sys.stderr, flush=True)
    return interrupts.exit_code_of(e)


@_hydra_errors_in_one_line
@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from alseg.engine.loop import ActiveLearningLoop

    run_dir = run_dir_of(cfg)
    if cluster.in_sweep_worker():
        _as_sweep_worker(cfg)
    try:
        # Log lines go above the progress bars (tqdm.write), not into them.
        with interrupts.handled(), cluster.stopping_with_launcher(), logging_redirect_tqdm():
            records = ActiveLearningLoop(cfg, run_dir).run()
    except AlsegError as e:
        _fail(str(e), is_shared(e))
    except OSError as e:  # a file or folder the OS refused (permissions, disk full, ...): name it
        if e.filename is None:
            raise
        from alseg.files import os_error_reason

        _fail(f"{e.filename}: {os_error_reason(e)}; check the path, its permissions and the free disk space")
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (alseg.interrupts), after the write in progress
        code = _interrupted(e, run_dir)
        if cluster.launcher_gone():  # a sweep worker whose launcher was killed: nobody waits for it
            os._exit(code)
        sys.exit(code)
    last = records[-1] if records else {}
    if _rank() == "0":
        log.info("results: %s  plot: %s", run_dir / "results.jsonl", run_dir / "ap_vs_hours.png")
    return last.get("mask_AP")


if __name__ == "__main__":
    main()
