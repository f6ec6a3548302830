"""Every label the annotator revealed, with the round that revealed it. The training set of each
round, the pool split and the seconds spent are all derived from it.

A run folder keeps each round's labels in its own JSON-lines file, written once when the round's
selection is made: an APIS ledger on COCO grows by ~860k points a step, too much to rewrite at
every checkpoint of the run state (benchmarks/ledger_io.py).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict

from alseg.annotation.oracle import Label
from alseg.config_check import is_int, is_number
from alseg.data.torch_dataset import ImageView
from alseg.files import atomic_write_text, read_jsonl

KINDS = ("image", "mask", "box", "point")


_NUMBER = (int, float)


def label_problem(e: dict) -> str | None:
    """Why a label record read back from a file is not one ``Ledger.add`` writes, or None."""
    kind, seconds = e.get("kind"), e.get("seconds", 0.0)
    if (kind == "point" and type(e.get("image_id")) is int and type(e.get("ann_id")) is int
            and type(e.get("x")) in _NUMBER and type(e.get("y")) in _NUMBER and e.get("value") in (0, 1)
            and type(seconds) in _NUMBER):
        return None  # the common case at scale (APIS: one point per instance per step), checked at once
    if kind not in KINDS:
        return f"'kind' must be one of {KINDS}, got {kind!r}"
    if not is_int(e.get("image_id")):
        return "'image_id' must be an integer"
    if kind != "image" and not is_int(e.get("ann_id")):
        return f"a {kind} label needs an integer 'ann_id'"
    if kind == "point" and not (is_number(e.get("x")) and is_number(e.get("y")) and e.get("value") in (0, 1)):
        return "a point label needs numbers 'x', 'y' and a 'value' of 0 or 1"
    if not is_number(seconds):
        return "'seconds' must be a number"
    return None


class Ledger:
    def __init__(self, entries: list[dict] | None = None):
        self.entries: list[dict] = list(entries or [])

    def add(self, labels: list[Label], round_index: int) -> None:
        for lab in labels:
            d = {k: v for k, v in asdict(lab).items() if v is not None}
            d["round"] = round_index
            self.entries.append(d)

    def drop_round(self, round_index: int) -> None:
        """Forget what a round revealed (used when a round is redone on resume)."""
        self.entries = [e for e in self.entries if e["round"] != round_index]

    def save_round(self, round_index: int, path: str | os.PathLike) -> None:
        """Write the labels revealed in ``round_index`` to ``path`` (JSON lines, atomically)."""
        lines = (json.dumps({k: v for k, v in e.items() if k != "round"}, separators=(",", ":"))
                 for e in self.entries if e["round"] == round_index)
        atomic_write_text(path, "".join(line + "\n" for line in lines))

    def load_round(self, round_index: int, path: str | os.PathLike) -> None:
        """Add the labels of ``round_index`` read from a file written by ``save_round``. Nothing is
        added when the file is missing, truncated or holds a line that is not such a label:
        ``alseg.files.DamagedFileError`` naming the file and line."""
        entries = read_jsonl(path, label_problem)
        for e in entries:
            e["round"] = round_index
        self.entries.extend(entries)

    def seconds(self, up_to_round: int | None = None) -> float:
        return float(sum(e.get("seconds", 0.0) for e in self.entries if up_to_round is None or e["round"] <= up_to_round))

    def fully_labeled_images(self) -> set[int]:
        return {e["image_id"] for e in self.entries if e["kind"] == "image"}

    def counts(self) -> dict[str, int]:
        c = defaultdict(int)
        for e in self.entries:
            c[e["kind"]] += 1
        images_touched = {e["image_id"] for e in self.entries}
        return {
            "labeled_images": len(self.fully_labeled_images()),
            "images_with_labels": len(images_touched),
            "labeled_masks": c["mask"],
            "labeled_boxes": c["box"],
            "labeled_points": c["point"],
        }

    def training_views(self) -> dict[int, ImageView]:
        views: dict[int, ImageView] = defaultdict(ImageView)
        for e in self.entries:
            v = views[e["image_id"]]
            kind = e["kind"]
            if kind == "image":
                v.full_image = True
            elif kind == "mask":
                v.mask_ann_ids.add(e["ann_id"])
            elif kind == "box":
                v.box_ann_ids.add(e["ann_id"])
            elif kind == "point":
                v.box_ann_ids.add(e["ann_id"])
                v.points.append((e["ann_id"], e["x"], e["y"], e["value"]))
        return dict(views)
