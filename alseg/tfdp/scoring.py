"""TFDP shape complexity scores: instance statistics, image scores, selection, pruning, cache.

Method (TFDP, "Training-Free Dataset Pruning for Instance Segmentation", arXiv 2503.00828), as the
reference implementation computes it:

* every non-crowd instance mask is rasterised at the image size (pycocotools, as ``annToMask``),
  the external contours are traced with ``cv2.findContours(RETR_EXTERNAL, CHAIN_APPROX_NONE)`` and
  the largest one gives the perimeter ``P = cv2.arcLength(c, True)`` and the area
  ``A = cv2.contourArea(c)``;
* ``scs = P / A``; ``si_scs = P / (2 sqrt(pi A))`` (1 for a disc, 4 / (2 sqrt(pi)) ~ 1.128 for a
  square, larger for thin or ragged shapes);
* class balance (``cb_*``): each instance score is divided by the sum of the scores of all the
  instances of its category over the whole dataset;
* an image scores the sum of its instances' scores; the top-k images are kept.

Choices the paper leaves open, and what this module does:

* **Several contours.** ``contour="largest"`` (the reference) keeps the external contour of largest
  ``contourArea`` (ties: the longer one); ``contour="all"`` sums P and A over all the external
  contours of the mask (every separate part counts, zero-area slivers add their perimeter).
* **Holes** are ignored: ``RETR_EXTERNAL`` returns outer borders only, so a hole neither adds to P
  nor is subtracted from A.
* **Multi-part polygons** are merged (union) into one mask before tracing, as ``annToMask`` does.
  A part with fewer than 3 points has no area: it is dropped and the instance is still scored
  (status ``degenerate_part``, reported; the training loader rejects such an annotation, see
  ``dataset.invalid_annotations``); an instance with no part left is ``degenerate_polygon``.
* **Contours pass through pixel centres**: a filled ``n x n`` pixel square has a contour of side
  ``n - 1`` (P = 4(n-1), A = (n-1)^2). The 8-connected chain over-estimates the length of curved or
  slanted borders (by 8(sqrt 2 - 1)/pi ~ 5.5 % on average over directions), so a rasterised disc
  scores SI-SCS ~ 1.05, not exactly 1.
* **Invalid annotations** are those ``alseg.data.validation`` rejects (the training loader rejects
  the same ones, with the same reason names): every annotation is checked, crowd regions included.
  They get no score, are left out of the class sums and are counted by reason in
  ``ScoreResult.problems``; they never stop the run. Two outcomes of the measurement add to them:
  ``empty_mask`` (the rasterised mask has no pixel) and ``zero_area`` (its contour encloses no area,
  e.g. a line one pixel wide). Valid crowd regions are not instances: skipped, counted in
  ``n_crowd``, not a problem. Two faults do stop it, with a ``DataError`` naming the file, the
  entry and the field: an id (image, category, annotation) or an image 'width' / 'height' that is
  an integer beyond int64. An image side above ``alseg.data.validation.MAX_IMAGE_SIDE`` (100,000
  px) is ``invalid_image_size``, so a rasterised crop or decoded RLE is at most that size a side;
  a mask that still does not fit in memory makes its instance ``invalid_segmentation`` (polygon)
  or ``invalid_rle``.
* **Images without any scorable instance** score 0 and so are pruned first. Ties between image
  scores are broken by image id (smaller id first) so that selection is deterministic.
* **Kept count** for a ratio: ``round(keep * n_images)`` (half up), at least 1.

Speed (38-49 us of CPU per instance for the whole command at COCO scale, all processes, as the
VM's speed drifts; ``benchmarks/tfdp_speed.py``):

* a polygon is rasterised only inside its bounding box (+1 px margin, clipped to the image), on
  pycocotools' 5x grid shifted by the box origin (``alseg.tfdp.raster.upsampled``), which gives the
  pixels the per-instance pycocotools code gave (the scores are bit-identical to it, see
  tests/test_tfdp_raster.py); an RLE is decoded then cropped to its box before tracing;
* the polygons of a chunk are rasterised and traced in batches (``alseg.tfdp.raster.polygon_stats``):
  boundary points in closed form, packed canvases filled with one ``np.repeat``, one
  ``findContours`` per canvas, perimeter and area from the contour points with numpy;
* ``score_dataset`` (a dict in memory) validates in the parent chunk by chunk
  (``alseg.data.validation.AnnotationChecker``, which also builds the compact numpy chunks) and a
  process pool scores the chunks; ``score_raw`` (``alseg-prune``) leaves the annotations as JSON
  text in the parent and the workers parse, validate and score them, so parsing is shared too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import cv2
import msgspec
import numpy as np
from pycocotools import _mask

from alseg.data.validation import (  # noqa: F401  (status codes re-exported for alseg.tfdp users)
    CROWD,
    DEGENERATE_PART,
    DEGENERATE_POLYGON,
    DUPLICATE_ANNOTATION_ID,
    EMPTY_MASK,
    INVALID_ANNOTATION,
    INVALID_AREA,
    INVALID_BBOX,
    INVALID_IMAGE_SIZE,
    INVALID_RLE,
    INVALID_SEGMENTATION,
    OK,
    REASONS,
    RLE_SIZE_MISMATCH,
    UNKNOWN_CATEGORY,
    UNKNOWN_IMAGE,
    TYPED_ANNOTATIONS,
    ZERO_AREA,
    AnnotationChecker,
    image_size,
    index_categories,
    index_images,
    is_int,
)
from alseg.errors import AlsegError, ConfigError, DataError, json_value_problem
from alseg.files import temp_file
from alseg.tfdp.jsonio import decode_json, gc_paused, read_coco
from alseg.tfdp.raster import polygon_stats, upsampled

log = logging.getLogger(__name__)

VARIANTS = ("scs", "si_scs", "cb_scs", "si_cb_scs")
CONTOURS = ("largest", "all")
DEFAULT_VARIANT = "si_cb_scs"
SCORING_VERSION = 3  # bump when the numbers or the cache's contents change: old cache files are then never read
MARGIN = 1  # empty pixels kept around a mask's box in its crop (contours never touch a cut edge)

# Per-annotation status codes (ShapeStats.status): alseg.data.validation's reasons, whose table
# says what each means, plus CROWD (a valid crowd region) and two outcomes of the measurement,
# EMPTY_MASK (no pixel after rasterisation) and ZERO_AREA (the contour encloses no area).
STATUS_NAMES = REASONS
SCORED_STATUSES = (OK, DEGENERATE_PART)

_MIN_CHUNK = 256
_MAX_CHUNK = 4096
_BATCH_PIXELS = 1 << 23  # canvas pixels (bytes) rasterised at once by a worker


class ShapeStats(NamedTuple):
    """One row per input annotation (crowd included, status CROWD), in input order."""

    ann_id: np.ndarray  # int64 (-1 when missing)
    image_id: np.ndarray  # int64 (-1 when missing)
    category_id: np.ndarray  # int64 (-1 when missing)
    perimeter: np.ndarray  # float64, NaN when not measured
    area: np.ndarray  # float64, NaN when not measured
    status: np.ndarray  # int8, see STATUS_NAMES
    crowd: np.ndarray  # bool: iscrowd set (status CROWD, or the reason why the region is invalid)

    @property
    def scored(self) -> np.ndarray:
        return np.isin(self.status, SCORED_STATUSES)


@dataclass
class ScoreResult:
    variant: str
    contour: str
    stats: ShapeStats
    instance_scores: np.ndarray  # float64 aligned with stats rows; NaN where not scored
    image_ids: np.ndarray  # int64, every valid image of the file, in file order
    image_scores: np.ndarray  # float64 aligned with image_ids (0 for images with nothing scored)
    problems: dict[str, int] = field(default_factory=dict)  # reason -> count (images and instances)
    n_crowd: int = 0
    elapsed_s: float = 0.0
    from_cache: bool = False
    worker_cpu_s: float = 0.0  # CPU time spent measuring shapes, all processes together
    worker_peak_rss_kib: int = 0  # largest own peak RSS of a scoring process, KiB (see peak_rss_kib)
    # Each annotation's 'image_id' as pruning reads it (an integer, else prune_image_ok False), in
    # input order: the pruned file keeps the annotations of the kept images, valid or not.
    prune_image_id: np.ndarray | None = None  # int64
    prune_image_ok: np.ndarray | None = None  # bool

    @property
    def n_scored(self) -> int:
        return int(self.stats.scored.sum())

    @property
    def n_problems(self) -> int:
        return int(sum(self.problems.values()))

    def image_score_map(self) -> dict[int, float]:
        return dict(zip(self.image_ids.tolist(), self.image_scores.tolist()))


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _check_options(variant: str, contour: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown TFDP variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if contour not in CONTOURS:
        raise ConfigError(f"unknown contour option {contour!r}; choose one of {', '.join(CONTOURS)}")


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    return int(workers)


def _index_images(images: Any, problems: dict[str, int]) -> tuple[list[int], dict[int, tuple[int, int] | None]]:
    """Image ids in file order and id -> (h, w) (None: unusable size). Malformed entries and
    duplicate ids are counted (an unusable size is counted per annotation, as invalid_image_size)."""
    index = index_images(images)
    for p in index.problems:
        if p.reason != "invalid_image_size":
            problems[p.reason] = problems.get(p.reason, 0) + 1
    return index.ids, index.sizes


# --------------------------------------------------------------------------------------------------
# Parent side: annotations -> compact chunks


@dataclass
class _Chunk:
    start: int
    local: np.ndarray  # chunk-local indices of the polygon instances to score (int32)
    coords: np.ndarray  # float64, x0 y0 x1 y1 ... of every kept part, concatenated
    part_ptr: np.ndarray  # int64, len n_parts + 1: offsets (in values) of the parts in coords
    inst_ptr: np.ndarray  # int64, len n_poly + 1: offsets of each instance's parts in part_ptr
    hw: np.ndarray  # int64 (n_poly, 2): image height and width per polygon instance
    rles: list  # (local index, rle dict, h, w) per RLE instance
    contour: str


def _build_chunks(
    annotations: Sequence,
    sizes: Mapping[int, tuple[int, int] | None],
    category_ids: set | None,
    contour: str,
    chunk_size: int,
    out: dict[str, np.ndarray],
) -> Iterator[_Chunk]:
    """Validate the annotations and yield compact chunks of the valid non-crowd ones; fill
    out['ann_id'|'image_id'|'category_id'|'status'|'crowd'] on the way.

    Lazy: the caller builds the next chunks while workers score the previous ones, and only a few
    chunks exist at any time.
    """
    checker = AnnotationChecker(sizes, category_ids)
    n = len(annotations)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        c = checker.check(annotations, start, stop, geometry=True, crowd_geometry=False)
        st = c.status
        st[c.crowd & ((st == OK) | (st == DEGENERATE_PART))] = CROWD  # a crowd region is never scored
        out["ann_id"][start:stop] = c.ann_id
        out["image_id"][start:stop] = c.image_id
        out["category_id"][start:stop] = c.category_id
        out["status"][start:stop] = st
        out["crowd"][start:stop] = c.crowd
        yield _Chunk(start=start, local=c.poly_local, coords=c.coords, part_ptr=c.part_ptr, inst_ptr=c.inst_ptr,
                     hw=c.hw, rles=c.rles, contour=contour)


# --------------------------------------------------------------------------------------------------
# Worker side: chunk -> (perimeter, area, status)


def _contour_stats(mask: np.ndarray, contour: str) -> tuple[float, float, int]:
    """P, A and a status from the external contours of a uint8 mask (any orientation)."""
    cs, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not cs:
        return math.nan, math.nan, EMPTY_MASK
    if len(cs) == 1:
        c = cs[0]
        p, a = cv2.arcLength(c, True), cv2.contourArea(c)
    elif contour == "largest":
        best = max((cv2.contourArea(c), cv2.arcLength(c, True)) for c in cs)
        a, p = best
    else:
        p = a = 0.0
        for c in cs:
            p += cv2.arcLength(c, True)
            a += cv2.contourArea(c)
    return p, a, (OK if a > 0 else ZERO_AREA)


def _rle_stats(seg: dict, h: int, w: int, contour: str) -> tuple[float, float, int]:
    """P, A and status of an RLE that alseg.data.validation accepted (runs adding up to h * w)."""
    counts = seg["counts"]
    if isinstance(counts, list):
        rle = _mask.frUncompressedRLE([{"counts": counts, "size": [h, w]}], h, w)[0]
    else:
        rle = {"counts": counts.encode("ascii") if isinstance(counts, str) else counts, "size": [h, w]}
    x, y, bw, bh = _mask.toBbox([rle])[0]
    if bw <= 0 or bh <= 0:
        return math.nan, math.nan, EMPTY_MASK
    full = _mask.decode([rle])  # (h, w, 1), Fortran order: one full-size mask at a time
    x0, y0 = max(0, int(x) - MARGIN), max(0, int(y) - MARGIN)
    x1, y1 = min(w, int(x + bw) + MARGIN), min(h, int(y + bh) + MARGIN)
    crop = np.ascontiguousarray(full[y0:y1, x0:x1, 0].T)  # transposed: same P and A
    del full
    return _contour_stats(crop, contour)


def _score_chunk(chunk: _Chunk) -> tuple:
    """Perimeter, area and status of the instances of a chunk (runs in a worker process), plus the
    CPU time it took and the process's peak RSS."""
    cpu0 = time.process_time()
    n_poly = len(chunk.local)
    n_rle = len(chunk.rles)
    idx = np.empty(n_poly + n_rle, dtype=np.int32)
    per = np.full(n_poly + n_rle, np.nan)
    area = np.full(n_poly + n_rle, np.nan)
    st = np.zeros(n_poly + n_rle, dtype=np.int8)
    idx[:n_poly] = chunk.local
    contour = chunk.contour
    with warnings.catch_warnings():
        # pycocotools' Masks.__array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        if n_poly:
            _score_polygons(chunk, per, area, st)
        for j, (k, seg, h, w) in enumerate(chunk.rles):
            idx[n_poly + j] = k
            try:
                per[n_poly + j], area[n_poly + j], st[n_poly + j] = _rle_stats(seg, h, w, contour)
            except (cv2.error, ValueError, TypeError, OverflowError, UnicodeError, MemoryError):
                st[n_poly + j] = INVALID_RLE  # MemoryError: a full-size mask this machine cannot hold
    return chunk.start, idx, per, area, st, time.process_time() - cpu0, peak_rss_kib()


