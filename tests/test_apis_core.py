import math

import numpy as np
import pytest
import torch

from alseg.strategies.apis_core import (
    PointChoice,
    binary_entropy,
    bring_many_to_box,
    bring_to_box,
    entropy_map,
    sample_points_in_boxes,
    select_point,
    select_point_error,
    variance_map,
)

BOX = (10.0, 20.0, 40.0, 50.0)  # 30 x 30; a 3 x 3 map has 10-pixel cells centred at +5, +15, +25


def _center(r, c, box=BOX, h=3, w=3):
    x1, y1, x2, y2 = box
    return x1 + (c + 0.5) * (x2 - x1) / w, y1 + (r + 0.5) * (y2 - y1) / h


def test_entropy_and_variance_maps_by_hand():
    p = np.array([[[0.9, 0.1], [0.5, 1.0]], [[0.7, 0.3], [0.5, 0.0]]])
    mean = np.array([[0.8, 0.2], [0.5, 0.5]])
    h = -mean * np.log(mean) - (1 - mean) * np.log(1 - mean)
    np.testing.assert_allclose(entropy_map(p), h)
    np.testing.assert_allclose(variance_map(p), [[0.01, 0.01], [0.0, 0.25]])
    assert binary_entropy(np.array([0.0, 1.0, 0.5])).tolist() == [0.0, 0.0, pytest.approx(math.log(2))]
    np.testing.assert_allclose(entropy_map(torch.tensor(p)), h)  # torch input


def test_entropy_picks_the_half_probability_cell():
    m = np.full((1, 3, 3), 0.95)
    m[0, 2, 1] = 0.5
    m[0, 0, 0] = 0.2
    ch = select_point(m, "entropy", np.random.default_rng(0), BOX)
    assert isinstance(ch, PointChoice) and ch.metric == "entropy"
    assert (ch.x, ch.y) == pytest.approx(_center(2, 1))
    assert ch.score == pytest.approx(math.log(2))


def test_variance_picks_the_disagreement():
    a = np.full((3, 3), 0.9)
    b = a.copy()
    b[1, 2] = 0.1  # the two models disagree here only: mean 0.5, variance 0.16
    a[0, 1] = b[0, 1] = 0.5  # highest entropy cell, but both agree
    probs = np.stack([a, b])
    v = select_point(probs, "variance", np.random.default_rng(0), BOX)
    assert (v.x, v.y) == pytest.approx(_center(1, 2)) and v.score == pytest.approx(0.16)
    assert v.metric == "variance"
    # Entropy on the same set: the two 0.5-mean cells tie.
    picks = {tuple(round(v, 9) for v in select_point(probs, "entropy", np.random.default_rng(s), BOX)[:2])
             for s in range(20)}
    assert picks == {_center(0, 1), _center(1, 2)}


def test_lowest_entropy_picks_the_most_certain_cell():
    m = np.array([[[0.5, 0.6, 0.4], [0.3, 0.01, 0.7], [0.5, 0.5, 0.8]]])
    ch = select_point(m, "lowest_entropy", np.random.default_rng(0), BOX)
    assert (ch.x, ch.y) == pytest.approx(_center(1, 1))
    assert ch.score == pytest.approx(float(binary_entropy(np.array(0.01))))


def test_k0_random_and_k1_entropy_only():
    empty = np.zeros((0, 3, 3))
    for metric in ("entropy", "variance", "lowest_entropy", "random"):
        ch = select_point(empty, metric, np.random.default_rng(3), BOX)
        assert ch.metric == "random" and math.isnan(ch.score)
        assert BOX[0] <= ch.x < BOX[2] and BOX[1] <= ch.y < BOX[3]
    one = np.full((1, 3, 3), 0.99)
    one[0, 0, 2] = 0.45
    ch = select_point(one, "variance", np.random.default_rng(0), BOX)
    assert ch.metric == "entropy" and (ch.x, ch.y) == pytest.approx(_center(0, 2))
    # "random" ignores the maps, even with predictions.
    r = select_point(one, "random", np.random.default_rng(0), BOX)
    assert r.metric == "random" and BOX[0] <= r.x < BOX[2]
    with pytest.raises(ValueError):
        select_point(one, "margin", np.random.default_rng(0), BOX)


