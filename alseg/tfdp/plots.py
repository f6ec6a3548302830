"""Figures for TFDP pruning: per-class score distributions, and kept vs pruned example images.

* ``plot_score_distribution``: one horizontal box per class of the scored instances' scores (for the
  result's variant), the class name and instance count in the tick label.
* ``plot_kept_vs_pruned``: a 2 x n grid; top row the n kept images with the highest image scores,
  bottom row the n pruned images with the lowest, each with its ground-truth masks drawn on it.

Both write a PNG atomically via ``alseg.plots.save_figure`` and return its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from alseg.errors import DataError
from alseg.plots import plt, save_figure
from alseg.tfdp.scoring import ScoreResult


def _mpl_version() -> tuple[int, int]:
    import matplotlib

    try:
        return tuple(int(p) for p in matplotlib.__version__.split(".")[:2])  # type: ignore[return-value]
    except ValueError:
        return (0, 0)


# boxplot(vert=...) is deprecated from matplotlib 3.10 (orientation=... is new in 3.10).
_HORIZONTAL = {"orientation": "horizontal"} if _mpl_version() >= (3, 10) else {"vert": False}


def _is_id(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _class_names(coco_dict: Mapping) -> dict[int, str]:
    """category id -> name (the id as text where a category has no name)."""
    names: dict[int, str] = {}
    cats = coco_dict.get("categories") if isinstance(coco_dict, Mapping) else None
    for c in cats if isinstance(cats, list) else []:
        if isinstance(c, dict) and _is_id(c.get("id")):
            names.setdefault(int(c["id"]), str(c.get("name", c["id"])))
    return names


def _fmt_score(v: float) -> str:
    return f"{v:.4g}"


# --------------------------------------------------------------------------------------------------
# score distribution


def plot_score_distribution(result: ScoreResult, coco_dict: Mapping, path: str | Path) -> Path:
    """Box plot of the instance scores of each class (scored instances only); returns ``path``.

    Classes are listed by category id; a class without any scored instance is left out (the title says
    how many). The score axis is logarithmic when every score is positive and they span more than
    two orders of magnitude (``scs`` of small objects).
    """
    s = result.stats
    scored = s.scored & np.isfinite(result.instance_scores)
    cats, scores = s.category_id[scored], result.instance_scores[scored]
    names = _class_names(coco_dict)
    present = sorted(set(cats.tolist()))
    data = [scores[cats == c] for c in present]
    labels = [f"{names.get(c, str(c))} (n={len(d)})" for c, d in zip(present, data)]
    n_empty = len(set(names) - set(present))

    height = max(3.0, 0.32 * len(present) + 1.6)
    fig, ax = plt.subplots(figsize=(8, height))
    title = f"TFDP instance scores per class: {result.variant}, contour {result.contour} ({len(scores)} instances)"
    if n_empty:
        title += f"\n{n_empty} class(es) without any scored instance not shown"
    ax.set_title(title, fontsize=10)
    if present:
        # Top to bottom in category id order.
        ax.boxplot(data[::-1], **_HORIZONTAL, showfliers=True, widths=0.6,
                   flierprops={"markersize": 2, "alpha": 0.4})
        ax.set_yticks(range(1, len(present) + 1))
        ax.set_yticklabels(labels[::-1], fontsize=8)
        lo, hi = float(scores.min()), float(scores.max())
        if lo > 0 and hi / lo > 100:
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no scored instance", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel(f"instance score ({result.variant})")
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# kept vs pruned examples


def _pick(result: ScoreResult, kept_ids: set[int], n: int) -> tuple[list[int], list[int]]:
    """The n kept images with the highest scores and the n pruned ones with the lowest (ties: smaller id)."""
    score = result.image_score_map()
    kept = set(kept_ids)
    unknown = sorted(kept - set(score))
    if unknown:
        raise DataError(f"kept image id {unknown[0]} is not an image of the scored dataset "
                        f"({len(unknown)} unknown id(s))")
    top = sorted(kept, key=lambda i: (-score[i], i))[:n]
    pruned = sorted((i for i in score if i not in kept), key=lambda i: (score[i], i))[:n]
    return top, pruned


def _subset_dict(coco_dict: Mapping, image_ids: set[int]) -> dict:
    """A small, clean COCO dict holding only the given images and their usable annotations, so that
    ``CocoDataset`` does not stop on problems elsewhere in the file (TFDP tolerates and counts them)."""
    images, seen = [], set()
    for im in coco_dict.get("images") or []:
        if isinstance(im, dict) and _is_id(im.get("id")) and im["id"] in image_ids and im["id"] not in seen:
            seen.add(im["id"])
            images.append(im)
    cats = [{"id": cid, "name": name} for cid, name in _class_names(coco_dict).items()]
    cat_ids = {c["id"] for c in cats}
    anns = [a for a in coco_dict.get("annotations") or []
            if isinstance(a, dict) and _is_id(a.get("image_id")) and a["image_id"] in seen
            and _is_id(a.get("category_id")) and a["category_id"] in cat_ids
            and "id" in a and not a.get("iscrowd", 0)]
    return {"images": images, "annotations": anns, "categories": cats}


def plot_kept_vs_pruned(result: ScoreResult, coco_dict: Mapping, image_dir: str | Path | None,
                        kept_ids: Iterable[int], path: str | Path, n: int = 4,
                        exif_orientation: str = "apply") -> Path:
    """Grid of example images with their ground-truth masks; returns ``path``.

    Top row: the ``n`` kept images with the highest image scores; bottom row: the ``n`` pruned images
    with the lowest. Each panel is titled with the image id and its score. Images are read by
    ``alseg.data.images.read_image`` (as training reads them) in the EXIF frame ``exif_orientation``
    (apply | ignore | error, see ``dataset.exif_orientation``), so masks and pixels share one frame.
    Raises ``DataError`` when ``image_dir`` is missing or an image cannot be read, is truncated, or
    has another size than the annotation file says.
    """
    from alseg.data.coco import CocoDataset
    from alseg.data.images import read_image
    from alseg.tools.visualize import draw_instances

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"number of example images must be an integer >= 1, got {n!r}")
    if image_dir is None:
        raise DataError("the example images need an image folder (none given)")
    kept_ids = {int(i) for i in kept_ids}
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder not found")
    top, pruned = _pick(result, kept_ids, int(n))
    if not top and not pruned:
        raise DataError("no image to show (the scored dataset has no image)")
    ds = CocoDataset(_subset_dict(coco_dict, set(top) | set(pruned)), image_dir, source="examples",
                     invalid_annotations="skip", check_images=False, exif_orientation=exif_orientation)
    score = result.image_score_map()

    def panel(ax, iid: int | None, what: str) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        if iid is None:
            ax.text(0.5, 0.5, f"(no {what} image)", ha="center", va="center", transform=ax.transAxes)
            for side in ax.spines.values():
                side.set_visible(False)
            return
        rec = ds.by_id.get(iid)
        if rec is None:  # an image entry without file_name / size: cannot be shown
            raise DataError(f"image id {iid}: not a usable image entry (needs 'file_name', 'width', 'height')")
        # DataError (one line) when missing, unreadable, truncated or not of the annotated size
        image = read_image(rec.path, rec.exif_orientation, (rec.height, rec.width), rec.image_id)
        labels = [i.label for i in rec.instances]
        drawn = draw_instances(image, rec.decode_masks() if labels else None, labels, ds.class_names)
        ax.imshow(drawn)
        ax.set_title(f"{what}: id {iid}, score {_fmt_score(score[iid])}\n{len(labels)} instance(s)", fontsize=9)

    cols = int(n)
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols, 7.4), squeeze=False)
    for row, (ids, what) in enumerate(((top, "kept"), (pruned, "pruned"))):
        for col in range(cols):
            panel(axes[row, col], ids[col] if col < len(ids) else None, what)
    axes[0, 0].set_ylabel("kept: highest scores", fontsize=10)
    axes[1, 0].set_ylabel("pruned: lowest scores", fontsize=10)
    fig.suptitle(f"TFDP {result.variant}: kept {len(kept_ids)} of {len(result.image_ids)} images", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)
