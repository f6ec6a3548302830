"""Exploratory look at a COCO annotation file: instances and images per class, instance sizes.

    python tools/eda.py --ann instances_train2017.json [--classes person cat dog car] --out counts.png

Prints a table (instances, images holding the class, small / medium / large instances by the COCO
area thresholds 32² and 96²) and saves a bar plot of the classes with at least one instance (the
title says how many without any are left out): instances per class, each bar split by size, above
images per class, in the table's order. Crowd regions are not instances (as in training) and are
counted apart.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from alseg.data.coco import CocoDataset, load_json
from alseg.errors import AlsegError
from alseg.plots import save_figure

PROG = "eda"
SMALL_MAX = 32**2  # COCO: small < 32², medium < 96², large otherwise (area of the mask, pixels)
MEDIUM_MAX = 96**2
SIZES = ("small", "medium", "large")


def size_bin(area: float) -> str:
    if area < SMALL_MAX:
        return "small"
    if area < MEDIUM_MAX:
        return "medium"
    return "large"


@dataclass
class ClassStats:
    instances: int = 0
    images: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIZES, 0))


@dataclass
class DatasetStats:
    source: str
    num_images: int
    empty_images: int  # images with no instance of the chosen classes
    crowd: int  # crowd regions of the chosen classes (not instances)
    per_class: dict[str, ClassStats]
    skipped: dict[str, int]

    @property
    def num_instances(self) -> int:
        return sum(c.instances for c in self.per_class.values())

    def sizes(self) -> dict[str, int]:
        return {s: sum(c.sizes[s] for c in self.per_class.values()) for s in SIZES}

    def counts(self) -> dict[str, int]:
        return {n: c.instances for n, c in self.per_class.items()}

    def images_per_class(self) -> dict[str, int]:
        return {n: c.images for n, c in self.per_class.items()}


def dataset_stats(ds: CocoDataset) -> DatasetStats:
    """Instances, images and size bins per class of a CocoDataset (non-crowd instances)."""
    per_class = {n: ClassStats() for n in ds.class_names}
    empty = 0
    for rec in ds.images:
        if not rec.instances:
            empty += 1
        seen = set()
        for inst in rec.instances:
            name = ds.class_names[inst.label - 1]
            st = per_class[name]
            st.instances += 1
            st.sizes[size_bin(inst.area)] += 1
            seen.add(name)
        for name in seen:
            per_class[name].images += 1
    ids = set(ds.by_id)
    crowd = sum(1 for a in ds._raw["annotations"]
                if a.get("iscrowd", 0) and a.get("image_id") in ids and a.get("category_id") in ds.cat_id_to_label)
    return DatasetStats(ds.source, len(ds.images), empty, crowd, per_class, dict(ds.skipped))


def load_stats(ann: str | Path, classes: Sequence[str] | None = None, strict: bool = False) -> DatasetStats:
    """Stats of a COCO JSON file. Images are not opened; invalid annotations are skipped (and counted)
    unless ``strict``."""
    ann = Path(ann)
    ds = CocoDataset(load_json(ann), ann.parent, source=str(ann), class_names=list(classes) if classes else None,
                     invalid_annotations="error" if strict else "skip", check_images=False)
    return dataset_stats(ds)


def print_stats(stats: DatasetStats, order: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{Path(stats.source).name}: {stats.num_images} images, {stats.num_instances} instances")
    for h in ("class", "instances", "images", "small", "medium", "large"):
        table.add_column(h, justify="left" if h == "class" else "right")
    for name in order:
        c = stats.per_class[name]
        table.add_row(name, str(c.instances), str(c.images), *(str(c.sizes[s]) for s in SIZES))
    tot = stats.sizes()
    table.add_section()
    table.add_row("all", str(stats.num_instances), str(stats.num_images - stats.empty_images),
                  *(str(tot[s]) for s in SIZES))
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)
    n = max(stats.num_instances, 1)
    print("instance sizes (COCO area thresholds 32², 96²): "
          + ", ".join(f"{s} {tot[s]} ({100 * tot[s] / n:.1f}%)" for s in SIZES))
    print(f"images without any instance of these classes: {stats.empty_images}; crowd regions (not counted): "
          f"{stats.crowd}")
    if stats.skipped:
        print("skipped invalid annotations: " + ", ".join(f"{k}: {v}" for k, v in stats.skipped.items()))


def class_order(stats: DatasetStats, sort: str = "count") -> list[str]:
    """Class names of ``stats`` in order: "count" most instances first (ties: more images first,
    then category id order), "name" alphabetical, "id" category id order. Raises ValueError for
    another ``sort``."""
    order = list(stats.per_class)  # category id order
    if sort == "count":
        order.sort(key=lambda n: (-stats.per_class[n].instances, -stats.per_class[n].images))
    elif sort == "name":
        order.sort()
    elif sort != "id":
        raise ValueError(f"class_order: sort must be count, name or id, got {sort!r}")
    return order


def plot_table(stats: DatasetStats, order: Sequence[str]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """What the bar plot shows: (rows, omitted). rows: (class, instances, images holding it) of
    the classes of ``order`` with at least one instance, in that order; omitted: the others."""
    rows = [(n, stats.per_class[n].instances, stats.per_class[n].images) for n in order]
    return [r for r in rows if r[1] > 0], [n for n, k, _ in rows if k == 0]


def counts_figure(stats: DatasetStats, order: Sequence[str], title: str | None = None):
    """The figure of ``plot_counts`` (matplotlib Figure, open; the caller saves or closes it): for
    the rows of ``plot_table(stats, order)``, instances per class stacked small / medium / large
    (top) and images per class (bottom), counts on the bars up to 40 classes; the title says how
    many classes without any instance are left out."""
    from matplotlib.ticker import MaxNLocator

    from alseg.plots import plt

    rows, omitted = plot_table(stats, order)
    names = [r[0] for r in rows]
    k = len(names)
    fig = plt.figure(figsize=(min(max(6.0, 0.22 * k + 2), 20), 7.5), layout="constrained")
    ax, ax_img = fig.subplots(2, 1, sharex=True)
    x = np.arange(k)
    bottom = np.zeros(k)
    colors = {"small": "#9ecae1", "medium": "#4292c6", "large": "#08519c"}
    for s in SIZES:
        v = np.array([stats.per_class[n].sizes[s] for n in names], float)
        ax.bar(x, v, bottom=bottom, color=colors[s], label=f"{s}", width=0.8)
        bottom += v
    images = np.array([r[2] for r in rows], float)
    ax_img.bar(x, images, color="#74c476", width=0.8)
    if k <= 40:
        for a, heights in ((ax, bottom), (ax_img, images)):
            for xi, tot in zip(x, heights):
                a.text(xi, tot, str(int(tot)), ha="center", va="bottom", fontsize=8)
    ax_img.set_xticks(x)
    ax_img.set_xticklabels(names, rotation=45 if k > 6 else 0, ha="right" if k > 6 else "center", fontsize=8)
    ax.set_ylabel("instances")
    ax_img.set_ylabel("images holding the class")
    if k:
        ax.legend(title="size (COCO area)", fontsize=8)
    for a in (ax, ax_img):
        a.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
        a.grid(axis="y", alpha=0.3)
        a.margins(y=0.1)
    if title is None:
        title = (f"{Path(stats.source).name}: {stats.num_instances} instances of {k} classes in "
                 f"{stats.num_images - stats.empty_images} of {stats.num_images} images")
        if omitted:
            shown = ", ".join(omitted[:5]) + (", ..." if len(omitted) > 5 else "")
            plural = "es" if len(omitted) > 1 else ""
            title += f"\n{len(omitted)} class{plural} without any instance not shown ({shown})"
    width = int(fig.get_figwidth() * 100 / 7)  # characters of 10-point text across the figure at 100 dpi
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=10)
    return fig


def plot_counts(stats: DatasetStats, order: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """Write ``counts_figure(stats, order, title)`` to ``path`` (PNG, 100 dpi); returns the path.
    Raises DataError when it cannot be written."""
    return save_figure(counts_figure(stats, order, title), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ann", required=True, type=Path, help="COCO instances JSON")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="only these classes (default: all)")
    p.add_argument("--out", type=Path, default=Path("counts.png"), help="bar plot PNG (default: counts.png)")
    p.add_argument("--sort", choices=("count", "name", "id"), default="count",
                   help="class order of table and plot: most instances first (default), by name, or by category id")
    p.add_argument("--strict", action="store_true", help="fail on an invalid annotation instead of skipping it")
    args = p.parse_args(argv)
    try:
        stats = load_stats(args.ann, args.classes, strict=args.strict)
        order = class_order(stats, args.sort)
        print_stats(stats, order)
        plot_counts(stats, order, args.out)
    except AlsegError as e:
        p.exit(2, f"{PROG}: error: {' '.join(str(e).split())}\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
