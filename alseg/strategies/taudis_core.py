"""Algorithm layer of TAUDIS (Yu et al., "Two-step active learning for instance segmentation with
uncertainty and diversity sampling") and of its baselines: pure numpy / scipy, no model code.

Everything works on arrays of per-instance records of the unlabeled pool, as produced by the model
inference (another module):

- ``image_index`` (n,) int: the image of each detected instance (index into a list of image ids),
- ``class_probs`` (n, C+1) float: softmax over the classes, background at column 0,
- ``mask_probs`` (n, h, w) float: the winning class's mask probabilities at RoI resolution,
- ``areas`` (n,) float: instance size in pixels (box or mask), for the weighted variants,
- ``labels`` (n,) int: the winning class (a column of ``class_probs``),
- ``embeddings`` (n, d) float: the instance embeddings (Sec. 3.1: average-pooled RoI features).

Conventions, the same in every function:

- Uncertainty: higher = more uncertain. Classification margin is the exception (higher = more
  confident; App. D selects the *lowest* average margin): pass ``-margin`` where an uncertainty is
  expected.
- Ties are broken by the lowest index (instance, row, image or class), so every function is
  deterministic; NaN scores rank after every finite score.
- Image scores of images without any instance are ``fill_empty`` (NaN by default), so that the caller
  can tell "nothing detected" apart from "zero uncertainty" and choose its own fallback.
"""

from __future__ import annotations

import heapq
import math
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.special import entr

# Hyper-parameters of App. C ("Implementation Details"). alpha and beta multiply the image budget B:
# |T_C| = alpha * B most uncertain instances (Alg. 1 line 5), |T_D| = beta * B representative ones
# (line 7), with alpha > beta > 1 (Alg. 1, "Require"). The paper ties them to the mean number of
# instances per image of the seed set ("alpha 2.5x higher than the average number of instances per
# image ... beta 1-2x higher than the same number") and reports these values:
ALPHA_COCO, BETA_COCO = 150, 40
ALPHA_OVERHEAD, BETA_OVERHEAD = 50, 30
DEFAULT_ALPHA, DEFAULT_BETA = ALPHA_COCO, BETA_COCO
# Cosine similarity threshold sigma: "sigma = 0.8 for all data sets" (App. C).
DEFAULT_SIGMA = 0.8
# TAUDIS-IMG (App. D, Alg. 2) oversamples alpha * B *images*; the paper gives no value for it. Ours:
# 2.5, the factor App. C applies to the number of instances per image, with one "instance" (the
# image) per image here.
DEFAULT_IMG_ALPHA = 2.5

# Working memory of one block of a blockwise pairwise computation (similarity or distance tile plus
# its boolean mask), in bytes.
BLOCK_BYTES = 64 * 2**20
_MASK_CHUNK_ROWS = 4096  # rows of mask_probs processed at once by segmentation_entropy


# -------------------------------------------------------------------------------------------------
# instance-level uncertainty (Sec. 3.2, App. A)


def _foreground(class_probs: np.ndarray, renormalize: bool) -> np.ndarray:
    p = np.asarray(class_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"class_probs must be (n, C+1) with background at column 0, got shape {p.shape}")
    fg = p[:, 1:]
    if renormalize:
        s = fg.sum(axis=1, keepdims=True)
        fg = np.divide(fg, s, out=np.full_like(fg, 1.0 / fg.shape[1]), where=s > 0)
    return fg


def classification_margin(class_probs: np.ndarray, *, renormalize: bool = True) -> np.ndarray:
    """CM_n = p_n(c_1) - p_n(c_2) (Eq. 1, App. A); (n,) float64, higher = more confident.

    c_1, c_2 are the two most probable classes. Eq. 1-2 index the classes c_1 .. c_K, i.e. the K
    foreground classes of the detector: the background column 0 is dropped and, with
    ``renormalize`` (default), the foreground probabilities are divided by their sum, i.e. the class
    distribution given that the detection is an object (a detection that survived the detector's
    post-processing is one). With a single foreground class the margin is p(c_1) - 0 (1 when
    renormalized). A row whose foreground mass is 0 is taken as uniform (margin 0).
    """
    fg = _foreground(class_probs, renormalize)
    if fg.shape[1] == 1:
        return fg[:, 0].copy()
    top2 = -np.partition(-fg, 1, axis=1)[:, :2]  # top2[:, 0] >= top2[:, 1]
    return top2[:, 0] - top2[:, 1]


