"""results.jsonl (the source of truth for comparisons), results.csv and the AP-vs-hours plot.

A metric that could not be computed is NaN in a record (e.g. APl without any large object); it is
written as ``null`` in results.jsonl (which stays strict JSON) and as an empty cell in results.csv.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from alseg.files import atomic_write_text, missing_as_none
from alseg.writers.base import MetricsWriter


class JsonlWriter(MetricsWriter):
    """One line per round. Rewritten whole (atomically) so a redone round never appears twice; on
    open, brought back to the resumed records when it differs (a run redoing removed rounds)."""

    filename = "results.jsonl"

    def open(self, run_dir, config, resumed_records):
        self.path = Path(run_dir) / self.filename
        self.records = list(resumed_records)
        if self.path.is_file() or self.records:
            text = self.render(self.records)
            try:
                same = self.path.read_text() == text
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                atomic_write_text(self.path, text)

    def write(self, record):
        self.records = [r for r in self.records if r["round"] != record["round"]] + [record]
        atomic_write_text(self.path, self.render(self.records))

    @staticmethod
    def render(records: list[dict]) -> str:
        return "".join(json.dumps(missing_as_none(r), sort_keys=True, allow_nan=False) + "\n" for r in records)


class CsvWriter(JsonlWriter):
    filename = "results.csv"

    @staticmethod
    def render(records: list[dict]) -> str:
        if not records:
            return ""
        cols = list(dict.fromkeys(k for r in records for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(missing_as_none(records))  # None: an empty cell
        return buf.getvalue()


class PlotWriter(JsonlWriter):
    """ap_vs_hours.png: mask AP and AP50 against labeled images and annotation hours, redrawn after
    every round. Its title names the strategy (``alseg.plots.strategy_label``), dataset, seed and
    run folder, from the config and run folder given to ``open``; the legend names the strategy."""

    filename = "ap_vs_hours.png"

    def open(self, run_dir, config, resumed_records):
        from alseg.plots import run_title, strategy_label

        self.path = Path(run_dir) / self.filename
        self.records = list(resumed_records)
        config = config if isinstance(config, dict) else {}
        self.label = strategy_label(config["strategy"]) if "strategy" in config else "this run"
        self.title = run_title(config, run_dir)

    def write(self, record):
        from alseg.plots import plot_ap_vs_cost

        self.records = [r for r in self.records if r["round"] != record["round"]] + [record]
        plot_ap_vs_cost({self.label: [self.records]}, self.path, title=self.title, count_seeds=False)