def peak_rss_kib() -> int:
    """This process's own peak RSS in KiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of the process's current memory map.
    ru_maxrss would not do for a spawned worker: Linux carries it over fork + exec, so it starts at
    the parent's RSS (the loaded JSON) although the worker never holds that memory.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (ImportError, OSError):  # not on every platform
        return 0


def _score_polygons(chunk: _Chunk, per: np.ndarray, area: np.ndarray, st: np.ndarray) -> None:
    """P, A and status of the polygon instances of a chunk (rows 0 .. n_poly - 1 of the outputs),
    in batches of at most ``_BATCH_PIXELS`` canvas pixels (``alseg.tfdp.raster.polygon_stats``)."""
    coords, part_ptr, inst_ptr = chunk.coords, chunk.part_ptr, chunk.inst_ptr
    xs, ys = coords[0::2], coords[1::2]
    vptr = part_ptr // 2
    v0 = vptr[inst_ptr[:-1]]
    nv = vptr[inst_ptr[1:]] - v0
    h, w = chunk.hw[:, 0], chunk.hw[:, 1]
    # The crop: the polygon's box + MARGIN, clipped to the image (coordinates are finite and within
    # a few image sizes of it, alseg.data.validation).
    minx, maxx = np.minimum.reduceat(xs, v0), np.maximum.reduceat(xs, v0)
    miny, maxy = np.minimum.reduceat(ys, v0), np.maximum.reduceat(ys, v0)
    ox = np.maximum(0, np.floor(minx) - MARGIN).astype(np.int64)
    oy = np.maximum(0, np.floor(miny) - MARGIN).astype(np.int64)
    cw = (np.minimum(w, np.ceil(maxx) + MARGIN + 1) - ox).astype(np.int64)
    ch = (np.minimum(h, np.ceil(maxy) + MARGIN + 1) - oy).astype(np.int64)
    X = upsampled(xs, np.repeat(ox, nv))
    Y = upsampled(ys, np.repeat(oy, nv))
    empty = (cw < 1) | (ch < 1)
    st[:len(cw)][empty] = EMPTY_MASK
    rows = np.flatnonzero(~empty)
    if rows.size < len(cw):  # rare: take the instances with a crop (vertices, parts, offsets)
        parts = _ranges(inst_ptr[rows], inst_ptr[rows + 1])
        X = X[_ranges(vptr[parts], vptr[parts + 1])]
        Y = Y[_ranges(vptr[parts], vptr[parts + 1])]
        vptr = np.concatenate([[0], np.cumsum(vptr[parts + 1] - vptr[parts])])
        inst_ptr = np.concatenate([[0], np.cumsum(inst_ptr[rows + 1] - inst_ptr[rows])])
        cw, ch = cw[rows], ch[rows]
    px = np.cumsum((cw + 1) * ch)
    cuts = np.searchsorted(px, np.arange(_BATCH_PIXELS, int(px[-1]) if len(px) else 0, _BATCH_PIXELS), "right")
    bounds = np.unique(np.concatenate([[0], np.maximum(cuts, 1), [len(cw)]])).tolist()
    for i0, i1 in zip(bounds[:-1], bounds[1:]):
        p0, p1 = int(inst_ptr[i0]), int(inst_ptr[i1])
        q0, q1 = int(vptr[p0]), int(vptr[p1])
        args = (X[q0:q1], Y[q0:q1], vptr[p0:p1 + 1] - q0, inst_ptr[i0:i1 + 1] - p0, cw[i0:i1], ch[i0:i1])
        dst = rows[i0:i1]
        try:
            per[dst], area[dst], st[dst] = polygon_stats(*args, contour=chunk.contour)
        except (cv2.error, ValueError, TypeError, OverflowError, MemoryError):
            for j in range(i0, i1):  # find the instance(s) at fault
                a, b = int(inst_ptr[j]), int(inst_ptr[j + 1])
                c0, c1 = int(vptr[a]), int(vptr[b])
                one = (X[c0:c1], Y[c0:c1], vptr[a:b + 1] - c0, np.array([0, b - a]), cw[j:j + 1], ch[j:j + 1])
                try:
                    per[rows[j]], area[rows[j]], st[rows[j]] = (v[0] for v in polygon_stats(*one, contour=chunk.contour))
                except (cv2.error, ValueError, TypeError, OverflowError, MemoryError):
                    st[rows[j]] = INVALID_SEGMENTATION


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[i], hi[i]) over i (int64)."""
    n = hi - lo
    if int(n.sum()) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))