def classification_entropy(class_probs: np.ndarray, *, renormalize: bool = True) -> np.ndarray:
    """CE_n = -sum_k p_n(c_k) log p_n(c_k) over the K foreground classes (Eq. 2, App. A), natural log.

    Same foreground convention as :func:`classification_margin` (background column dropped, the rest
    renormalized by default, so CE is in [0, log K]); 0 log 0 = 0.
    """
    return entr(_foreground(class_probs, renormalize)).sum(axis=1)


def segmentation_entropy(mask_probs: np.ndarray) -> np.ndarray:
    """SE_n = 1/(WH) sum_{w,h} BCE(m*_n(w, h)) (Eq. 3, App. A); (n,) float64, in [0, log 2].

    BCE of the winning class's mask probability p against itself, -p log p - (1-p) log(1-p), i.e. the
    binary entropy (natural log; 0 at p = 0 or 1), averaged over all W x H pixels of the RoI-resolution
    mask. Any trailing shape is accepted ((n, h, w) or (n, h*w)); processed in row chunks so the
    temporaries stay small.
    """
    m = np.asarray(mask_probs)
    n = m.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    m = m.reshape(n, -1)
    out = np.empty(n, dtype=np.float64)
    if m.shape[1] == 0:
        out[:] = np.nan
        return out
    for s in range(0, n, _MASK_CHUNK_ROWS):
        p = np.clip(m[s:s + _MASK_CHUNK_ROWS].astype(np.float64), 0.0, 1.0)
        out[s:s + _MASK_CHUNK_ROWS] = (entr(p) + entr(1.0 - p)).mean(axis=1)
    return out


# -------------------------------------------------------------------------------------------------
# image-level aggregation (App. B "simple averaging", App. D Eq. 4-5 and Round-Robin)


def _check_index(image_index: np.ndarray, n: int, n_images: int) -> np.ndarray:
    idx = np.asarray(image_index, dtype=np.int64).ravel()
    if idx.shape[0] != n:
        raise ValueError(f"image_index has {idx.shape[0]} entries for {n} values")
    if idx.size and (idx.min() < 0 or idx.max() >= n_images):
        raise ValueError(f"image_index out of range [0, {n_images})")
    return idx


def average_per_image(values: np.ndarray, image_index: np.ndarray, n_images: int,
                      fill_empty: float = np.nan) -> np.ndarray:
    """Mean instance score of each image ("simple averaging", App. B; Average CM, App. D).

    Returns (n_images,) float64; images with no instance get ``fill_empty`` (NaN by default).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    idx = _check_index(image_index, v.shape[0], n_images)
    sums = np.bincount(idx, weights=v, minlength=n_images)
    counts = np.bincount(idx, minlength=n_images)
    return np.divide(sums, counts, out=np.full(n_images, fill_empty, dtype=np.float64), where=counts > 0)


def instance_weights(areas: np.ndarray, image_index: np.ndarray, image_sizes: np.ndarray | None) -> np.ndarray:
    """s_n of Eq. 4-5: "the ratio of the size of instance t_n to the overall image size".

    ``areas`` are instance sizes in pixels and ``image_sizes`` (n_images,) the image sizes in pixels
    (H * W of the image the areas are measured in): s_n = areas[n] / image_sizes[image_index[n]].
    With ``image_sizes=None`` the areas are taken to be those ratios already.
    """
    a = np.asarray(areas, dtype=np.float64).ravel()
    if image_sizes is None:
        return a
    sizes = np.asarray(image_sizes, dtype=np.float64).ravel()
    return a / sizes[np.asarray(image_index, dtype=np.int64).ravel()]


def weighted_sum_per_image(values: np.ndarray, areas: np.ndarray, image_index: np.ndarray, n_images: int,
                           image_sizes: np.ndarray | None = None, fill_empty: float = np.nan) -> np.ndarray:
    """WCE / WSE = sum_n s_n * score_n over the instances of each image (Eq. 4-5, App. D).

    s_n as in :func:`instance_weights` (instance size / image size; a plain sum, not normalized by the
    sum of the weights). Returns (n_images,) float64. Eq. 4-5 would give 0 to an image without
    instances (an empty sum); it gets ``fill_empty`` (NaN by default) instead, so the caller decides.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    idx = _check_index(image_index, v.shape[0], n_images)
    w = instance_weights(areas, idx, image_sizes)
    sums = np.bincount(idx, weights=w * v, minlength=n_images).astype(np.float64)  # int when empty
    counts = np.bincount(idx, minlength=n_images)
    sums[counts == 0] = fill_empty
    return sums


