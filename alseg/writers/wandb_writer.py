"""Weights & Biases, offline by default (mode=online when the user asks)."""

from __future__ import annotations

import logging
import os

from alseg.writers.base import MetricsWriter

log = logging.getLogger(__name__)


class WandbWriter(MetricsWriter):
    def __init__(self, project: str = "alseg", mode: str = "offline", entity: str | None = None, tags=None):
        if mode not in ("offline", "online", "disabled"):
            from alseg.errors import ConfigError

            raise ConfigError(f"logger.wandb.mode must be offline, online or disabled, got {mode!r}")
        self.project, self.mode, self.entity, self.tags = project, mode, entity, list(tags or [])
        self.run = None

    def open(self, run_dir, config, resumed_records):
        if self.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        # The wandb run id is the run folder's name, so a resumed run continues the same wandb run.
        run_id = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{run_dir.parent.name}-{run_dir.name}")[:120]
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, dir=str(run_dir),
                              id=run_id, resume="allow", config=config, tags=self.tags, reinit="finish_previous")

    def write(self, record):
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["round"])

    def close(self):
        if self.run is not None:
            self.run.finish()
            self.run = None
