"""The per-round table on the console."""

from __future__ import annotations

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


def results_table(records: list[dict], title: str = "") -> Table:
    table = Table(title=title or None)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for r in records:
        table.add_row(*(fmt.format(r[k]) if k in r else "-" for k, _, fmt in COLUMNS))
    return table


class ConsoleWriter(MetricsWriter):
    def __init__(self):
        self.console = Console()

    def open(self, run_dir, config, resumed_records):
        self.records = list(resumed_records)
        self.title = str(run_dir)

    def write(self, record):
        self.records = [r for r in self.records if r["round"] != record["round"]] + [record]
        self.console.print(results_table(self.records, self.title))