def weighted_sum_per_image_class(values: np.ndarray, areas: np.ndarray, labels: np.ndarray,
                                 image_index: np.ndarray, n_images: int, n_classes: int,
                                 image_sizes: np.ndarray | None = None) -> np.ndarray:
    """Class-specific WSE(c_k) of App. D (Round-Robin): Eq. 5 restricted to the instances whose
    winning class is c_k. Returns (n_images, n_classes) float64, NaN where the image has no instance
    of that class (what :func:`round_robin_by_class` expects).

    Column j holds label j: with labels that are columns of ``class_probs`` pass
    ``n_classes = class_probs.shape[1]``; column 0 (background) then stays NaN and round robin skips it.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    idx = _check_index(image_index, v.shape[0], n_images)
    lab = np.asarray(labels, dtype=np.int64).ravel()
    if lab.shape[0] != v.shape[0]:
        raise ValueError(f"labels has {lab.shape[0]} entries for {v.shape[0]} values")
    if lab.size and (lab.min() < 0 or lab.max() >= n_classes):
        raise ValueError(f"labels out of range [0, {n_classes})")
    w = instance_weights(areas, idx, image_sizes)
    flat = idx * n_classes + lab
    sums = np.bincount(flat, weights=w * v, minlength=n_images * n_classes).astype(np.float64)
    counts = np.bincount(flat, minlength=n_images * n_classes)
    sums[counts == 0] = np.nan
    return sums.reshape(n_images, n_classes)


def rank_by_score(scores: np.ndarray, highest_first: bool = True) -> np.ndarray:
    """Indices sorted by score (highest first by default; lowest first for Average CM, App. D).

    NaN last; ties by lowest index.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    key = -s if highest_first else s.copy()
    key[np.isnan(key)] = np.inf
    return np.argsort(key, kind="stable")


# -------------------------------------------------------------------------------------------------
# similarity graph and maximum k-set cover (Sec. 3.3, Alg. 1 lines 6-7)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return np.ascontiguousarray(x * inv[:, None])


