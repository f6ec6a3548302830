import csv
import json

import pytest

from alseg.errors import ConfigError
from alseg.writers.base import WriterGroup
from alseg.writers.console import results_table
from alseg.writers.files import CsvWriter, JsonlWriter, PlotWriter
from alseg.writers.wandb_writer import WandbWriter


def _rec(k, ap):
    return {"round": k, "labeled_images": 10 * (k + 1), "hours": 0.5 * (k + 1), "mask_AP": ap, "mask_AP50": ap + 0.2, "box_AP": ap}


def test_files_hold_one_line_per_round_even_when_a_round_is_redone(tmp_path):
    group = WriterGroup([JsonlWriter(), CsvWriter(), PlotWriter()])
    group.open(tmp_path, {}, [_rec(0, 0.1)])
    group.write(_rec(1, 0.2))
    group.write(_rec(1, 0.25))  # round 1 evaluated again after a resume
    group.close()
    lines = [json.loads(l) for l in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["round"], r["mask_AP"]) for r in lines] == [(0, 0.1), (1, 0.25)]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["mask_AP"] for r in rows] == ["0.1", "0.25"]
    assert (tmp_path / "ap_vs_hours.png").stat().st_size > 1000


def test_console_table_columns():
    t = results_table([_rec(0, 0.1234)])
    assert [c.header for c in t.columns] == ["round", "labeled images", "annotation hours", "mask AP", "mask AP50", "box AP"]
    assert list(t.columns[3].cells) == ["0.123"]


def test_console_table_shows_partial_labels_when_there_are_some():
    apis = {**_rec(0, 0.2), "labeled_images": 0, "images_with_labels": 30, "labeled_masks": 0,
            "labeled_boxes": 90, "labeled_points": 90}
    t = results_table([apis])
    assert [c.header for c in t.columns] == ["round", "labeled images", "images with labels", "points",
                                             "annotation hours", "mask AP", "mask AP50", "box AP"]
    assert list(t.columns[3].cells) == ["90"]
    full = {**_rec(0, 0.2), "images_with_labels": 10, "labeled_masks": 25, "labeled_points": 0}
    assert len(results_table([full]).columns) == 6


def test_wandb_offline_run_lives_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    w = WandbWriter(project="alseg-test", mode="offline")
    w.open(tmp_path, {"seed": 0}, [])
    w.write(_rec(0, 0.1))
    w.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    with pytest.raises(ConfigError, match="logger.wandb.mode"):
        WandbWriter(mode="sometimes")