# --------------------------------------------------------------------------------------------------
# Public API


def _mp_context():
    """Fresh worker processes ("spawn", ~0.5 s to start): they inherit neither the parent's (large)
    loaded JSON nor its threads, and they are direct children (RUSAGE_CHILDREN sees them). As with
    any multiprocessing code, a script calling this must guard its entry point with
    ``if __name__ == "__main__":``."""
    return mp.get_context("spawn")


def _run_pool(tasks: Iterable[tuple], workers: int, collect: Callable[[tuple], None], fn: Callable = None,
              initializer: Callable | None = None, initargs: tuple = ()) -> None:
    """Run ``fn(*task)`` (default: ``_score_chunk``) for each task in worker processes, building the
    next tasks while they work.

    At most ``2 * workers + 1`` tasks are built and not yet collected at any time (bounded memory).
    A worker that dies (e.g. a spawned child re-running an unguarded script) gives an AlsegError,
    never a hang.
    """
    fn = fn or _score_chunk
    window = 2 * workers + 1
    try:
        with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=initializer, initargs=initargs) as ex:
            pending: set = set()
            try:
                for task in tasks:
                    pending.add(ex.submit(fn, *task))
                    if len(pending) >= window:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in done:
                            collect(f.result())
                for f in as_completed(pending):
                    collect(f.result())
            except BaseException:
                ex.shutdown(wait=True, cancel_futures=True)
                raise
    except BrokenProcessPool:
        raise AlsegError(
            "a scoring worker process died; if a script runs this with workers > 1, its entry point "
            "must be guarded by `if __name__ == \"__main__\":` (or use workers=1)"
        ) from None