def _tile_shape(n_rows: int, n_cols: int, block, bytes_per_entry: int) -> tuple[int, int]:
    if isinstance(block, tuple):
        r, c = block
    else:
        r = 2048 if block is None else block
        c = None
    r = max(1, min(int(r), max(1, n_rows)))
    if c is None:
        c = max(1, BLOCK_BYTES // (bytes_per_entry * r))
    return r, max(1, min(int(c), max(1, n_cols)))


def cosine_similarity_graph(query_emb: np.ndarray, all_emb: np.ndarray, sigma: float = DEFAULT_SIGMA,
                            block: int | tuple[int, int] | None = None, binary: bool = False) -> sp.csr_matrix:
    """Sparse S of Alg. 1 line 6: cosine similarity between the |T_C| query embeddings (rows) and the
    |T_F| embeddings (columns), entries < sigma set to zero (Sec. 3.3: "edges kept only if s_ij is
    larger than sigma"; we keep s_ij >= sigma).

    Embeddings are L2-normalized once (a zero vector stays zero: similarity 0 to everything), in
    float32. S is computed tile by tile with a float32 matmul (numpy BLAS), never as a dense
    |T_C| x |T_F| matrix: ``block`` is the number of query rows per tile (default 2048) or a
    (rows, cols) tile shape; by default the column width is chosen so that a tile's similarities and
    its boolean mask take at most ``BLOCK_BYTES`` (64 MiB). When T_C is a subset of T_F, as in TAUDIS,
    the diagonal entries (s_ii = 1) are kept: a query covers itself.

    Returns a CSR matrix (|T_C|, |T_F|) with sorted column indices; data are the float32 similarities,
    or True with ``binary=True`` (1 byte per edge instead of 4; the cover only needs the pattern).
    Memory: ~5-8 bytes per edge, so sigma must keep the graph sparse.
    """
    q = _unit_rows(query_emb)
    f = _unit_rows(all_emb)
    if q.shape[1] != f.shape[1]:
        raise ValueError(f"embedding dimensions differ: {q.shape[1]} vs {f.shape[1]}")
    nq, nf = q.shape[0], f.shape[0]
    data_dtype = np.bool_ if binary else np.float32
    idx_dtype = np.int32 if nf < 2**31 else np.int64
    thr = np.float32(sigma)
    br, bc = _tile_shape(nq, nf, block, 5)
    sim_buf = np.empty((br, bc), dtype=np.float32)
    mask_buf = np.empty((br, bc), dtype=np.bool_)
    indptr = np.zeros(nq + 1, dtype=np.int64)
    all_cols, all_vals = [], []
    for r0 in range(0, nq, br):
        qb = q[r0:r0 + br]
        nr = qb.shape[0]
        rows_l, cols_l, vals_l = [], [], []
        for c0 in range(0, nf, bc):
            fb = f[c0:c0 + bc]
            nc = fb.shape[0]
            if nr == br and nc == bc:
                sim, mask = sim_buf, mask_buf
            else:
                sim, mask = np.empty((nr, nc), np.float32), np.empty((nr, nc), np.bool_)
            np.matmul(qb, fb.T, out=sim)
            np.greater_equal(sim, thr, out=mask)
            if not mask.any():
                continue
            flat = np.flatnonzero(mask)  # ~15x faster than the 2-D np.nonzero on a sparse mask
            rr = flat // nc
            rows_l.append(rr.astype(np.int32))
            cols_l.append((flat - rr * nc + c0).astype(idx_dtype))
            if not binary:
                vals_l.append(sim.ravel()[flat])
        if not rows_l:
            indptr[r0 + 1:r0 + nr + 1] = indptr[r0]
            continue
        rr = np.concatenate(rows_l)
        # Tiles come column-block by column-block, each in (row, col) order: a stable sort by row
        # gives (row, col) order over the whole row block.
        order = np.argsort(rr, kind="stable")
        all_cols.append(np.concatenate(cols_l)[order])
        if not binary:
            all_vals.append(np.concatenate(vals_l)[order])
        counts = np.bincount(rr, minlength=nr)
        indptr[r0 + 1:r0 + nr + 1] = indptr[r0] + np.cumsum(counts)
    nnz = int(indptr[-1])
    indices = np.concatenate(all_cols) if all_cols else np.zeros(0, dtype=idx_dtype)
    data = np.ones(nnz, dtype=np.bool_) if binary else (
        np.concatenate(all_vals) if all_vals else np.zeros(0, dtype=np.float32))
    if nnz < 2**31:
        indptr = indptr.astype(np.int32)
        indices = indices.astype(np.int32, copy=False)
    g = sp.csr_matrix((data, indices, indptr), shape=(nq, nf), dtype=data_dtype)
    g.has_sorted_indices = True
    return g


def greedy_max_cover(graph: sp.spmatrix, k: int, fill_order: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Maximum k-set cover by lazy greedy (Alg. 1 line 7: rows of S are the sets, columns the universe).

    Each step takes the row covering the most not-yet-covered columns (unweighted coverage: an entry
    of S counts whatever its similarity). Lazy evaluation: a max-heap holds upper bounds of the
    marginal gains (stale gains only decrease, by submodularity); the top entry is re-evaluated and
    taken only if it is fresh for this step, otherwise pushed back with its fresh gain. Entries are
    ordered by (-gain, row), so ties go to the lowest row index and the result is exactly the plain
    greedy's with lowest-index tie-breaking. (The paper uses the distributed algorithm of [26]; on
    one machine the classic greedy, with its (1 - 1/e) guarantee, is what it distributes.)

    Returns the chosen row indices in choice order, exactly ``min(k, n_rows)`` of them. When no row
    adds coverage any more (every column reachable is covered) the greedy stops and the remaining
    places are filled with the not-yet-chosen rows in ``fill_order`` (default: increasing row index;
    TAUDIS orders its rows by decreasing uncertainty, so that fills with the most uncertain ones).
    """
    g = sp.csr_matrix(graph)
    n_rows, n_cols = g.shape
    k = int(min(max(k, 0), n_rows))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if not g.has_canonical_format or (g.data.size and not g.data.all()):
        g = g.copy()
        g.sum_duplicates()  # one entry per (row, column)
        g.eliminate_zeros()  # explicit zeros (or False) are not edges
    indptr, indices = g.indptr, g.indices
    covered = np.zeros(n_cols, dtype=np.bool_)
    degree = np.diff(indptr)
    heap = [(-int(d), i) for i, d in enumerate(degree)]
    heapq.heapify(heap)
    fresh_at = np.zeros(n_rows, dtype=np.int64)  # step at which a row's heap key was computed (degrees: step 0)
    chosen: list[int] = []
    is_chosen = np.zeros(n_rows, dtype=np.bool_)
    while len(chosen) < k and heap:
        neg_gain, i = heapq.heappop(heap)
        step = len(chosen)
        if fresh_at[i] != step:
            cols = indices[indptr[i]:indptr[i + 1]]
            gain = int(cols.size - np.count_nonzero(covered[cols]))
            fresh_at[i] = step
            heapq.heappush(heap, (-gain, i))
            continue
        if neg_gain == 0:  # the best fresh gain is 0: nothing left to cover
            heapq.heappush(heap, (neg_gain, i))
            break
        chosen.append(i)
        is_chosen[i] = True
        covered[indices[indptr[i]:indptr[i + 1]]] = True
    if len(chosen) < k:
        order = np.arange(n_rows) if fill_order is None else np.asarray(fill_order, dtype=np.int64)
        for i in order:
            if len(chosen) >= k:
                break
            if not is_chosen[i]:
                chosen.append(int(i))
                is_chosen[i] = True
        if len(chosen) < k:  # fill_order did not list every row
            for i in np.flatnonzero(~is_chosen)[:k - len(chosen)]:
                chosen.append(int(i))
    return np.asarray(chosen, dtype=np.int64)


def _top_uncertain(uncertainty: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m highest uncertainties, highest first, NaN last, ties by lowest index."""
    return rank_by_score(uncertainty, highest_first=True)[:m]


def _multiple(factor: float, budget: int, n: int) -> int:
    return int(min(n, math.ceil(factor * budget - 1e-9)))


def majority_vote(chosen: np.ndarray, uncertainty: np.ndarray, image_index: np.ndarray) -> np.ndarray:
    """Sec. 3.4 / Alg. 1 line 8: images ranked by the number n_D of chosen instances they contain.

    Ties: larger summed uncertainty of their chosen instances first, then lowest image index. Returns
    every image that contains a chosen instance, best first.
    """
    chosen = np.asarray(chosen, dtype=np.int64)
    if chosen.size == 0:
        return np.zeros(0, dtype=np.int64)
    img = np.asarray(image_index, dtype=np.int64)[chosen]
    u = np.asarray(uncertainty, dtype=np.float64)[chosen]
    u = np.where(np.isnan(u), 0.0, u)
    images, inv = np.unique(img, return_inverse=True)
    counts = np.bincount(inv, minlength=images.size)
    usum = np.bincount(inv, weights=u, minlength=images.size)
    order = np.lexsort((images, -usum, -counts))  # last key is the primary one
    return images[order]


def taudis_select(uncertainty: np.ndarray, image_index: np.ndarray, embeddings: np.ndarray, budget_images: int,
                  alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, sigma: float = DEFAULT_SIGMA,
                  block: int | tuple[int, int] | None = None) -> np.ndarray:
    """TAUDIS, Alg. 1 lines 4-8, on the detected instances T_F of the unlabeled pool.

    1. T_C: the ceil(alpha * B) most uncertain instances (line 5; ties by lowest index, NaN last).
    2. S: cosine similarity graph T_C x T_F thresholded at sigma (line 6), rows in T_C's order
       (decreasing uncertainty).
    3. T_D: k = ceil(beta * B) rows chosen by greedy maximum k-set cover (line 7); if coverage runs out
       the rest are the most uncertain rows not chosen (:func:`greedy_max_cover`).
    4. Majority vote (line 8, Sec. 3.4): images ranked by the number of T_D instances they hold, ties by
       the summed uncertainty of those instances, then lowest image index.

    Returns the ranked image indices (values of ``image_index``): all images containing an instance of
    T_D, best first. The caller takes the top B and fills up with its fallback when fewer. alpha and
    beta default to the COCO values of App. C (the paper requires alpha > beta > 1).
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    n = u.shape[0]
    idx = np.asarray(image_index, dtype=np.int64).ravel()
    emb = np.asarray(embeddings)
    if idx.shape[0] != n or emb.shape[0] != n:
        raise ValueError(f"uncertainty ({n}), image_index ({idx.shape[0]}) and embeddings ({emb.shape[0]}) "
                         "must have one entry per instance")
    if not 0 < beta <= alpha:
        raise ValueError(f"TAUDIS needs alpha >= beta > 0 (the paper: alpha > beta > 1), "
                         f"got alpha={alpha}, beta={beta}")
    if budget_images <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    cand = _top_uncertain(u, _multiple(alpha, budget_images, n))
    graph = cosine_similarity_graph(emb[cand], emb, sigma, block=block, binary=True)
    rows = greedy_max_cover(graph, _multiple(beta, budget_images, cand.size))
    return majority_vote(cand[rows], u, idx)


def taudis_img_select(image_uncertainty: np.ndarray, image_embeddings: np.ndarray, budget_images: int,
                      alpha: float = DEFAULT_IMG_ALPHA, sigma: float = DEFAULT_SIGMA,
                      block: int | tuple[int, int] | None = None) -> np.ndarray:
    """TAUDIS-IMG, Alg. 2 lines 3-6 (App. D): the same two steps on image-level scores and embeddings.

    D_C: the ceil(alpha * B) most uncertain images (e.g. WSE, Eq. 5; NaN last, ties by lowest index);
    S: cosine similarity graph D_C x D_F (all the pool's images) thresholded at sigma; D_A: k = B rows
    by greedy maximum k-set cover, filled with the most uncertain candidates when coverage runs out.
    Returns min(B, n_images) image indices in choice order.
    """
    u = np.asarray(image_uncertainty, dtype=np.float64).ravel()
    emb = np.asarray(image_embeddings)
    if emb.shape[0] != u.shape[0]:
        raise ValueError(f"{u.shape[0]} image scores for {emb.shape[0]} image embeddings")
    if alpha < 1:
        raise ValueError(f"TAUDIS-IMG needs alpha >= 1, got {alpha}")
    if budget_images <= 0 or u.size == 0:
        return np.zeros(0, dtype=np.int64)
    cand = _top_uncertain(u, _multiple(alpha, budget_images, u.size))
    graph = cosine_similarity_graph(emb[cand], emb, sigma, block=block, binary=True)
    return cand[greedy_max_cover(graph, min(budget_images, cand.size))]


# -------------------------------------------------------------------------------------------------
# baselines (App. D)


def kcenter_greedy(embeddings: np.ndarray, labeled_mask: np.ndarray | None, budget: int,
                   block: int | None = None) -> np.ndarray:
    """Core-set baseline (App. D; Sener & Savarese [35]): greedy k-center, Euclidean distance.

    Each step picks the unlabeled point farthest from its nearest centre (centres: the labeled points
    and the points picked so far; ties by lowest index) and updates a running min-distance vector:
    O(|U| * (|L| + budget) * d) for |U| unlabeled and |L| labeled points. float32; the data are
    centred first (distances do not change, the ||x||^2 + ||c||^2 - 2 x.c expansion loses less
    precision). The initial distances to the labeled
    set are computed in tiles of ``block`` unlabeled rows x labeled columns (default: tiles of at most
    BLOCK_BYTES).

    With no labeled point the first pick is the point nearest the mean of all points (the most
    central one, lowest index on ties); it counts towards the budget. Returns min(budget, #unlabeled)
    indices into ``embeddings``, in pick order.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {x.shape}")
    n = x.shape[0]
    labeled = np.zeros(n, dtype=np.bool_) if labeled_mask is None else np.asarray(labeled_mask, dtype=np.bool_).ravel()
    if labeled.shape[0] != n:
        raise ValueError(f"labeled_mask has {labeled.shape[0]} entries for {n} points")
    budget = int(min(max(budget, 0), n - int(labeled.sum())))
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    x = x - x.mean(axis=0, dtype=np.float64).astype(np.float32)
    unl = np.flatnonzero(~labeled)
    # Only the unlabeled rows are candidates: the greedy steps read just those (memory-bound matvecs).
    xu = np.ascontiguousarray(x[unl])
    squ = np.einsum("ij,ij->i", xu, xu, dtype=np.float32)
    # squared distance of each unlabeled point to its nearest centre; -inf = picked
    min_d = np.empty(unl.size, dtype=np.float32)
    chosen: list[int] = []  # positions in unl
    if labeled.any():
        xl = x[labeled]
        sql = np.einsum("ij,ij->i", xl, xl, dtype=np.float32)
        xl *= -2.0  # tile = -2 x.l + ||l||^2, min over l, then + ||x||^2
        br, bc = _tile_shape(unl.size, xl.shape[0], block, 4)
        buf = np.empty((br, bc), dtype=np.float32)
        for r0 in range(0, unl.size, br):
            xr = xu[r0:r0 + br]
            best = np.full(xr.shape[0], np.inf, dtype=np.float32)
            for c0 in range(0, xl.shape[0], bc):
                xc = xl[c0:c0 + bc]
                d = buf if (xr.shape[0], xc.shape[0]) == buf.shape else None
                d = np.matmul(xr, xc.T, out=d)
                d += sql[None, c0:c0 + bc]
                np.minimum(best, d.min(axis=1), out=best)
            best += squ[r0:r0 + br]
            min_d[r0:r0 + br] = np.maximum(best, 0.0)
    else:
        # centred data: the point nearest the mean is the one with the smallest norm
        first = int(np.argmin(squ))
        chosen.append(first)
        min_d[:] = np.inf
        min_d[first] = -np.inf
    while len(chosen) < budget:
        if chosen:  # fold the last pick into the running minimum
            i = chosen[-1]
            d = xu @ xu[i]
            d *= -2.0
            d += squ
            d += squ[i]
            np.maximum(d, 0.0, out=d)
            np.minimum(min_d, d, out=min_d)  # -inf (picked) stays -inf
            min_d[i] = -np.inf
        chosen.append(int(np.argmax(min_d)))
    return unl[np.asarray(chosen, dtype=np.int64)]


def round_robin_by_class(class_image_scores: np.ndarray, budget: int) -> np.ndarray:
    """Round-Robin baseline (App. D, following Citovsky et al. [48]).

    ``class_image_scores`` (n_images, C): class-specific WSE(c_k) of each image, NaN where the image has
    no instance of class k (:func:`weighted_sum_per_image_class`). Classes are visited in increasing
    column order, cyclically; each visit takes the not-yet-chosen image with the highest score for that
    class (ties by lowest image index); a class with no candidate left is skipped. Stops at ``budget``
    images or when no class has a candidate. Returns image indices in choice order.
    """
    s = np.asarray(class_image_scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"class_image_scores must be (n_images, C), got shape {s.shape}")
    n_images, n_classes = s.shape
    budget = int(min(max(budget, 0), n_images))
    queues, pos = [], []
    for c in range(n_classes):
        col = s[:, c]
        valid = np.flatnonzero(~np.isnan(col))
        queues.append(valid[np.argsort(-col[valid], kind="stable")])
        pos.append(0)
    taken = np.zeros(n_images, dtype=np.bool_)
    chosen: list[int] = []
    active = [c for c in range(n_classes) if queues[c].size]
    while len(chosen) < budget and active:
        still = []
        for c in active:
            if len(chosen) >= budget:
                still.append(c)
                continue
            q, p = queues[c], pos[c]
            while p < q.size and taken[q[p]]:
                p += 1
            if p < q.size:
                taken[q[p]] = True
                chosen.append(int(q[p]))
                p += 1
            pos[c] = p
            if p < q.size:
                still.append(c)
        active = still
    return np.asarray(chosen, dtype=np.int64)


__all__ = [
    "ALPHA_COCO", "ALPHA_OVERHEAD", "BETA_COCO", "BETA_OVERHEAD", "BLOCK_BYTES", "DEFAULT_ALPHA", "DEFAULT_BETA",
    "DEFAULT_IMG_ALPHA", "DEFAULT_SIGMA",
    "average_per_image", "classification_entropy", "classification_margin", "cosine_similarity_graph",
    "greedy_max_cover", "instance_weights", "kcenter_greedy", "majority_vote", "rank_by_score",
    "round_robin_by_class", "segmentation_entropy", "taudis_img_select", "taudis_select",
    "weighted_sum_per_image", "weighted_sum_per_image_class",
]