def test_ties_broken_by_seed():
    flat = np.full((2, 8, 8), 0.5)  # every cell ties
    a = [select_point(flat, "entropy", np.random.default_rng(s), BOX)[:2] for s in range(10)]
    b = [select_point(flat, "entropy", np.random.default_rng(s), BOX)[:2] for s in range(10)]
    assert a == b  # reproducible
    assert len(set(a)) > 3  # varies across seeds
    # All picks are cell centres.
    xs = {10 + (c + 0.5) * 30 / 8 for c in range(8)}
    assert all(min(abs(x - c) for c in xs) < 1e-9 for x, _ in a)
    # An integer seed works as the rng too.
    assert select_point(flat, "entropy", 4, BOX)[:2] == a[4]


def test_error_probes_with_known_gt():
    gt = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    probs = np.array([[[0.9, 0.8, 0.1], [0.6, 0.3, 0.05], [0.0, 0.7, 0.2]],
                      [[0.9, 0.8, 0.1], [0.4, 0.3, 0.05], [0.0, 0.9, 0.2]]])
    # |mean - gt|: [[.1, .2, .1], [.5, .3, .05], [0, .8, .2]]
    mx = select_point_error(probs, gt, "max", np.random.default_rng(0), BOX)
    assert (mx.x, mx.y) == pytest.approx(_center(2, 1)) and mx.score == pytest.approx(0.8)
    lo = select_point_error(probs, gt, "least", np.random.default_rng(0), BOX)
    assert (lo.x, lo.y) == pytest.approx(_center(2, 0)) and lo.score == pytest.approx(0.0)
    k0 = select_point_error(np.zeros((0, 3, 3)), gt, "max", np.random.default_rng(0), BOX)
    assert k0.metric == "random"
    with pytest.raises(ValueError):
        select_point_error(probs, gt[:2], "max", np.random.default_rng(0), BOX)


def test_bring_to_box_identity_and_geometry():
    rng = np.random.default_rng(0)
    m = rng.random((28, 28))
    gt = (5.0, 7.0, 61.0, 35.0)
    # The proposal equal to the GT box, at RoI resolution: the map itself.
    np.testing.assert_allclose(bring_to_box(m, gt, gt, (28, 28)), m, atol=1e-12)
    # At another resolution: close to a bilinear resize of it.
    up = bring_to_box(m, gt, gt, (56, 56))
    ref = torch.nn.functional.interpolate(torch.tensor(m)[None, None], size=(56, 56), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(up, ref, atol=1e-12)
    # A proposal covering the right half of the GT box: the left half is 0 (outside the proposal).
    half = bring_to_box(np.ones((28, 28)), (33.0, 7.0, 61.0, 35.0), gt, (4, 8))
    assert (half[:, :4] == 0).all() and (half[:, 4:] == 1).all()
    # A proposal shifted by one of its cells: the map shifted by one column.
    x1, y1, x2, y2 = gt
    shifted = bring_to_box(m, (x1 + 2, y1, x2 + 2, y2), gt, (28, 28))
    np.testing.assert_allclose(shifted[:, 1:], m[:, :-1], atol=1e-12)
    assert (shifted[:, 0] == 0).all()
    # Batched, torch input.
    many = bring_many_to_box(torch.tensor(np.stack([m, m])), torch.tensor([gt, gt]), gt, (28, 28))
    assert many.shape == (2, 28, 28)
    np.testing.assert_allclose(many[1], m, atol=1e-12)
    assert bring_many_to_box(np.zeros((0, 28, 28)), np.zeros((0, 4)), gt, (3, 5)).shape == (0, 3, 5)


def test_selected_and_sampled_points_lie_in_their_boxes():
    rng = np.random.default_rng(7)
    boxes = np.array([[0, 0, 10, 10], [3.5, 2.0, 4.5, 60.0], [20, 30, 21, 31], [5, 5, 5, 9]], float)
    for _ in range(50):
        pts = sample_points_in_boxes(boxes, rng)
        assert pts.shape == (4, 2)
        assert (pts[:, 0] >= boxes[:, 0]).all() and (pts[:, 1] >= boxes[:, 1]).all()
        ok = boxes[:, 2] > boxes[:, 0]
        assert (pts[ok, 0] < boxes[ok, 2]).all() and (pts[:, 1] < boxes[:, 3]).all()
    assert sample_points_in_boxes(np.zeros((0, 4)), rng).shape == (0, 2)
    for s in range(30):
        x1, y1 = rng.random(2) * 50
        box = (x1, y1, x1 + 1 + rng.random() * 30, y1 + 1 + rng.random() * 30)
        probs = rng.random((int(rng.integers(0, 4)), 5, 6))
        for metric in ("entropy", "variance", "lowest_entropy", "random"):
            ch = select_point(probs, metric, np.random.default_rng(s), box)
            assert box[0] <= ch.x < box[2] and box[1] <= ch.y < box[3]
