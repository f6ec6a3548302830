"""Polygon masks as pycocotools draws them, and their contour statistics, for many polygons at once.

``alseg.tfdp.scoring`` needs, for each polygon instance, the perimeter and area of the external
contour(s) that ``cv2.findContours`` traces on the mask that ``pycocotools`` rasterises. Doing that
one instance at a time (``frPoly`` -> RLE string -> ``decode`` -> ``findContours`` ->
``arcLength`` / ``contourArea``) costs ~50 us of mostly fixed overhead per instance. This module gets
bit-identical numbers for a whole batch of instances with a few dozen numpy calls and one
``findContours`` call per group of similar crops:

1. ``boundary_points``: the y-boundary points that pycocotools' ``rleFrPoly`` (maskApi.c) computes,
   worked out per polygon edge in closed form instead of walking the edge point by point on the 5x
   grid: a crossing of the pixel-centre column ``x`` (grid column ``5 x + 2``) by an edge, and the
   pixel row ``y`` where the run starts or ends. The arithmetic is the C code's, operation for
   operation in float64 (``(int)`` casts are ``trunc``), so the points are the same.
2. ``polygon_stats``: every instance's mask is laid out in a crop-sized block of a few packed
   canvases (one per group of crops of similar height; rows are the crop's columns, as in
   pycocotools' column-major RLE; an empty row between blocks keeps instances apart). The points
   toggle the pixel value (each pixel column holds an even number of them: a polygon is closed), so
   a single ``np.repeat`` of alternating 0 / 1 runs fills every block. Multi-part polygons are
   merged (union) as ``pycocotools.mask.merge`` does. ``cv2.findContours`` (RETR_EXTERNAL) traces
   each canvas once; a contour belongs to the block its first point lies in.
3. ``contour_stats``: perimeter and area from the contour points, exactly as ``cv2.arcLength`` and
   ``cv2.contourArea`` compute them. The contours come from ``CHAIN_APPROX_SIMPLE``: each segment
   is a straight run of axis steps (length 1 each) or diagonal steps (``cv2.arcLength`` adds
   ``float32(sqrt 2)`` for each, in double); every partial sum is a multiple of 2^-23 below 2^30,
   hence exact, so ``n_axis + n_diag * float32(sqrt 2)`` is the same double. The shoelace sum of
   integer points is exact in int64 and the same after removing collinear points.

Tests (``tests/test_tfdp.py``) compare against pycocotools + OpenCV instance by instance.
"""

from __future__ import annotations

import cv2
import numpy as np

from alseg.data.validation import EMPTY_MASK, OK, ZERO_AREA

SQRT2_F32 = float(np.sqrt(np.float32(2.0)))  # what cv2.arcLength adds per diagonal step


