"""TAUDIS algorithm layer (alseg.strategies.taudis_core): hand-computed cases and brute-force references.

ln 2 = 0.693147..., ln 4 = 1.386294...; the entropies are natural-log.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from alseg.strategies import taudis_core as tc
from alseg.strategies.taudis_core import (
    average_per_image,
    classification_entropy,
    classification_margin,
    cosine_similarity_graph,
    greedy_max_cover,
    kcenter_greedy,
    majority_vote,
    rank_by_score,
    round_robin_by_class,
    segmentation_entropy,
    taudis_img_select,
    taudis_select,
    weighted_sum_per_image,
    weighted_sum_per_image_class,
)

LN2 = math.log(2)


def sets_to_csr(sets, n_cols):
    """Rows = sets (lists of column indices) of a 0/1 CSR matrix."""
    rows = [r for r, s in enumerate(sets) for _ in s]
    cols = [c for s in sets for c in s]
    return sp.csr_matrix((np.ones(len(cols), bool), (rows, cols)), shape=(len(sets), n_cols))


# -------------------------------------------------------------------------------------------------
# instance uncertainty (Eq. 1-3)

# columns: background, c1, c2, c3
PROBS = np.array([
    [0.0, 0.5, 0.3, 0.2],    # foreground already sums to 1
    [0.5, 0.25, 0.25, 0.0],  # renormalized: (0.5, 0.5, 0)
    [0.2, 0.8, 0.0, 0.0],    # renormalized: (1, 0, 0)
    [0.0, 0.25, 0.25, 0.5],  # top-2: 0.5 and 0.25
])


def test_classification_margin_by_hand():
    # row 0: 0.5 - 0.3 = 0.2; row 1: 0.5 - 0.5 = 0; row 2: 1 - 0 = 1; row 3: 0.5 - 0.25 = 0.25
    np.testing.assert_allclose(classification_margin(PROBS), [0.2, 0.0, 1.0, 0.25], atol=1e-12)
    # raw foreground probabilities: row 1: 0.25 - 0.25 = 0; row 2: 0.8 - 0 = 0.8
    np.testing.assert_allclose(classification_margin(PROBS, renormalize=False), [0.2, 0.0, 0.8, 0.25], atol=1e-12)
    # background column is never a candidate: bg 0.9 > every foreground probability
    assert classification_margin(np.array([[0.9, 0.06, 0.04]]), renormalize=False)[0] == pytest.approx(0.02)
    # a single foreground class: p(c1) - 0
    np.testing.assert_allclose(classification_margin(np.array([[0.3, 0.7]])), [1.0])
    np.testing.assert_allclose(classification_margin(np.array([[0.3, 0.7]]), renormalize=False), [0.7])


def test_classification_entropy_by_hand():
    # row 0: -(0.5 ln 0.5 + 0.3 ln 0.3 + 0.2 ln 0.2) = 0.346574 + 0.361192 + 0.321888 = 1.029653
    # row 1: (0.5, 0.5, 0) -> ln 2; row 2: (1, 0, 0) -> 0 (0 ln 0 = 0)
    # row 3: -(2 * 0.25 ln 0.25 + 0.5 ln 0.5) = 0.693147 + 0.346574 = 1.039721
    np.testing.assert_allclose(classification_entropy(PROBS), [1.029653, LN2, 0.0, 1.039721], atol=1e-6)
    # raw row 2: -0.8 ln 0.8 = 0.178515
    assert classification_entropy(PROBS, renormalize=False)[2] == pytest.approx(0.178515, abs=1e-6)
    # uniform over K = 4 foreground classes: ln 4
    assert classification_entropy(np.array([[0.6, 0.1, 0.1, 0.1, 0.1]]))[0] == pytest.approx(math.log(4))


def test_segmentation_entropy_by_hand(monkeypatch):
    m = np.empty((4, 28, 28), np.float32)
    m[0] = 0.5                       # ln 2 everywhere -> ln 2
    m[1] = 1.0                       # certain -> 0
    m[2] = 0.0
    m[2, :14] = 0.5                  # half the pixels ln 2, half 0 -> ln 2 / 2
    m[3] = 0.1                       # -(0.1 ln 0.1 + 0.9 ln 0.9) = 0.230259 + 0.094824 = 0.325083
    expected = [LN2, 0.0, LN2 / 2, 0.325083]
    np.testing.assert_allclose(segmentation_entropy(m), expected, atol=1e-6)
    monkeypatch.setattr(tc, "_MASK_CHUNK_ROWS", 3)  # chunked path gives the same
    np.testing.assert_allclose(segmentation_entropy(m), expected, atol=1e-6)
    np.testing.assert_allclose(segmentation_entropy(m.reshape(4, -1)), expected, atol=1e-6)


# -------------------------------------------------------------------------------------------------
# image aggregation (App. B, D)


def test_average_per_image():
    out = average_per_image([1.0, 2.0, 3.0, 4.0], [0, 0, 2, 2], 4)
    np.testing.assert_allclose(out[[0, 2]], [1.5, 3.5])
    assert np.isnan(out[1]) and np.isnan(out[3])
    np.testing.assert_allclose(average_per_image([1.0], [1], 2, fill_empty=math.log(2)), [LN2, 1.0])
    with pytest.raises(ValueError):
        average_per_image([1.0], [3], 2)


def test_weighted_sums_by_hand():
    values = [0.5, 0.2, 0.4]
    areas = [100.0, 300.0, 50.0]
    idx = [0, 0, 1]
    sizes = [1000.0, 500.0, 800.0]
    # s = areas / image size = (0.1, 0.3, 0.1)
    # image 0: 0.1 * 0.5 + 0.3 * 0.2 = 0.05 + 0.06 = 0.11; image 1: 0.1 * 0.4 = 0.04; image 2: none
    out = weighted_sum_per_image(values, areas, idx, 3, image_sizes=sizes)
    np.testing.assert_allclose(out[:2], [0.11, 0.04])
    assert np.isnan(out[2])
    np.testing.assert_allclose(weighted_sum_per_image(values, areas, idx, 3, sizes, fill_empty=0.0), [0.11, 0.04, 0.0])
    # areas already given as ratios
    np.testing.assert_allclose(weighted_sum_per_image(values, [0.1, 0.3, 0.1], idx, 2), [0.11, 0.04])

    # class-specific WSE(c_k), labels are class_probs columns (1..2), n_classes = 3 (column 0 = background)
    per_class = weighted_sum_per_image_class(values, areas, [1, 2, 1], idx, 3, 3, image_sizes=sizes)
    assert per_class.shape == (3, 3)
    np.testing.assert_allclose(per_class[0, 1:], [0.05, 0.06])
    assert per_class[1, 1] == pytest.approx(0.04)
    assert np.isnan(per_class[:, 0]).all() and np.isnan(per_class[1, 2]) and np.isnan(per_class[2]).all()
    # the class columns add up to the image WSE
    np.testing.assert_allclose(np.nansum(per_class, axis=1)[:2], out[:2])


def test_rank_by_score():
    s = [0.2, np.nan, 0.5, 0.2, -1.0]
    assert rank_by_score(s).tolist() == [2, 0, 3, 4, 1]  # ties by index, NaN last
    assert rank_by_score(s, highest_first=False).tolist() == [4, 0, 3, 2, 1]


# -------------------------------------------------------------------------------------------------
# maximum k-set cover


def plain_greedy(dense: np.ndarray, k: int) -> list[int]:
    """Brute force: every step evaluates every row; ties by lowest index; at gain 0 fill by index."""
    n_rows = dense.shape[0]
    covered = np.zeros(dense.shape[1], bool)
    chosen: list[int] = []
    while len(chosen) < min(k, n_rows):
        gains = [(-1 if r in chosen else int((dense[r] & ~covered).sum())) for r in range(n_rows)]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        chosen.append(best)
        covered |= dense[best]
    chosen += [r for r in range(n_rows) if r not in chosen][:min(k, n_rows) - len(chosen)]
    return chosen


def test_greedy_cover_hand_example():
    # 5 sets over 8 elements
    sets = [{0, 1, 2, 3}, {4, 5, 6, 7}, {0, 1, 4, 5, 6}, {2, 3, 7}, {0, 4}]
    g = sets_to_csr(sets, 8)
    # step 1: S2 (5 new); step 2: gains S0 2, S1 1, S3 3, S4 0 -> S3; everything is covered then.
    assert greedy_max_cover(g, 2).tolist() == [2, 3]
    # k = 3: no gain left -> filled with the lowest remaining row; k = 5: all rows
    assert greedy_max_cover(g, 3).tolist() == [2, 3, 0]
    assert greedy_max_cover(g, 5).tolist() == [2, 3, 0, 1, 4]
    assert greedy_max_cover(g, 9).tolist() == [2, 3, 0, 1, 4]  # at most n_rows
    assert greedy_max_cover(g, 3, fill_order=[4, 1, 0, 2, 3]).tolist() == [2, 3, 4]
    assert greedy_max_cover(g, 0).tolist() == []
    # float similarities are treated as a 0/1 pattern; explicit zeros are not edges
    gf = sp.csr_matrix(g.astype(np.float32) * 0.9)
    assert greedy_max_cover(gf, 2).tolist() == [2, 3]
    gz = sp.csr_matrix((np.array([0.0, 1.0, 1.0]), np.array([0, 1, 2]), np.array([0, 1, 3])), shape=(2, 3))
    assert greedy_max_cover(gz, 1).tolist() == [1]


def test_greedy_is_greedy_not_optimal():
    # A = {0,1,2,3}, B = {0,1,4}, C = {2,3,5}: greedy takes A then B (gain 1, tie with C -> lower
    # index) and covers 5 elements, while {B, C} covers all 6.
    g = sets_to_csr([{0, 1, 2, 3}, {0, 1, 4}, {2, 3, 5}], 6)
    assert greedy_max_cover(g, 2).tolist() == [0, 1]


def test_lazy_greedy_equals_plain_greedy():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n_rows, n_cols = rng.integers(1, 25), rng.integers(1, 40)
        dense = rng.random((n_rows, n_cols)) < rng.uniform(0.02, 0.5)
        k = int(rng.integers(0, n_rows + 2))
        got = greedy_max_cover(sp.csr_matrix(dense), k).tolist()
        assert got == plain_greedy(dense, k), (trial, n_rows, n_cols, k)


# -------------------------------------------------------------------------------------------------
# similarity graph


def dense_reference(q, f, sigma):
    q = np.asarray(q, np.float64)
    f = np.asarray(f, np.float64)
    qn = q / np.where(np.linalg.norm(q, axis=1, keepdims=True) > 0, np.linalg.norm(q, axis=1, keepdims=True), 1)
    fn = f / np.where(np.linalg.norm(f, axis=1, keepdims=True) > 0, np.linalg.norm(f, axis=1, keepdims=True), 1)
    return qn @ fn.T


@pytest.mark.parametrize("block", [1, 3, 7, 64, None, (2, 5), (7, 1), (1, 1000)])
def test_blockwise_graph_equals_dense(block):
    rng = np.random.default_rng(1)
    f = rng.standard_normal((53, 6)).astype(np.float32)
    f[5] = 0.0  # a zero embedding: no edge at all
    f[7] = 3.0 * f[8]  # same direction, different norm: similarity 1
    q = f[rng.permutation(53)[:17]]
    sigma = 0.3
    s = dense_reference(q, f, sigma)
    g = cosine_similarity_graph(q, f, sigma, block=block)
    assert isinstance(g, sp.csr_matrix) and g.shape == (17, 53) and g.has_sorted_indices
    got = g.toarray()
    edge, clear = s >= sigma, np.abs(s - sigma) > 1e-5  # float32 may flip entries within 1e-5 of sigma
    assert ((got != 0) == edge)[clear].all()
    np.testing.assert_allclose(got[edge & clear], s[edge & clear], atol=1e-5)
    gb = cosine_similarity_graph(q, f, sigma, block=block, binary=True)
    assert gb.dtype == np.bool_ and (gb.indices == g.indices).all() and (gb.indptr == g.indptr).all()


def test_graph_self_edges_and_memory_bound(monkeypatch):
    rng = np.random.default_rng(2)
    f = rng.standard_normal((40, 4))
    g = cosine_similarity_graph(f[:10], f, 0.999)
    np.testing.assert_allclose(g.diagonal(), 1.0, atol=1e-5)  # a query covers itself
    # tiles are bounded by BLOCK_BYTES (similarities + mask: 5 bytes per entry)
    r, c = tc._tile_shape(20_000, 200_000, None, 5)
    assert r * c * 5 <= tc.BLOCK_BYTES
    monkeypatch.setattr(tc, "BLOCK_BYTES", 5 * 2 * 3)  # tiles of 2 rows x 3 columns
    assert tc._tile_shape(10, 40, 2, 5) == (2, 3)
    small = cosine_similarity_graph(f[:10], f, 0.2, block=2)
    ref = cosine_similarity_graph(f[:10], f, 0.2, block=(10, 40))
    assert (small.indptr == ref.indptr).all() and (small.indices == ref.indices).all()
    np.testing.assert_allclose(small.data, ref.data, atol=1e-6)  # BLAS rounding differs between tile shapes
    # no edges at all
    empty = cosine_similarity_graph(np.eye(3)[:2], np.eye(3)[2:], 0.5)
    assert empty.nnz == 0 and empty.shape == (2, 1)


# -------------------------------------------------------------------------------------------------
# majority vote and TAUDIS end to end


def test_majority_vote_with_ties():
    image_index = [0, 0, 1, 1, 2, 2, 3, 4]
    unc = [0.25, 0.25, 0.75, 0.25, 0.5, 0.5, 1.0, 0.9]
    # chosen: all but instance 7 -> counts: img0 2 (sum 0.5), img1 2 (1.0), img2 2 (1.0), img3 1 (1.0)
    # img1 and img2 tie on count and sum -> lower index first; img0 before img3 (count wins over sum)
    assert majority_vote([0, 1, 2, 3, 4, 5, 6], unc, image_index).tolist() == [1, 2, 0, 3]
    # image 4 is absent: it holds no chosen instance
    assert majority_vote([6, 0], unc, image_index).tolist() == [3, 0]
    assert majority_vote([], unc, image_index).tolist() == []


def concept_pool():
    """Instances of 4 'concepts' (orthogonal embedding directions A, B, C, D) in 6 images.

    inst  image concept uncertainty
     0     0     A      0.90
     1     0     A      0.89
     2     0     A      0.88
     3     1     A      0.87
     4     1     A      0.86
     5     2     B      0.85
     6     2     C      0.20
     7     3     C      0.84
     8     3     B      0.10
     9     4     D      0.83
    10     5     D      0.05
    11     5     D      0.05
    """
    concept = [0, 0, 0, 0, 0, 1, 2, 2, 1, 3, 3, 3]
    image = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 5])
    unc = np.array([0.90, 0.89, 0.88, 0.87, 0.86, 0.85, 0.20, 0.84, 0.10, 0.83, 0.05, 0.05])
    rng = np.random.default_rng(3)
    emb = np.eye(8)[concept] * 5.0 + 0.05 * rng.standard_normal((12, 8))  # within: cos ~ 1, across: ~ 0
    return unc, image, emb


def test_taudis_select_end_to_end():
    unc, image, emb = concept_pool()
    # B = 2, alpha = 4, beta = 2: T_C = the 8 most uncertain = instances 0-5, 7, 9 (rows in that order)
    # sets (covered instances): rows 0-4 (A) {0..4}: 5; row 5 (B) {5, 8}; row 6 (inst 7, C) {6, 7};
    # row 7 (inst 9, D) {9, 10, 11}.
    # k = 4: inst 0 (5 new), inst 9 (3), inst 5 (2, tie with inst 7 -> lower row), inst 7 (2)
    # votes: one each in images 0, 4, 2, 3 -> by summed uncertainty 0.90, 0.85, 0.84, 0.83
    ranked = taudis_select(unc, image, emb, 2, alpha=4, beta=2, sigma=0.8)
    assert ranked.tolist() == [0, 2, 3, 4]
    # pure uncertainty would take images 0 and 1 (both concept A); image 1 is redundant here
    # k = 6: everything is covered after 4 picks -> filled with the most uncertain rows left: inst 1, 2
    # (image 0) -> image 0 has 3 votes, the others 1
    assert taudis_select(unc, image, emb, 2, alpha=4, beta=3, sigma=0.8).tolist() == [0, 2, 3, 4]
    # B = 1, alpha = beta = 2 -> T_C = inst 0, 1 (both A), k = 2: inst 0, then no gain -> inst 1
    assert taudis_select(unc, image, emb, 1, alpha=2, beta=2, sigma=0.8).tolist() == [0]
    # NaN uncertainty ranks last: with instance 0 unknown, T_C = inst 1, 2 -> still image 0
    unc2 = unc.copy()
    unc2[0] = np.nan
    assert taudis_select(unc2, image, emb, 1, alpha=2, beta=1, sigma=0.8).tolist() == [0]
    assert taudis_select(unc, image, emb, 0).tolist() == []
    with pytest.raises(ValueError):
        taudis_select(unc, image, emb, 2, alpha=2, beta=3)


def test_taudis_img_select():
    unc = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    e = np.eye(4)
    emb = np.stack([e[0], e[0] + 0.01 * e[3], e[1], e[1] * 2, e[2], e[3]])
    # B = 2, alpha = 2: D_C = images 0-3; sets: 0, 1 -> {0, 1}; 2, 3 -> {2, 3}; picks 0 then 2
    assert taudis_img_select(unc, emb, 2, alpha=2, sigma=0.8).tolist() == [0, 2]
    # B = 3, alpha = 2: D_C = all 6; picks 0, 2, then image 4 ({4}, tie with 5 -> lower index)
    assert taudis_img_select(unc, emb, 3, alpha=2, sigma=0.8).tolist() == [0, 2, 4]
    # B = 2, alpha = 1: D_C = images 0, 1 (same concept): 0 then fill 1
    assert taudis_img_select(unc, emb, 2, alpha=1, sigma=0.8).tolist() == [0, 1]


def test_paper_constants():
    assert (tc.ALPHA_COCO, tc.BETA_COCO, tc.ALPHA_OVERHEAD, tc.BETA_OVERHEAD) == (150, 40, 50, 30)
    assert tc.DEFAULT_SIGMA == 0.8 and tc.DEFAULT_ALPHA > tc.DEFAULT_BETA > 1


# -------------------------------------------------------------------------------------------------
# baselines: core-set, round robin


def test_kcenter_on_a_line():
    x = np.arange(11, dtype=np.float64)[:, None]  # points 0, 1, ..., 10
    # nothing labeled: start at the point nearest the mean (5); farthest then 0 and 10 (tie -> 0), then
    # 10; then points at distance 2 from {0, 5, 10}: 2, 3, 7, 8 -> 2; then 7 (distance 2); then 3 ...
    assert kcenter_greedy(x, None, 5).tolist() == [5, 0, 10, 2, 7]
    # labeled {0}: 10, then 5, then 2 (tie 2, 3, 7, 8), then 7
    labeled = np.zeros(11, bool)
    labeled[0] = True
    assert kcenter_greedy(x, labeled, 4).tolist() == [10, 5, 2, 7]
    assert kcenter_greedy(x, labeled, 4, block=1).tolist() == [10, 5, 2, 7]
    # labeled {0, 10}: 5, then 2, 7 (distance 2 ties: 2, 3, 7, 8)
    labeled[10] = True
    assert kcenter_greedy(x, labeled, 3).tolist() == [5, 2, 7]
    # budget larger than the unlabeled set: every unlabeled point exactly once
    got = kcenter_greedy(x, labeled, 50)
    assert sorted(got.tolist()) == list(range(1, 10))
    assert kcenter_greedy(x, np.ones(11, bool), 3).tolist() == []


def test_kcenter_matches_brute_force():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((120, 5)) + 10.0  # offset: centring keeps the precision
    labeled = rng.random(120) < 0.2
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    centres = list(np.flatnonzero(labeled))
    expected = []
    for _ in range(15):
        m = d2[:, centres].min(axis=1)
        m[centres] = -1
        i = int(np.argmax(m))
        expected.append(i)
        centres.append(i)
    for block in (None, 1, 7):
        assert kcenter_greedy(x, labeled, 15, block=block).tolist() == expected


def test_round_robin_by_hand():
    nan = np.nan
    # columns: background (never present), class 1, class 2
    scores = np.array([
        [nan, 0.9, nan],   # image 0
        [nan, 0.5, 0.8],   # image 1
        [nan, nan, 0.3],   # image 2
        [nan, 0.7, 0.6],   # image 3
        [nan, 0.2, nan],   # image 4
    ])
    # class 1 order: 0 (0.9), 3 (0.7), 1 (0.5), 4 (0.2); class 2 order: 1 (0.8), 3 (0.6), 2 (0.3)
    # c1 -> 0, c2 -> 1, c1 -> 3, c2 -> (3 taken) 2, c1 -> (1 taken) 4; class 2 exhausted
    assert round_robin_by_class(scores, 10).tolist() == [0, 1, 3, 2, 4]
    assert round_robin_by_class(scores, 3).tolist() == [0, 1, 3]
    assert round_robin_by_class(scores, 0).tolist() == []
    # images with no instance of any class are never chosen
    assert round_robin_by_class(np.full((3, 2), nan), 2).tolist() == []
