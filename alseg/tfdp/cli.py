"""``alseg-prune``: training-free dataset pruning (TFDP) of a COCO instance segmentation file.

    alseg-prune --ann instances_train2017.json --variant si_cb_scs --keep 0.5 \\
        --out kept.json --scores scores.csv [--instance-scores inst.csv]

Writes the kept subset as COCO JSON, a CSV ``image_id,score,kept,rank`` (every image, best first)
and optionally per-instance scores; prints images per class before/after, problems, the time of
each step (load, scoring, select, write) and the peak memory of the command and of its workers.

Every option, output destination (not a folder, in a writable folder) and the --images folder are
checked before any work; the outputs are then made in temporary files and moved into place
together only when all of them are made, so a failure at any step (bad data, a missing example
image) leaves every earlier output file as it was. Errors are one line naming the file (exit 2).

Speed: the file is parsed with msgspec, the annotations left as JSON text that the scoring workers
parse, validate and score (``alseg.tfdp.scoring.score_raw``); the kept annotations are copied to
``--out`` as the input wrote them. With ``--plot-*`` the whole file is parsed here (the figures
need the annotations). Scores are cached by the file's sha1, the variant, the contour option and
the scoring version (``--cache-dir``, ``--no-cache``).

Figures (``alseg.tfdp.plots``): ``--plot-scores scores.png`` (instance scores per class) and
``--plot-examples examples.png --images DIR [--num-examples 4]`` (kept images with the highest
scores above pruned images with the lowest, with their ground-truth masks).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alseg import interrupts
from alseg.errors import AlsegError, ConfigError, DataError
from alseg.files import StagedFiles, WriteError, make_dirs, printable, write_buffers
from alseg.tfdp.jsonio import dump_json, gc_paused, read_coco, read_coco_lazy
from alseg.tfdp.scoring import (
    CONTOURS,
    DEFAULT_VARIANT,
    INVALID_ANNOTATION,
    INVALID_IMAGE_SIZE,
    STATUS_NAMES,
    UNKNOWN_CATEGORY,
    UNKNOWN_IMAGE,
    VARIANTS,
    ScoreResult,
    default_cache_dir,
    kept_count,
    peak_rss_kib,
    prune_coco,
    prune_raw,
    rank_images,
    rank_order,
    score_loaded,
)

PROG = "alseg-prune"


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Training-free dataset pruning (TFDP) by mask shape complexity: keep the images "
        "whose instances have the most complex shapes.",
    )
    p.add_argument("--ann", required=True, help="COCO instances JSON to prune")
    p.add_argument("--variant", default=DEFAULT_VARIANT, choices=VARIANTS, help="score (default: %(default)s)")
    sel = p.add_mutually_exclusive_group(required=True)
    sel.add_argument("--keep", type=_ratio, help="kept ratio in (0, 1]; pruning rate = 1 - keep")
    sel.add_argument("--count", type=int, help="number of images to keep")
    p.add_argument("--out", required=True, help="kept subset, COCO JSON")
    p.add_argument("--scores", required=True, help="image scores CSV: image_id,score,kept,rank")
    p.add_argument("--instance-scores", help="per-instance CSV: ann_id,image_id,category_id,perimeter,area,score,status")
    p.add_argument("--contour", default="largest", choices=CONTOURS, help="largest external contour, or all of them summed")
    p.add_argument("--workers", type=int, default=None, help="scoring processes (default: CPU count)")
    p.add_argument("--cache-dir", default=None, help=f"score cache (default: {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the score cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--plot-scores", metavar="PATH", help="PNG: distribution of the instance scores per class")
    p.add_argument("--plot-examples", metavar="PATH",
                   help="PNG: kept images with the highest scores above pruned images with the lowest, "
                        "with their ground-truth masks (needs --images)")
    p.add_argument("--images", metavar="DIR", help="image folder of --ann (for --plot-examples)")
    p.add_argument("--num-examples", type=int, default=4, metavar="N",
                   help="images per row of --plot-examples (default: %(default)s)")
    return p


def _atomic_write(path: Path, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
    """Write a file (text, or bytes with ``binary``) via a temporary file in the same folder and
    os.replace."""
    staged = StagedFiles()
    try:
        staged.write(path, write, binary)
        staged.commit()
    finally:
        staged.discard()


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.10g}"


def write_image_scores(path: Path, result: ScoreResult, kept: set[int], staged: StagedFiles | None = None) -> None:
    """``image_id,score,kept,rank`` per image, best first (``rank_images``); an image without a
    score has an empty score field. ``staged``: written to its temporary file, moved into place by
    ``staged.commit()``; else written at once (atomically)."""
    ids, scores = result.image_ids, result.image_scores
    order = rank_order(ids, scores)
    ids, scores = ids[order].tolist(), scores[order].tolist()
    is_kept = np.isin(ids, np.fromiter(kept, np.int64, len(kept))).astype(np.int8).tolist()
    fmt = "{:.10g}".format

    def write(f):
        f.write("image_id,score,kept,rank\r\n")  # csv.writer's line ending, as before
        f.writelines([f"{i},{'' if s != s else fmt(s)},{k},{r}\r\n"
                      for r, (i, s, k) in enumerate(zip(ids, scores, is_kept), 1)])

    staged.write(path, write) if staged is not None else _atomic_write(path, write)


def write_instance_scores(path: Path, result: ScoreResult, staged: StagedFiles | None = None) -> None:
    """``ann_id,image_id,category_id,perimeter,area,score,status`` per non-crowd annotation
    (``staged`` as in ``write_image_scores``)."""
    s = result.stats
    rows = np.flatnonzero(~s.crowd)

    def write(f):
        w = csv.writer(f)
        w.writerow(["ann_id", "image_id", "category_id", "perimeter", "area", "score", "status"])
        cols = (s.ann_id[rows].tolist(), s.image_id[rows].tolist(), s.category_id[rows].tolist(),
                s.perimeter[rows].tolist(), s.area[rows].tolist(), result.instance_scores[rows].tolist(),
                s.status[rows].tolist())
        for a, i, c, p, ar, sc, st in zip(*cols):
            w.writerow([a, i, c, _fmt(p), _fmt(ar), _fmt(sc), STATUS_NAMES[st]])

    staged.write(path, write) if staged is not None else _atomic_write(path, write)


def images_per_class(result: ScoreResult, image_ids: np.ndarray | None = None) -> dict[int, int]:
    """category id -> number of images holding a (non-crowd) instance of it, among image_ids."""
    s = result.stats
    holds = ~s.crowd & ~np.isin(s.status, (INVALID_ANNOTATION, UNKNOWN_IMAGE, INVALID_IMAGE_SIZE, UNKNOWN_CATEGORY))
    img, cat = s.image_id[holds], s.category_id[holds]
    if image_ids is not None:
        sel = np.isin(img, image_ids)
        img, cat = img[sel], cat[sel]
    order = np.lexsort((img, cat))  # distinct (category, image) pairs: sorted, then first of each run
    cat, img = cat[order], img[order]
    first = np.ones(len(cat), dtype=bool)
    first[1:] = (cat[1:] != cat[:-1]) | (img[1:] != img[:-1])
    cats, counts = np.unique(cat[first], return_counts=True)
    return dict(zip(cats.tolist(), counts.tolist()))


_NAME_WIDTH = 40


def _display_name(name) -> str:
    """A category name as the summary prints it: one line of printable text whatever the file holds
    (``alseg.files.printable``), at most ``_NAME_WIDTH`` characters."""
    text = printable(name)
    return text if len(text) <= _NAME_WIDTH else text[:_NAME_WIDTH - 3] + "..."


def _summary(data: dict, result: ScoreResult, kept: list[int], times: dict[str, float], t0: float) -> str:
    """What was scored and kept, problems, images per class, then the time of each step (load,
    scoring, select, write, total since ``t0``) and the peak memory of this process and of the
    scoring workers."""
    n_img = len(result.image_ids)
    lines = []
    src = "cache" if result.from_cache else f"{times['scoring']:.2f} s"
    lines.append(
        f"scored {result.n_scored} instances ({result.n_crowd} crowd regions skipped) in {n_img} images "
        f"[variant {result.variant}, contour {result.contour}, {src}]"
    )
    pct = 100.0 * len(kept) / n_img if n_img else 0.0
    lines.append(f"kept {len(kept)} of {n_img} images ({pct:.1f}%, pruning rate {100 - pct:.1f}%)")
    if result.problems:
        lines.append("problems: " + ", ".join(f"{k}={v}" for k, v in result.problems.items()))
    else:
        lines.append("problems: none")
    before = images_per_class(result)
    after = images_per_class(result, np.asarray(kept, dtype=np.int64))
    names = {c["id"]: _display_name(c.get("name", c["id"])) for c in data.get("categories", [])
             if isinstance(c, dict) and "id" in c}
    width = max([len(n) for n in names.values()] + [5])
    empty = [cid for cid in names if not before.get(cid)]
    lines.append("images per class (before -> after)"
                 + (f"; {len(empty)} classes without any image not listed:" if empty else ":"))
    for cid in sorted(c for c in set(names) | set(before) if before.get(c)):
        b, a = before.get(cid, 0), after.get(cid, 0)
        share = f"{100.0 * a / b:5.1f}%" if b else "    -"
        lines.append(f"  {names.get(cid, str(cid)):<{width}} {b:7d} -> {a:7d}  {share}")
    steps = ", ".join(f"{k} {v:.2f} s" + (" (cached)" if k == "scoring" and result.from_cache else "")
                      for k, v in times.items())
    lines.append(f"time: {steps}, total {time.perf_counter() - t0:.2f} s")
    workers = f", largest scoring worker {result.worker_peak_rss_kib / 1024:.0f} MiB" if result.worker_peak_rss_kib else ""
    lines.append(f"memory: peak RSS {peak_rss_kib() / 1024:.0f} MiB (this process){workers}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    ann, out, scores_csv = Path(args.ann), Path(args.out), Path(args.scores)
    if args.keep is not None and not (0.0 < args.keep <= 1.0):
        raise ConfigError(f"--keep must be in (0, 1] (pruning rate = 1 - keep), got {args.keep}")
    if args.count is not None and args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.plot_examples and not args.images:
        raise ConfigError("--plot-examples needs --images DIR (the image folder of --ann)")
    if args.num_examples < 1:
        raise ConfigError(f"--num-examples must be >= 1, got {args.num_examples}")
    if args.plot_examples and not Path(args.images).is_dir():
        raise ConfigError(f"--images {args.images}: no such folder")
    plots = [Path(p) for p in (args.plot_scores, args.plot_examples) if p]
    outputs = [out, scores_csv] + ([Path(args.instance_scores)] if args.instance_scores else []) + plots
    resolved = [p.resolve() for p in outputs]
    if ann.resolve() in resolved:
        raise ConfigError(f"{ann}: refusing to overwrite the input annotation file")
    if len(set(resolved)) != len(resolved):
        raise ConfigError("--out, --scores, --instance-scores, --plot-scores and --plot-examples must be different files")
    names = {out: "--out", scores_csv: "--scores"}
    names.update({Path(p): f"--{o.replace('_', '-')}" for o, p in (("instance_scores", args.instance_scores),
                 ("plot_scores", args.plot_scores), ("plot_examples", args.plot_examples)) if p})
    for p in outputs:  # before scoring: an unwritable output is one line now, not after the work
        if p.is_dir():
            raise ConfigError(f"{names.get(p, 'output')} {p}: is a folder; give a file name")
        if not os.access(make_dirs(p.parent), os.W_OK):
            raise WriteError(f"{p.parent}: cannot write {p.name} (permission denied); choose a writable folder")
    # Nothing is written before everything that can fail has succeeded: the outputs go to
    # temporary files, moved into place together at the end (a failure leaves every old file).
    staged = StagedFiles()
    try:
        return _run(args, t0, ann, out, scores_csv, plots, staged)
    finally:
        staged.discard()


def _run(args: argparse.Namespace, t0: float, ann: Path, out: Path, scores_csv: Path, plots: list[Path],
         staged: StagedFiles) -> int:
    """``run`` after the options are checked: load, score, select, then every output staged and
    committed at once."""

    with gc_paused():  # millions of containers: the cyclic collector would rescan them all, often
        t1 = time.perf_counter()
        # Without figures, the annotations stay JSON text here: the scoring workers parse them and
        # the kept ones are copied to --out as they were written (score_raw, prune_raw).
        loaded = (read_coco if plots else read_coco_lazy)(ann, digest=not args.no_cache)
        data = loaded.data
        t2 = time.perf_counter()
        result = score_loaded(data, loaded.sha1, variant=args.variant, contour=args.contour, workers=args.workers,
                              cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=not args.no_progress,
                              lazy=loaded.lazy, source=str(ann))
        t3 = time.perf_counter()
        if len(result.image_ids) == 0:
            raise DataError(f"{ann}: no images to select from (the file has no image entry with an integer "
                            f"'id'; problems: {', '.join(f'{k}={v}' for k, v in result.problems.items()) or 'none'})")
        k = kept_count(len(result.image_ids), keep=args.keep, count=args.count)
        kept = rank_images(result)[:k]
        kept_set = set(kept)
        t4 = time.perf_counter()
        if loaded.lazy:
            pieces, n_images, n_anns = prune_raw(data, result, kept_set)
        else:
            pruned = prune_coco(data, kept_set)
            pieces, n_images, n_anns = [dump_json(pruned, loaded.strict)], len(pruned["images"]), len(pruned["annotations"])
        if plots:  # first: they read the example images, which may be missing or unreadable
            from alseg.tfdp.plots import plot_kept_vs_pruned, plot_score_distribution

            if args.plot_scores:
                plot_score_distribution(result, data, staged.temp(Path(args.plot_scores)))
            if args.plot_examples:
                plot_kept_vs_pruned(result, data, args.images, kept_set, staged.temp(Path(args.plot_examples)),
                                    n=args.num_examples)
        # the pruned file is written (mostly kernel time, without the GIL) while the CSVs are formatted
        out_tmp = staged.temp(out)
        with ThreadPoolExecutor(1) as pool:
            pruned_written = pool.submit(_write_pieces, out, out_tmp, pieces)
            write_image_scores(scores_csv, result, kept_set, staged)
            if args.instance_scores:
                write_instance_scores(Path(args.instance_scores), result, staged)
            pruned_written.result()
        staged.commit()
        t5 = time.perf_counter()
        times = {"load": t2 - t1, "scoring": t3 - t2, "select": t4 - t3, "write": t5 - t4}
        print(_summary(data, result, kept, times, t0))
    print(f"wrote {out} ({n_images} images, {n_anns} annotations), {scores_csv}"
          + "".join(f", {p}" for p in [args.instance_scores, *plots] if p))
    return 0


def _write_pieces(path: Path, tmp: Path, pieces) -> None:
    """The pruned JSON's pieces to its temporary file ``tmp`` (errors name ``path``)."""
    try:
        with open(tmp, "wb") as f:
            write_buffers(f, pieces)
    except OSError as e:
        raise AlsegError(f"{path}: cannot write ({e.strerror or e})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits with status 2 and a one-line ``alseg-prune: error: ...`` on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interrupts.handled():  # SIGTERM as Ctrl-C; outputs are written atomically
            return run(args)
    except AlsegError as e:
        msg = " ".join(str(e).split())  # one line, always
        parser.exit(2, f"{PROG}: error: {msg}\n")
    except KeyboardInterrupt as e:
        name = getattr(e, "signal_name", "SIGINT")
        parser.exit(interrupts.exit_code_of(e), f"\n{PROG}: interrupted ({name}); every output file is "
                                                f"whole or untouched (atomic writes); run the command again\n")


if __name__ == "__main__":
    sys.exit(main())