def _chunk_size(n: int, workers: int) -> int:
    return int(min(_MAX_CHUNK, max(_MIN_CHUNK, math.ceil(n / max(1, workers * 16)))))


def instance_shape_stats(
    annotations: Sequence,
    images_by_id: Mapping[int, Any],
    contour: str = "largest",
    workers: int | None = None,
    category_ids: Iterable[int] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
    report: dict | None = None,
) -> ShapeStats:
    """Perimeter, area and status of every annotation (see STATUS_NAMES), in input order; every
    annotation is validated first (``alseg.data.validation``), crowd regions included.

    ``images_by_id`` maps image id -> image dict (needs 'height' and 'width') or (height, width).
    ``category_ids``: when given, annotations of other categories are ``unknown_category``.
    ``workers``: processes (default os.cpu_count()); small inputs are scored in-process.
    ``progress``: called with the number of annotations done after each chunk.
    ``report``: when a dict, receives ``worker_cpu_s`` and ``worker_peak_rss_kib``.
    """
    if contour not in CONTOURS:
        raise ConfigError(f"unknown contour option {contour!r}; choose one of {', '.join(CONTOURS)}")
    workers = _resolve_workers(workers)
    sizes: dict[int, tuple[int, int] | None] = {}
    for iid, img in images_by_id.items():
        if img is None:
            sizes[iid] = None
        elif isinstance(img, Mapping):
            sizes[iid] = image_size(img)
        else:
            sizes[iid] = image_size({"height": img[0], "width": img[1]})
    cats = None if category_ids is None else set(category_ids)
    n = len(annotations)
    out = {
        "ann_id": np.full(n, -1, dtype=np.int64),
        "image_id": np.full(n, -1, dtype=np.int64),
        "category_id": np.full(n, -1, dtype=np.int64),
        "status": np.zeros(n, dtype=np.int8),
        "crowd": np.zeros(n, dtype=bool),
    }
    perimeter = np.full(n, np.nan)
    area = np.full(n, np.nan)
    status = out["status"]
    size = chunk_size or _chunk_size(n, workers)
    chunks = _build_chunks(annotations, sizes, cats, contour, size, out)

    cpu = [0.0]
    rss = [0]

    def collect(res) -> None:
        start, idx, p, a, s, cpu_s, rss_kib = res
        cpu[0] += cpu_s
        rss[0] = max(rss[0], rss_kib)
        g = start + idx.astype(np.int64)
        perimeter[g] = p
        area[g] = a
        bad = s != OK
        status[g[bad]] = s[bad]  # keeps DEGENERATE_PART set by the parent for scored instances
        if progress is not None:
            progress(min(n, start + size) - start)

    if workers <= 1 or n < 2 * _MIN_CHUNK:
        for chunk in chunks:
            collect(_score_chunk(chunk))
    else:
        _run_pool(((c,) for c in chunks), workers, collect)
    if report is not None:
        report.update(worker_cpu_s=cpu[0], worker_peak_rss_kib=rss[0])
    return ShapeStats(out["ann_id"], out["image_id"], out["category_id"], perimeter, area, status, out["crowd"])


