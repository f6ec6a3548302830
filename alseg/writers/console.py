"""The per-round table on the console."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from alseg.writers.base import MetricsWriter

COLUMNS = (
    ("round", "round", "{}"),
    ("labeled_images", "labeled images", "{}"),
    ("hours", "annotation hours", "{:.2f}"),
    ("mask_AP", "mask AP", "{:.3f}"),
    ("mask_AP50", "mask AP50", "{:.3f}"),
    ("box_AP", "box AP", "{:.3f}"),
)


# Shown after "labeled images" when some record has partial labels (instance or point queries).
PARTIAL_COLUMNS = (
    ("images_with_labels", "images with labels", "{}"),
    ("labeled_masks", "masks", "{}"),
    ("labeled_points", "points", "{}"),
)


def _columns(records: list[dict]) -> list[tuple[str, str, str]]:
    partial = any(r.get("images_with_labels", 0) != r.get("labeled_images", 0) for r in records)
    extra = [c for c in PARTIAL_COLUMNS if partial and any(r.get(c[0]) for r in records)]
    return [*COLUMNS[:2], *extra, *COLUMNS[2:]]


def _cell(value, fmt: str) -> str:
    """'-' for a missing value: absent, None (null in results.jsonl) or NaN (not computable)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def results_table(records: list[dict], title: str = "") -> Table:
    table = Table(title=title or None)
    columns = _columns(records)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for r in records:
        table.add_row(*(_cell(r.get(k), fmt) for k, _, fmt in columns))
    return table


class ConsoleWriter(MetricsWriter):
    def __init__(self):
        self.console = Console()
        if not self.console.is_terminal:  # a log file or a pipe: no 80-column wrapping of the headers
            self.console.width = 160

    def open(self, run_dir, config, resumed_records):
        self.records = list(resumed_records)
        self.title = str(run_dir)

    def write(self, record):
        self.records = [r for r in self.records if r["round"] != record["round"]] + [record]
        self.console.print(results_table(self.records, self.title))
