from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsWriter:
    """Receives the full record of a round (round index, counts, seconds, metrics)."""

    def open(self, run_dir: Path, config: dict, resumed_records: list[dict]) -> None: ...
    def write(self, record: dict) -> None: ...
    def close(self) -> None: ...


class WriterGroup(MetricsWriter):
    def __init__(self, writers: list[MetricsWriter]):
        self.writers = list(writers)

    def open(self, run_dir, config, resumed_records):
        for w in self.writers:
            w.open(run_dir, config, resumed_records)

    def write(self, record):
        for w in self.writers:
            w.write(record)

    def close(self):
        for w in self.writers:
            try:
                w.close()
            except Exception as e:  # a logger failing at exit must not hide the run's result
                log.warning("writer %s failed to close: %s", type(w).__name__, e)