_RAW_CONTEXT: dict = {}


def _init_raw_worker(sizes: Mapping, category_ids: set | None) -> None:
    """Pool initializer: the file's image sizes and category ids, sent once per worker."""
    import gc

    gc.disable()  # a worker makes a few thousand containers per chunk and no reference cycles
    _RAW_CONTEXT.update(sizes=sizes, cats=category_ids)


def _decode_chunk(payload: bytes, start: int) -> list:
    """``jsonio.decode_json`` of the annotations ``start ..`` (one JSON array); JSON that parses
    but not into Python objects (an integer of thousands of digits) is a DataError naming them."""
    try:
        return decode_json(payload)
    except (ValueError, RecursionError) as e:
        raise DataError(f"annotations[{start}..]: {json_value_problem(e)}") from None


def _score_raw_chunk(start: int, payload: bytes, contour: str, context: Mapping | None = None) -> tuple:
    """Parse (``TYPED_ANNOTATIONS``; where some annotation does not fit it, ``jsonio.decode_json``),
    validate (``AnnotationChecker``, as ``_build_chunks`` does) and
    score annotations ``start ..`` given as one JSON array; runs in a worker process. Returns the
    per-annotation arrays, the CPU time it took and the process's peak RSS."""
    cpu0 = time.process_time()
    ctx = context if context is not None else _RAW_CONTEXT
    try:
        anns = TYPED_ANNOTATIONS.decode(payload)  # types checked while parsing: the common case, faster
    except msgspec.DecodeError:
        anns = _decode_chunk(payload, start)
    c = AnnotationChecker(ctx["sizes"], ctx["cats"], index_offset=start).check(anns, 0, len(anns), geometry=True,
                                                                              crowd_geometry=False)
    # the image id as pruning reads it: the checker's where it read the ids, else looked up
    prune_ok = c.status != INVALID_ANNOTATION
    prune = (c.image_id.copy(), prune_ok)
    bad = np.flatnonzero(~prune_ok)
    if bad.size:
        ids, ok = _prune_image_ids([anns[k] for k in bad.tolist()])
        prune[0][bad], prune_ok[bad] = ids, ok
    del anns
    st = c.status
    st[c.crowd & ((st == OK) | (st == DEGENERATE_PART))] = CROWD  # a crowd region is never scored
    chunk = _Chunk(start=start, local=c.poly_local, coords=c.coords, part_ptr=c.part_ptr, inst_ptr=c.inst_ptr,
                   hw=c.hw, rles=c.rles, contour=contour)
    _, idx, per, area, s, _, _ = _score_chunk(chunk)
    return (start, c.ann_id, c.image_id, c.category_id, st, c.crowd, idx, per, area, s, prune,
            time.process_time() - cpu0, peak_rss_kib())


def instance_shape_stats_raw(
    raw_annotations: Sequence,
    sizes: Mapping[int, tuple[int, int] | None],
    category_ids: Iterable[int] | None,
    contour: str = "largest",
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int | None = None,
    report: dict | None = None,
) -> tuple[ShapeStats, tuple[np.ndarray, np.ndarray]]:
    """``instance_shape_stats`` of annotations given as JSON text, one ``msgspec.Raw`` (or bytes)
    each, plus each annotation's image id as pruning reads it (``_prune_image_ids``).

    Chunks of the text go to the workers, which parse, validate and score them; a repeated
    annotation id across chunks (which one chunk's checker cannot see) is found here afterwards:
    as ``AnnotationChecker`` does in one pass, the first annotation with the id that passed the id
    checks keeps its result and every later one is ``duplicate_annotation_id``.
    """
    if contour not in CONTOURS:
        raise ConfigError(f"unknown contour option {contour!r}; choose one of {', '.join(CONTOURS)}")
    workers = _resolve_workers(workers)
    cats = None if category_ids is None else set(category_ids)
    n = len(raw_annotations)
    ann_id = np.full(n, -1, dtype=np.int64)
    image_id = np.full(n, -1, dtype=np.int64)
    category_id = np.full(n, -1, dtype=np.int64)
    status = np.zeros(n, dtype=np.int8)
    crowd = np.zeros(n, dtype=bool)
    perimeter = np.full(n, np.nan)
    area = np.full(n, np.nan)
    prune_id = np.zeros(n, dtype=np.int64)
    prune_ok = np.zeros(n, dtype=bool)
    size = chunk_size or _chunk_size(n, workers)
    cpu = [0.0]
    rss = [0]

    def tasks():
        for start in range(0, n, size):
            yield start, b"[" + b",".join(raw_annotations[start:start + size]) + b"]", contour

    def collect(res) -> None:
        start, a_id, i_id, c_id, st, cr, idx, p, a, s, prune, cpu_s, rss_kib = res
        stop = start + len(st)
        ann_id[start:stop], image_id[start:stop], category_id[start:stop] = a_id, i_id, c_id
        status[start:stop], crowd[start:stop] = st, cr
        prune_id[start:stop], prune_ok[start:stop] = prune
        g = start + idx.astype(np.int64)
        perimeter[g] = p
        area[g] = a
        bad = s != OK
        status[g[bad]] = s[bad]  # keeps DEGENERATE_PART set by the checker for scored instances
        cpu[0] += cpu_s
        rss[0] = max(rss[0], rss_kib)
        if progress is not None:
            progress(stop - start)

    if workers <= 1 or n < 2 * _MIN_CHUNK:
        ctx = {"sizes": sizes, "cats": cats}
        for start, payload, cont in tasks():
            collect(_score_raw_chunk(start, payload, cont, ctx))
    else:
        _run_pool(tasks(), workers, collect, fn=_score_raw_chunk, initializer=_init_raw_worker,
                  initargs=(dict(sizes), cats))
    # repeated ids across chunks: the first annotation that passed the id checks keeps its id
    cand = np.flatnonzero(status != INVALID_ANNOTATION)
    if cand.size:
        _, first = np.unique(ann_id[cand], return_index=True)
        later = np.ones(cand.size, dtype=bool)
        later[first] = False
        dup = cand[later]
        status[dup] = DUPLICATE_ANNOTATION_ID
        perimeter[dup] = np.nan
        area[dup] = np.nan
    if report is not None:
        report.update(worker_cpu_s=cpu[0], worker_peak_rss_kib=rss[0])
    return ShapeStats(ann_id, image_id, category_id, perimeter, area, status, crowd), (prune_id, prune_ok)


