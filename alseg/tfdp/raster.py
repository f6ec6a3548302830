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
    crop starting at integer ``origin`` (per coordinate): int64 ``trunc(5 v + .5) - 5 origin``."""
    return (np.trunc(v * 5.0 + 0.5) - 5.0 * origin).astype(np.int64)


def boundary_points(X: np.ndarray, Y: np.ndarray, vptr: np.ndarray, h: np.ndarray, w: np.ndarray,
                    base: np.ndarray | None = None, stride: np.ndarray | None = None):
    """The y-boundary points of ``rleFrPoly`` for every polygon part, in no particular order.

    X, Y: int64 upsampled vertex coordinates (``upsampled``) of all parts, concatenated;
    vptr: int64 (n_parts + 1,) vertex offsets of the parts; h, w: int64 (n_parts,) mask size.
    Returns ``(part, x, y)`` (int64; ``0 <= x < w``, ``0 <= y <= h``): the mask of a part is 1 where
    an odd number of its points precede the pixel in column-major order. With ``base`` and
    ``stride`` (int64 per part) returns ``(part, base[part] + x * stride[part] + y)`` instead.
    """
    n_v = X.size
    if n_v == 0:
        z = np.zeros(0, np.int64)
        return (z, z) if base is not None else (z, z, z)
    nxt = np.arange(1, n_v + 1)
    nxt[vptr[1:] - 1] = vptr[:-1]
    part_of_v = np.repeat(np.arange(len(vptr) - 1), np.diff(vptr))
    X1, Y1 = X[nxt], Y[nxt]
    dx, dy = np.abs(X1 - X), np.abs(Y1 - Y)
    xmaj = dx >= dy
    # rleFrPoly walks each edge from the end with the smaller major coordinate ("flip")
    flip = np.where(xmaj, X > X1, Y > Y1)
    xs = np.where(flip, X1, X)
    xe = np.where(flip, X, X1)
    ys = np.where(flip, Y1, Y)
    ye = np.where(flip, Y, Y1)
    # a boundary point wherever the walk steps between grid columns u' and u' + 1 with
    # u' = 5 x + 2 (a pixel centre column) and 0 <= x <= w - 1
    lo = np.maximum(np.minimum(xs, xe), 2)
    hi = np.minimum(np.maximum(xs, xe) - 1, 5 * w[part_of_v] - 3)
    first = lo + (2 - lo) % 5
    cnt = np.where(hi >= first, (hi - first) // 5 + 1, 0)
    e = np.flatnonzero(cnt)
    if e.size == 0:
        z = np.zeros(0, np.int64)
        return (z, z) if base is not None else (z, z, z)
    # x-major edges first, then y-major ones: contiguous slices instead of masks
    e = e[np.argsort(~xmaj[e], kind="stable")]
    n_x = int(np.count_nonzero(xmaj[e]))
    cnt = cnt[e]
    first, part = first[e], part_of_v[e]
    xs_e, ys_e = xs[e].astype(np.float64), ys[e].astype(np.float64)
    num = np.where(xmaj[e], ye[e] - ys[e], xe[e] - xs[e]).astype(np.float64)
    s_e = num / np.where(xmaj[e], dx[e], dy[e])
    total = int(cnt.sum())
    start = np.cumsum(cnt) - cnt
    # per crossing: c = first + 5 k, k = 0 .. cnt - 1
    k5 = 5.0 * (np.arange(total, dtype=np.float64) - np.repeat(start, cnt))
    c = np.repeat(first.astype(np.float64), cnt) + k5
    xsf = np.repeat(xs_e, cnt)
    ysf = np.repeat(ys_e, cnt)
    s = np.repeat(s_e, cnt)
    yr = np.empty(total, np.float64)
    m = int(start[n_x]) if n_x < len(e) else total  # crossings of x-major edges: [0, m)
    if m:
        # v(t) = (int)(ys + s t + .5) with t = u - xs; the point takes min(v(t'), v(t' + 1)),
        # which is v(t') for s >= 0 and v(t' + 1) for s < 0 (v is monotonic along an edge)
        sx = s[:m]
        t = (c[:m] - xsf[:m]) + (sx < 0)
        yr[:m] = np.trunc((ysf[:m] + sx * t) + 0.5)
    if m < total:
        # u(t) = (int)(xs + s t + .5), v = ys + t: the smallest t whose u is past the step; the
        # point takes v = ys + t - 1. Estimated in closed form, then settled with the exact test.
        sy, xy, cy = s[m:], xsf[m:], c[m:]
        inc = sy > 0
        est = (cy + 0.5 - xy) / sy
        t = np.where(inc, np.ceil(est), np.floor(est) + 1.0)
        lim = cy + 1.0

        def past(tt):
            u = np.trunc((xy + sy * tt) + 0.5)
            return np.where(inc, u >= lim, u <= cy)

        before = past(t - 1.0)
        t = np.where(before, t - 1.0, np.where(past(t), t, t + 1.0))
        bad = ~past(t) | past(t - 1.0)
        if bad.any():  # never seen; an exact search keeps the result right regardless
            for i in np.flatnonzero(bad).tolist():
                tt = 1.0
                while not past_one(xy[i], sy[i], cy[i], tt):
                    tt += 1.0
                t[i] = tt
        yr[m:] = ysf[m:] + t - 1.0
    part = np.repeat(part, cnt)
    x = ((c - 2.0) / 5.0).astype(np.int64)
    yd = (yr + 0.5) / 5.0 - 0.5
    hp = h[part].astype(np.float64)
    y = np.ceil(np.minimum(np.maximum(yd, 0.0), hp)).astype(np.int64)
    if base is None:
        return part, x, y
    return part, base[part] + x * stride[part] + y


def past_one(xs: float, s: float, c: float, t: float) -> bool:
    """Scalar form of the step test of ``boundary_points`` (y-major edges)."""
    u = np.trunc((xs + s * t) + 0.5)
    return bool(u >= c + 1.0) if s > 0 else bool(u <= c)


def width_class(ch: np.ndarray) -> np.ndarray:
    """Row length of the canvas that holds a crop of height ``ch`` (its columns are canvas rows):
    ``ch`` rounded up to 4 classes per octave (at most 25 % padding), to share canvases."""
    ch = np.maximum(ch, 1)
    step = np.left_shift(1, np.maximum(0, np.floor(np.log2(ch)).astype(np.int64) - 2))
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
