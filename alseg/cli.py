"""`alseg`: the Hydra entry point. With no argument it runs the default experiment."""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from alseg.errors import AlsegError

log = logging.getLogger("alseg")

# Configs live in the repository's configs/ (editable install) or, for a wheel, inside the package.
_here = Path(__file__).resolve().parent
CONFIG_DIR = str(_here / "configs" if (_here / "configs").is_dir() else _here.parent / "configs")


def run_dir_of(cfg: DictConfig) -> Path:
    name = cfg.get("run_name") or HydraConfig.get().job.override_dirname or "default"
    name = name.replace("/", "_")
    if len(name) > 120:  # file systems limit names to 255 bytes; keep it readable and unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return Path(cfg.paths.runs) / str(cfg.experiment_name) / name


def _fail(message: str) -> None:
    """The one-line error of a user-input problem on stderr, exit code 2."""
    print("alseg: error: " + " ".join(message.split()), file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from alseg.engine.loop import ActiveLearningLoop

    run_dir = run_dir_of(cfg)
    try:
        records = ActiveLearningLoop(cfg, run_dir).run()
    except AlsegError as e:
        _fail(str(e))
    except OSError as e:  # a file or folder the OS refused (permissions, disk full, ...): name it
        if e.filename is None:
            raise
        from alseg.files import os_error_reason

        _fail(f"{e.filename}: {os_error_reason(e)}; check the path, its permissions and the free disk space")
    except KeyboardInterrupt:
        print(f"alseg: interrupted; run the same command again to resume {run_dir}", file=sys.stderr)
        sys.exit(130)
    last = records[-1] if records else {}
    log.info("results: %s  plot: %s", run_dir / "results.jsonl", run_dir / "ap_vs_hours.png")
    return last.get("mask_AP")


if __name__ == "__main__":
    main()