def _base_scores(perimeter: np.ndarray, area: np.ndarray, variant: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if variant.startswith("si_"):
            return perimeter / (2.0 * np.sqrt(np.pi * area))
        return perimeter / area


def compute_scores(stats: ShapeStats, variant: str) -> np.ndarray:
    """Per-instance scores for a variant (NaN where the instance is not scored)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown TFDP variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    scored = stats.scored
    scores = np.full(len(stats.status), np.nan)
    base = _base_scores(stats.perimeter[scored], stats.area[scored], variant)
    if "cb_" in variant and base.size:
        cats, inv = np.unique(stats.category_id[scored], return_inverse=True)
        class_sum = np.bincount(inv, weights=base, minlength=len(cats))
        base = base / class_sum[inv]
    scores[scored] = base
    return scores


def _check_coco(coco: Mapping, source: str = "COCO data") -> None:
    """DataError naming ``source`` (the file) unless 'images', 'annotations' and 'categories' are lists."""
    if not isinstance(coco, Mapping):
        raise DataError(f"{source}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{source}: missing or malformed field '{key}' (expected a list)")


def _index_file(images: Sequence, categories: Sequence) -> tuple[list[int], dict, set, dict[str, int]]:
    """Image ids (file order), image sizes, category ids and the file-level problems."""
    problems: dict[str, int] = {}
    image_ids, sizes = _index_images(images, problems)
    cats, cat_problems = index_categories(categories)
    for p in cat_problems:
        problems[p.reason] = problems.get(p.reason, 0) + 1
    return image_ids, sizes, set(cats), problems


class _Progress:
    """``progress``: True (a tqdm bar on stderr), a callable taking a count, or False."""

    def __init__(self, progress: bool | Callable[[int], None], total: int):
        self.bar = None
        self.callback = progress if callable(progress) else None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="inst", desc="tfdp scoring", mininterval=0.5, dynamic_ncols=True)
            self.callback = self.bar.update

    def __enter__(self):
        return self.callback

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _prune_image_ids(annotations: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Each annotation's 'image_id' as ``prune_coco`` reads it: (int64 ids, bool ok)."""
    n = len(annotations)
    ids = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    for k, a in enumerate(annotations):
        iid = a.get("image_id") if type(a) is dict else None
        if is_int(iid) and -(2**63) <= iid < 2**63:
            ids[k] = iid
            ok[k] = True
    return ids, ok


def _result(stats: ShapeStats, image_ids: list[int], problems: dict[str, int], variant: str, contour: str,
            t0: float, report: dict, prune_ids: tuple[np.ndarray, np.ndarray]) -> ScoreResult:
    inst_scores = compute_scores(stats, variant)
    ids = np.asarray(image_ids, dtype=np.int64)
    img_scores = np.zeros(len(ids))
    scored = stats.scored
    if len(ids) and scored.any():
        order = np.argsort(ids, kind="stable")
        pos = order[np.searchsorted(ids, stats.image_id[scored], sorter=order)]
        img_scores = np.bincount(pos, weights=inst_scores[scored], minlength=len(ids))
    counts = np.bincount(stats.status.astype(np.int64), minlength=len(STATUS_NAMES))
    for code, name in STATUS_NAMES.items():
        if code not in (OK, CROWD) and counts[code]:
            problems[name] = int(counts[code])
    return ScoreResult(
        variant=variant,
        contour=contour,
        stats=stats,
        instance_scores=inst_scores,
        image_ids=ids,
        image_scores=img_scores,
        problems=dict(sorted(problems.items())),
        n_crowd=int(counts[CROWD]),
        elapsed_s=time.perf_counter() - t0,
        worker_cpu_s=report.get("worker_cpu_s", 0.0),
        worker_peak_rss_kib=report.get("worker_peak_rss_kib", 0),
        prune_image_id=prune_ids[0],
        prune_image_ok=prune_ids[1],
    )


def _score_with(top: Mapping, variant: str, contour: str, progress, stats: Callable,
                source: str = "COCO data") -> ScoreResult:
    """The steps both entry points share: options and file checked, images and categories indexed,
    ``stats(annotations, sizes, category_ids, progress_callback, report)`` -> (ShapeStats, pruning
    image ids) under a progress bar, then the ScoreResult. A DataError of the validation (an id or
    size that does not fit int64) names ``source``."""
    _check_options(variant, contour)
    _check_coco(top, source)
    t0 = time.perf_counter()
    anns = top["annotations"]
    report: dict = {}
    try:
        image_ids, sizes, cat_ids, problems = _index_file(top["images"], top["categories"])
        with _Progress(progress, len(anns)) as callback:
            st, prune_ids = stats(anns, sizes, cat_ids, callback, report)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    return _result(st, image_ids, problems, variant, contour, t0, report, prune_ids)


def score_dataset(
    coco_dict: Mapping,
    variant: str = DEFAULT_VARIANT,
    contour: str = "largest",
    workers: int | None = None,
    progress: bool | Callable[[int], None] = False,
    source: str = "COCO data",
) -> ScoreResult:
    """Score every image of a COCO dict (``progress=True``: a tqdm bar on stderr). ``source``: the
    file (or other name) that errors about the data name."""
    def stats(anns, sizes, cat_ids, callback, report):
        st = instance_shape_stats(anns, sizes, contour, workers, category_ids=cat_ids, progress=callback,
                                  report=report)
        return st, _prune_image_ids(anns)

    return _score_with(coco_dict, variant, contour, progress, stats, source)


def score_raw(
    top: Mapping,
    variant: str = DEFAULT_VARIANT,
    contour: str = "largest",
    workers: int | None = None,
    progress: bool | Callable[[int], None] = False,
    chunk_size: int | None = None,
    source: str = "COCO data",
) -> ScoreResult:
    """``score_dataset`` of a file read by ``alseg.tfdp.jsonio.read_coco_lazy``: the same result,
    but the annotations stay JSON text (``msgspec.Raw``) in this process. The workers parse,
    validate and score them chunk by chunk, so parsing is shared among the processes and the
    annotations never exist here as Python objects (see ``instance_shape_stats_raw``).

    ``top``: the file's top-level object with 'images' and 'categories' parsed and 'annotations'
    a list of ``msgspec.Raw`` (``LazyCoco.top``).
    """
    def stats(raw, sizes, cat_ids, callback, report):
        return instance_shape_stats_raw(raw, sizes, cat_ids, contour, workers, progress=callback,
                                        chunk_size=chunk_size, report=report)

    return _score_with(top, variant, contour, progress, stats, source)


def _as_id_scores(image_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(image_scores, ScoreResult):
        return image_scores.image_ids, image_scores.image_scores
    if isinstance(image_scores, Mapping):
        items = list(image_scores.items())
    else:
        items = list(image_scores)
    ids = np.asarray([i for i, _ in items], dtype=np.int64)
    scores = np.asarray([s for _, s in items], dtype=np.float64)
    return ids, scores


def rank_order(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices that sort images from most to least important: score descending (NaN last), then
    image id ascending (int64 (n,))."""
    return np.lexsort((ids, -np.where(np.isnan(scores), -np.inf, scores)))


def rank_images(image_scores: Any) -> list[int]:
    """Image ids from most to least important: score descending, then image id ascending.

    ``image_scores``: a ScoreResult, a mapping image id -> score, or (id, score) pairs.
    """
    ids, scores = _as_id_scores(image_scores)
    return ids[rank_order(ids, scores)].tolist()


def kept_count(n_images: int, keep: float | None = None, count: int | None = None) -> int:
    """How many images a kept ratio or a count keeps (validated; ConfigError when invalid)."""
    if (keep is None) == (count is None):
        raise ConfigError("give exactly one of a kept ratio (keep) or a number of images (count)")
    if n_images < 1:
        raise ConfigError("no images to select from")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, float, np.floating, np.integer)):
            raise ConfigError(f"kept ratio must be a number in (0, 1], got {keep!r}")
        if not (0.0 < float(keep) <= 1.0):
            raise ConfigError(f"kept ratio must be in (0, 1] (pruning rate = 1 - kept ratio), got {keep}")
        return max(1, int(math.floor(float(keep) * n_images + 0.5)))
    if isinstance(count, bool) or not is_int(count):
        raise ConfigError(f"count must be an integer, got {count!r}")
    if not (1 <= count <= n_images):
        raise ConfigError(f"count must be between 1 and the number of images ({n_images}), got {count}")
    return int(count)


def select_top(image_scores: Any, keep: float | None = None, count: int | None = None) -> list[int]:
    """Ids of the images kept, best first: the top ``count``, or ``round(keep * n)`` (at least 1).

    Images that score 0 (nothing scorable) come last, so they are pruned first; equal scores are
    ordered by image id.
    """
    ranked = rank_images(image_scores)
    k = kept_count(len(ranked), keep, count)
    return ranked[:k]


def _kept_images(images: Iterable, kept_ids: Iterable[int]) -> tuple[list, set[int]]:
    """The image entries whose id is kept, in file order, the first of a repeated id only; and
    the set of their ids."""
    kept = {int(i) for i in kept_ids}
    out, seen = [], set()
    for img in images:
        iid = img.get("id") if isinstance(img, dict) else None
        if is_int(iid) and iid in kept and iid not in seen:
            seen.add(iid)
            out.append(img)
    return out, seen


def prune_coco(coco_dict: Mapping, kept_ids: Iterable[int]) -> dict:
    """A COCO dict with only the kept images (file order) and all their annotations (crowd too).

    Every other top-level field (info, licenses, categories, ...) is kept as is; every category is
    kept even when no kept image holds it.
    """
    out = {k: v for k, v in coco_dict.items() if k not in ("images", "annotations")}
    images, seen = _kept_images(coco_dict.get("images", []), kept_ids)
    anns = []
    for a in coco_dict.get("annotations", []):
        iid = a.get("image_id") if isinstance(a, dict) else None
        if is_int(iid) and iid in seen:
            anns.append(a)
    out["images"] = images
    out["annotations"] = anns
    out.setdefault("categories", [])
    return out


def prune_raw(top: Mapping, result: ScoreResult, kept_ids: Iterable[int]) -> tuple[Iterator[bytes], int, int]:
    """``prune_coco`` of a file read by ``jsonio.read_coco_lazy`` and scored by ``score_raw``: the
    compact JSON text as consecutive bytes-like pieces (write them in order, e.g. with
    ``alseg.files.write_buffers``), and the numbers of images and annotations kept. The kept
    annotations are the file's own bytes (``msgspec.Raw``, never parsed or copied here), one piece
    each with the commas between them, so the text is never joined; everything else as
    ``prune_coco`` does."""
    import msgspec

    out = {k: v for k, v in top.items() if k not in ("images", "annotations")}
    images, seen = _kept_images(top.get("images", []), kept_ids)
    raw = top.get("annotations", [])
    if result.prune_image_id is None or len(result.prune_image_id) != len(raw):
        raise ValueError("prune_raw needs the ScoreResult of the same annotations (score_raw)")
    ids = np.fromiter(seen, np.int64, len(seen))
    sel = np.flatnonzero(result.prune_image_ok & np.isin(result.prune_image_id, ids)).tolist()
    out["images"] = images
    out["annotations"] = msgspec.Raw(b"\x00")  # JSON text never holds a raw NUL byte: a safe marker
    out.setdefault("categories", [])
    head, tail = msgspec.json.encode(out).split(b"\x00")

    def pieces() -> Iterator[bytes]:
        yield head + b"["
        if sel:
            yield raw[sel[0]]
            comma = b","
            for k in sel[1:]:
                yield comma
                yield raw[k]
        yield b"]" + tail

    return pieces(), len(images), len(sel)


# --------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "alseg" / "tfdp"


def file_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    return h.hexdigest()


def cache_path(cache_dir: str | os.PathLike, content_sha1: str, variant: str, contour: str) -> Path:
    """One file per (file content, variant, contour option, scoring version)."""
    _check_options(variant, contour)
    return Path(cache_dir) / f"tfdp-v{SCORING_VERSION}-{content_sha1}-{variant}-{contour}.npz"


def save_cached(path: str | os.PathLike, result: ScoreResult, content_sha1: str) -> None:
    """Write a ScoreResult atomically (temp file + os.replace)."""
    path = Path(path)
    meta = {
        "version": SCORING_VERSION,
        "sha1": content_sha1,
        "variant": result.variant,
        "contour": result.contour,
        "problems": result.problems,
        "n_crowd": result.n_crowd,
        "elapsed_s": result.elapsed_s,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                meta=np.array(json.dumps(meta)),
                instance_scores=result.instance_scores,
                image_ids=result.image_ids,
                image_scores=result.image_scores,
                **{f"stats_{k}": v for k, v in result.stats._asdict().items()},
                **({} if result.prune_image_id is None else
                   {"prune_image_id": result.prune_image_id, "prune_image_ok": result.prune_image_ok}),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cached(path: str | os.PathLike, content_sha1: str, variant: str, contour: str) -> ScoreResult | None:
    """The cached ScoreResult, or None when absent, unreadable or made for another key."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if (meta.get("version"), meta.get("sha1"), meta.get("variant"), meta.get("contour")) != (
                SCORING_VERSION,
                content_sha1,
                variant,
                contour,
            ):
                return None
            stats = ShapeStats(*(z[f"stats_{k}"] for k in ShapeStats._fields))
            return ScoreResult(
                variant=variant,
                contour=contour,
                stats=stats,
                instance_scores=z["instance_scores"],
                image_ids=z["image_ids"],
                image_scores=z["image_scores"],
                problems={str(k): int(v) for k, v in meta["problems"].items()},
                n_crowd=int(meta["n_crowd"]),
                elapsed_s=float(meta.get("elapsed_s", 0.0)),
                from_cache=True,
                prune_image_id=z["prune_image_id"] if "prune_image_id" in z.files else None,
                prune_image_ok=z["prune_image_ok"] if "prune_image_ok" in z.files else None,
            )
    except Exception as e:  # a corrupt cache file is recomputed, never fatal
        log.warning("%s: ignoring unreadable cache file (%s)", path, e)
        return None


def score_loaded(
    data: Mapping,
    content_sha1: str,
    variant: str = DEFAULT_VARIANT,
    contour: str = "largest",
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool | Callable[[int], None] = False,
    lazy: bool = False,
    source: str = "COCO data",
) -> ScoreResult:
    """``score_dataset`` (``lazy``: ``score_raw``) of a loaded COCO file, through the score cache.

    ``content_sha1``: the sha1 of the file's bytes (``file_sha1``, or ``jsonio.read_coco``); with
    the variant, the contour option and ``SCORING_VERSION`` it names the cache file, so editing the
    file, asking for another variant or changing the scoring code never reuses a cache file.
    ``source``: the file's name, for the errors about its data.
    """
    _check_options(variant, contour)
    cfile = None
    if use_cache:
        cfile = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), content_sha1, variant, contour)
        cached = load_cached(cfile, content_sha1, variant, contour)
        if cached is not None and cached.prune_image_id is not None:
            return cached
    if lazy:
        result = score_raw(data, variant, contour, workers, progress=progress, source=source)
    else:
        result = score_dataset(data, variant, contour, workers, progress=progress, source=source)
    if cfile is not None:
        try:
            save_cached(cfile, result, content_sha1)
        except OSError as e:
            log.warning("%s: cannot write cache file (%s)", cfile, e.strerror or e)
    return result


def score_file(
    ann_file: str | os.PathLike,
    variant: str = DEFAULT_VARIANT,
    contour: str = "largest",
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool | Callable[[int], None] = False,
) -> tuple[dict, ScoreResult]:
    """Load a COCO annotation file (``alseg.tfdp.jsonio.read_coco``) and score it, with an on-disk
    cache keyed by the sha1 of the file's bytes, the variant, the contour option and the scoring
    version (``score_loaded``). DataError when the file is missing or not a COCO JSON object."""
    _check_options(variant, contour)
    with gc_paused():
        loaded = read_coco(ann_file, digest=use_cache)
        result = score_loaded(loaded.data, loaded.sha1, variant, contour, workers, cache_dir, use_cache, progress,
                              source=str(ann_file))
    return loaded.data, result