def upsampled(v: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """pycocotools' 5x grid coordinate ``(int)(5 v + .5)`` of each coordinate ``v`` (float64), in a
    crop starting at integer ``origin`` (per coordinate): int64 ``trunc(5 v + .5) - 5 origin``.

    As with the per-instance code this replaced (pycocotools on these crop coordinates), the
    float rounding of rleFrPoly's walk then runs on crop-relative values: for about 1 in 2000
    random self-crossing polygons with integer corners a pixel differs from the full-image mask
    (none in tiny_coco or tests/tfdp_cases.poly3000)."""
    return (np.trunc(v * 5.0 + 0.5) - 5.0 * origin).astype(np.int64)


def boundary_points(X: np.ndarray, Y: np.ndarray, vptr: np.ndarray, h: np.ndarray, w: np.ndarray,
                    base: np.ndarray | None = None, stride: np.ndarray | None = None):
    """The y-boundary points of ``rleFrPoly`` for every polygon part, in no particular order.

    X, Y: int64 upsampled vertex coordinates (``upsampled``) of all parts, concatenated;
    vptr: int64 (n_parts + 1,) vertex offsets of the parts; h, w: int64 (n_parts,) mask size.
    Returns ``(part, x, y)`` (int64; ``0 <= x < w``, ``0 <= y <= h``): the mask of a part is 1 where
    an odd number of its points precede the pixel in column-major order. With ``base`` and
    ``stride`` (int64 per part) returns ``(None, base[part] + x * stride[part] + y)`` instead.

    rleFrPoly walks every edge on the 5x grid from its end with the smaller major coordinate
    (``flip``), one grid step along the major axis at a time, the minor coordinate rounded as
    ``(int)(start + s * t + .5)``; a point is made where the walk steps from grid column ``5 x + 2``
    to ``5 x + 3`` or back (pixel centre column ``x``), at pixel row ``ceil((v + .5) / 5 - .5)``
    (clamped to [0, h]) of the smaller row ``v`` of the two walk points. Here each such step is
    found directly: along an x-major edge the step between ``t`` and ``t + 1``; along a y-major
    edge the first ``t`` whose rounded column is past the step, from the closed form, settled with
    the C expression where the closed form is within 1e-6 of an integer.
    """
    empty = np.zeros(0, np.int64)
    if X.size == 0:
        return (None, empty) if base is not None else (empty, empty, empty)
    n_v = X.size
    nxt = np.arange(1, n_v + 1)
    nxt[vptr[1:] - 1] = vptr[:-1]
    X1, Y1 = X[nxt], Y[nxt]
    adx, ady = np.abs(X1 - X), np.abs(Y1 - Y)
    part_of_v = np.repeat(np.arange(len(vptr) - 1), np.diff(vptr))
    lo = np.maximum(np.minimum(X, X1), 2)
    hi = np.minimum(np.maximum(X, X1) - 1, (5 * w - 3)[part_of_v])
    first = lo + (2 - lo) % 5  # first column 5 x + 2 the edge steps out of
    cnt = np.maximum((hi - first) // 5 + 1, 0)
    e = np.flatnonzero(cnt)
    if e.size == 0:
        return (None, empty) if base is not None else (empty, empty, empty)
    xmaj = adx[e] >= ady[e]
    e = e[np.argsort(~xmaj, kind="stable")]  # x-major edges first: contiguous slices, no masks
    n_x = int(np.count_nonzero(xmaj))
    cnt = cnt[e]
    Xe, X1e, Ye, Y1e = X[e], X1[e], Y[e], Y1[e]
    sw = np.concatenate([X1e[:n_x] < Xe[:n_x], Y1e[n_x:] < Ye[n_x:]])  # rleFrPoly's flip
    xs = np.where(sw, X1e, Xe).astype(np.float64)
    ys = np.where(sw, Y1e, Ye).astype(np.float64)
    num = np.empty(len(e))
    num[:n_x] = np.where(sw[:n_x], Ye[:n_x], Y1e[:n_x]) - ys[:n_x]
    num[n_x:] = np.where(sw[n_x:], Xe[n_x:], X1e[n_x:]) - xs[n_x:]
    s = num / np.concatenate([adx[e[:n_x]], ady[e[n_x:]]])
    fe = first[e].astype(np.float64)
    pe = part_of_v[e]
    start = np.cumsum(cnt) - cnt
    total = int(start[-1] + cnt[-1])
    k = np.arange(total, dtype=np.float64) - np.repeat(start.astype(np.float64), cnt)  # step index on its edge
    m = int(start[n_x]) if n_x < len(e) else total  # steps of x-major edges: [0, m)
    yr = np.empty(total)
    if m:
        # v(t) = (int)(ys + s t + .5) at t = c - xs, c = first + 5 k; the point takes the smaller of
        # v(t), v(t + 1): v(t) for s >= 0, v(t + 1) for s < 0 (v is monotonic along an edge)
        sx, cx = s[:n_x], cnt[:n_x]
        t = np.repeat(fe[:n_x] - xs[:n_x] + (sx < 0), cx)
        t += 5.0 * k[:m]
        t *= np.repeat(sx, cx)
        t += np.repeat(ys[:n_x], cx)
        t += 0.5
        np.trunc(t, out=yr[:m])
    if m < total:
        # u(t) = (int)(xs + s t + .5), v(t) = ys + t: the step sits between t - 1 and t, the first
        # t with u(t) >= c + 1 (s > 0) or u(t) <= c (s < 0); the point takes v(t - 1)
        cy = cnt[n_x:]
        sy = np.repeat(s[n_x:], cy)
        xy = np.repeat(xs[n_x:], cy)
        c = np.repeat(fe[n_x:], cy) + 5.0 * k[m:]
        est = (c + 0.5 - xy) / sy
        inc = sy > 0
        t = np.floor(est)
        frac = est - t
        t += 1.0
        t[(frac == 0.0) & inc] -= 1.0  # ceil(est) for s > 0, floor(est) + 1 for s < 0
        near = np.flatnonzero((frac < 1e-6) | (frac > 1.0 - 1e-6))
        if near.size:
            t[near] = _settle(t[near], xy[near], sy[near], c[near], inc[near])
        t += np.repeat(ys[n_x:] - 1.0, cy)
        yr[m:] = t
    yr += 0.5
    yr /= 5.0
    yr -= 0.5
    np.maximum(yr, 0.0, out=yr)
    np.minimum(yr, np.repeat(h[pe].astype(np.float64), cnt), out=yr)
    np.ceil(yr, out=yr)
    if base is None:
        x = (np.repeat((fe - 2.0) / 5.0, cnt) + k).astype(np.int64)
        return np.repeat(pe, cnt), x, yr.astype(np.int64)
    st = stride[pe].astype(np.float64)
    yr += np.repeat(base[pe] + (fe - 2.0) / 5.0 * st, cnt)
    yr += k * np.repeat(st, cnt)
    return None, yr.astype(np.int64)


def _settle(t: np.ndarray, xs: np.ndarray, s: np.ndarray, c: np.ndarray, inc: np.ndarray) -> np.ndarray:
    """The first t past the step (see ``boundary_points``), from an estimate within one, with the C
    expression; an exact search for any that one step does not settle (not seen)."""

    def past(tt):
        u = np.trunc((xs + s * tt) + 0.5)
        return np.where(inc, u >= c + 1.0, u <= c)

    t = np.where(past(t - 1.0), t - 1.0, np.where(past(t), t, t + 1.0))
    for i in np.flatnonzero(~past(t) | past(t - 1.0)).tolist():
        tt = 1.0
        while not past_one(xs[i], s[i], c[i], tt):
            tt += 1.0
        t[i] = tt
    return t


def past_one(xs: float, s: float, c: float, t: float) -> bool:
    """Scalar form of the step test of ``boundary_points`` (y-major edges)."""
    u = np.trunc((xs + s * t) + 0.5)
    return bool(u >= c + 1.0) if s > 0 else bool(u <= c)


CLASS_BITS = 3  # 2 ** CLASS_BITS canvas widths per octave (at most 12.5 % padding, 3.4 % on COCO)


def width_class(ch: np.ndarray) -> np.ndarray:
    """Row length of the canvas that holds a crop of height ``ch`` (its columns are canvas rows):
    ``ch`` rounded up to 2 ** CLASS_BITS classes per octave, to share canvases."""
    ch = np.maximum(ch, 1)
    step = np.left_shift(1, np.maximum(0, np.floor(np.log2(ch)).astype(np.int64) - CLASS_BITS))
    return -(-ch // step) * step


def contour_stats(pts: np.ndarray, lens: np.ndarray, owner: np.ndarray, n: int, mode: str):
    """Perimeter and area per owner from ``CHAIN_APPROX_SIMPLE`` contours (see the module doc).

    pts: int64 (k, 2) points of all contours, concatenated; lens: int64 points per contour (>= 1);
    owner: int64 (len(lens),) index in [0, n) of each contour. mode "largest": the contour of
    largest area (then perimeter); "all": sums over the contours. Returns float64 perimeter and
    area (NaN where an owner has no contour). Raises ValueError on a segment that is neither
    axis-aligned nor diagonal (not a CHAIN_APPROX_SIMPLE contour).
    """
    per = np.full(n, np.nan)
    area = np.full(n, np.nan)
    if not len(lens):
        return per, area
    starts = np.cumsum(lens) - lens
    nx = np.arange(1, len(pts) + 1)
    nx[starts + lens - 1] = starts
    x, y = pts[:, 0], pts[:, 1]
    x1, y1 = x[nx], y[nx]
    ax, ay = np.abs(x1 - x), np.abs(y1 - y)
    diag = ax == ay
    if not (diag | (ax == 0) | (ay == 0)).all():
        raise ValueError("contour segment neither axis-aligned nor diagonal")
    n_diag = np.add.reduceat(np.where(diag, ax, 0), starts)
    n_axis = np.add.reduceat(np.where(diag, 0, ax + ay), starts)
    P = n_axis + n_diag * SQRT2_F32
    A = np.abs(np.add.reduceat(x * y1 - y * x1, starts)) * 0.5
    if mode == "largest":
        o = np.lexsort((P, A, owner))
        last = o[np.flatnonzero(np.diff(owner[o], append=-1))]
        per[owner[last]] = P[last]
        area[owner[last]] = A[last]
    else:
        has = np.bincount(owner, minlength=n) > 0
        per[has] = np.bincount(owner, P, n)[has]
        area[has] = np.bincount(owner, A, n)[has]
    return per, area


def polygon_stats(X: np.ndarray, Y: np.ndarray, vptr: np.ndarray, iptr: np.ndarray, cw: np.ndarray,
                  ch: np.ndarray, contour: str = "largest"):
    """Perimeter, area and status (OK, EMPTY_MASK or ZERO_AREA) of the external contour(s) of each polygon
    instance's mask, as pycocotools + ``cv2.findContours(RETR_EXTERNAL)`` give them.

    X, Y: int64 upsampled crop-local vertex coordinates of every part; vptr: int64 (n_parts + 1,)
    vertex offsets of the parts; iptr: int64 (n + 1,) part offsets of the instances; cw, ch: int64
    (n,) crop width and height (>= 1). Memory: about ``sum((cw + 1) * ch) * 1.25`` bytes of canvas.
    """
    n = len(cw)
    nparts = np.diff(iptr)
    inst_of_part = np.repeat(np.arange(n), nparts)
    W = width_class(ch)
    order = np.argsort(W, kind="stable")
    Wo = W[order]
    rows_o = cw[order] + 1  # the block's rows and an empty one
    size_o = rows_o * Wo
    end_o = np.cumsum(size_o)
    base = np.empty(n, np.int64)
    base[order] = end_o - size_o
    total = int(end_o[-1]) if n else 0
    pbase = base[inst_of_part]
    multi = np.flatnonzero(nparts > 1)
    if multi.size:  # parts of multi-part polygons go to scratch blocks, merged below
        mp = np.flatnonzero(nparts[inst_of_part] > 1)
        sz = cw[inst_of_part[mp]] * W[inst_of_part[mp]]
        pbase[mp] = total + np.cumsum(sz) - sz
        total += int(sz.sum())
    _, pos = boundary_points(X, Y, vptr, ch[inst_of_part], cw[inst_of_part], pbase, W[inst_of_part])
    if total < 2**31:
        pos = pos.astype(np.int32)  # sorts faster
    pos.sort()
    runs = np.diff(pos, prepend=0, append=total)
    buf = np.repeat((np.arange(runs.size) & 1).astype(np.uint8), runs)
    for i in multi.tolist():
        a, size = int(base[i]), int(cw[i] * W[i])
        block = buf[a:a + size]
        for q in range(int(iptr[i]), int(iptr[i + 1])):
            b = int(pbase[q])
            np.bitwise_or(block, buf[b:b + size], out=block)
    # one findContours call per canvas (group of equal row length)
    cuts = np.flatnonzero(np.diff(Wo)) + 1
    g0 = np.concatenate([[0], cuts]).tolist()
    g1 = np.concatenate([cuts, [n]]).tolist()
    row0 = np.cumsum(rows_o) - rows_o  # first row of each block, counting all canvases' rows
    contours: list = []
    offsets = []
    for a, b in zip(g0, g1):
        wg = int(Wo[a])
        lo = int(end_o[a] - size_o[a])
        canvas = buf[lo:int(end_o[b - 1])].reshape(-1, wg)
        cs, _ = cv2.findContours(canvas, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contours.extend(cs)
        offsets.append(np.full(len(cs), row0[a], np.int64))
    if contours:
        lens = np.fromiter(map(len, contours), np.int64, len(contours))
        pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
        grow = np.concatenate(offsets) + pts[np.cumsum(lens) - lens, 1]
        owner = order[np.searchsorted(row0, grow, side="right") - 1]
    else:
        lens = owner = np.zeros(0, np.int64)
        pts = np.zeros((0, 2), np.int64)
    per, area = contour_stats(pts, lens, owner, n, contour)
    st = np.full(n, OK, np.int8)
    st[np.isnan(area)] = EMPTY_MASK
    st[(st == OK) & ~(area > 0)] = ZERO_AREA
    return per, area, st
