"""TFDP shape complexity pruning: scores on hand-checkable shapes, selection, pruning, cache, CLI.

Conventions used for the expected values: pycocotools fills the pixels whose centres lie inside a
polygon, so an axis-aligned polygon square [x0, x1] x [y0, y1] with integer corners covers the pixels
x0 .. x1 - 1; cv2's contour goes through the centres of the border pixels, so its side is
``s = (x1 - x0) - 1`` pixels: P = 4 s, A = s^2 exactly (no approximation for axis-aligned borders).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from alseg.data.coco import decode_segmentation
from alseg.errors import ConfigError, DataError
from alseg.tfdp import (
    cache_path,
    instance_shape_stats,
    kept_count,
    prune_coco,
    rank_images,
    score_dataset,
    score_file,
    select_top,
)
from alseg.tfdp.cli import main as cli_main
from alseg.tfdp.scoring import OK

TINY = Path(os.environ.get("ALSEG_TINY_COCO", Path(__file__).resolve().parents[2] / "shared/data/tiny_coco"))
TINY_TRAIN = TINY / "annotations" / "instances_train2017.json"
SQUARE_SI = 4 / (2 * math.sqrt(math.pi))  # 1.128...


# -------------------------------------------------------------------------------------------------
# helpers


def rect(x0, y0, x1, y1):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def disc(cx, cy, r, n=720):
    pts = []
    for i in range(n):
        a = 2 * math.pi * i / n
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


def ann(aid, image_id, cat, seg, iscrowd=0):
    if isinstance(seg, list) and seg and isinstance(seg[0], (int, float)):
        seg = [seg]
    return {"id": aid, "image_id": image_id, "category_id": cat, "segmentation": seg, "iscrowd": iscrowd,
            "area": 1.0, "bbox": [0, 0, 1, 1]}


def coco(anns, images=None, cats=(1, 2, 3), size=(200, 300)):
    h, w = size
    images = images if images is not None else [{"id": 1, "file_name": "1.jpg", "height": h, "width": w}]
    return {
        "info": {"description": "test"},
        "licenses": [{"id": 1, "name": "x"}],
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": f"c{c}"} for c in cats],
    }


def img(i, h=200, w=300):
    return {"id": i, "file_name": f"{i}.jpg", "height": h, "width": w}


def one(seg, variant="si_scs", contour="largest", size=(200, 300)):
    res = score_dataset(coco([ann(1, 1, 1, seg)], size=size), variant=variant, contour=contour, workers=1)
    assert res.stats.status[0] == OK, res.problems
    return res


# -------------------------------------------------------------------------------------------------
# shapes with known perimeter and area


@pytest.mark.parametrize("n", [5, 12, 40, 101])
def test_square_scs_and_si_scs(n):
    res = one(rect(20, 30, 20 + n, 30 + n), variant="scs")
    s = n - 1  # the side measured on the contour (through border pixel centres)
    assert res.stats.perimeter[0] == pytest.approx(4 * s)
    assert res.stats.area[0] == pytest.approx(s * s)
    assert res.instance_scores[0] == pytest.approx(4 / s)
    si = one(rect(20, 30, 20 + n, 30 + n), variant="si_scs").instance_scores[0]
    assert si == pytest.approx(SQUARE_SI, rel=1e-12)


@pytest.mark.parametrize("a,b", [(11, 11), (21, 11), (41, 11), (81, 6), (6, 121)])
def test_rectangles_si_scs(a, b):
    # a x b pixels -> contour sides (a - 1) x (b - 1)
    res = one(rect(10, 10, 10 + a, 10 + b))
    sa, sb = a - 1, b - 1
    expected = 2 * (sa + sb) / (2 * math.sqrt(math.pi * sa * sb))
    assert res.instance_scores[0] == pytest.approx(expected, rel=1e-12)
    assert res.instance_scores[0] >= SQUARE_SI - 1e-12  # elongation only adds complexity


@pytest.mark.parametrize("r", [20, 40, 80])
def test_disc_si_scs_close_to_one(r):
    """A disc is the least complex shape: SI-SCS = 1 in the continuum. The 8-connected chain that
    cv2 traces over-estimates the length of a border of direction theta by cos(t) + (sqrt2 - 1) sin(t),
    8 (sqrt 2 - 1) / pi = 1.0548 on average over directions, hence the expected 1.055 +- 0.02 (the
    rest is pixel noise, larger for small radii)."""
    si = one(disc(150, 100, r)).instance_scores[0]
    assert 1.0 <= si < 1.08
    assert si == pytest.approx(8 * (math.sqrt(2) - 1) / math.pi, abs=0.02)
    assert si < SQUARE_SI


def test_scale_invariance():
    star = []
    for i in range(16):
        a, rr = 2 * math.pi * i / 16, (1.0 if i % 2 else 0.45)
        star += [math.cos(a) * rr, math.sin(a) * rr]

    def scaled(k):
        return [50 + k * v for v in star]  # centre (50, 50), radius k

    small = one(scaled(20), "si_scs", size=(200, 200)).instance_scores[0]
    big = one(scaled(40), "si_scs", size=(200, 200)).instance_scores[0]
    assert big == pytest.approx(small, rel=0.03)
    assert small > 1.3  # a star is far from a disc
    scs_small = one(scaled(20), "scs", size=(200, 200)).instance_scores[0]
    scs_big = one(scaled(40), "scs", size=(200, 200)).instance_scores[0]
    assert scs_big / scs_small == pytest.approx(0.5, rel=0.05)  # P/A halves when size doubles
    # squares exactly: SCS 4/s
    s1 = one(rect(0, 0, 21, 21), "scs").instance_scores[0]
    s2 = one(rect(0, 0, 41, 41), "scs").instance_scores[0]
    assert (s1, s2) == (pytest.approx(4 / 20), pytest.approx(4 / 40))


def test_crop_rasterisation_matches_full_image_reference():
    """Rasterising in the instance's box gives exactly the P and A of the full-size reference
    (pycocotools at the image size + findContours over the whole image), on awkward coordinates."""
    rng = np.random.default_rng(0)
    anns, ref = [], []
    h, w = 120, 160
    for i in range(60):
        cx, cy, r = rng.uniform(-10, w + 10), rng.uniform(-10, h + 10), rng.uniform(2, 40)
        n = int(rng.integers(5, 40))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.3, 1.0, n)
        pts = np.round(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1), 1).ravel().tolist()
        segs = [pts] if i % 3 else [pts, rect(5.3, 7.1, 12.7, 19.9)]
        anns.append(ann(i + 1, 1, 1, segs))
        m = decode_segmentation(segs, h, w)
        cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        ref.append(max((cv2.contourArea(c), cv2.arcLength(c, True)) for c in cs) if cs else None)
    st = score_dataset(coco(anns, size=(h, w)), "scs", workers=1).stats
    for i, r in enumerate(ref):
        if r is None:
            assert np.isnan(st.area[i])
        else:
            assert (st.area[i], st.perimeter[i]) == r


@pytest.mark.skipif(not TINY_TRAIN.is_file(), reason="tiny_coco not available")
def test_real_coco_polygons_match_full_image_reference():
    data = json.loads(TINY_TRAIN.read_text())
    sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
    st = score_dataset(data, "scs", workers=1).stats
    for k, a in enumerate(data["annotations"]):
        if a["iscrowd"]:
            continue
        m = decode_segmentation(a["segmentation"], *sizes[a["image_id"]])
        cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        area, per = max((cv2.contourArea(c), cv2.arcLength(c, True)) for c in cs)
        assert (st.perimeter[k], st.area[k]) == (per, area)


def test_contour_largest_vs_all_and_holes_ignored():
    two = [rect(10, 10, 31, 31), rect(100, 100, 111, 111)]  # contour sides 20 and 10
    largest = one(two, "scs", "largest").stats
    assert (largest.perimeter[0], largest.area[0]) == (80, 400)
    both = one(two, "scs", "all").stats
    assert (both.perimeter[0], both.area[0]) == (80 + 40, 400 + 100)
    # An RLE ring: the hole neither adds perimeter nor removes area (RETR_EXTERNAL).
    m = np.zeros((200, 300), np.uint8)
    m[10:31, 10:31] = 1
    m[15:26, 15:26] = 0
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    ring = score_dataset(coco([ann(1, 1, 1, rle)]), "scs", workers=1).stats
    assert (ring.perimeter[0], ring.area[0]) == (80, 400)


def test_rle_and_uncompressed_rle_match_polygon():
    m = np.zeros((200, 300), np.uint8)
    m[40:61, 100:131] = 1  # 31 x 21 pixels
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    runs, prev, n = [], 0, 0
    for v in m.ravel(order="F"):
        if v != prev:
            runs.append(n)
            prev, n = v, 0
        n += 1
    runs.append(n)
    unc = {"counts": runs, "size": [200, 300]}
    res = score_dataset(coco([ann(1, 1, 1, rle), ann(2, 1, 1, unc), ann(3, 1, 1, rect(100, 40, 131, 61))]),
                        "si_scs", workers=1)
    assert list(res.stats.status) == [OK, OK, OK]
    assert res.stats.perimeter.tolist() == [2 * (30 + 20)] * 3
    assert res.stats.area.tolist() == [30 * 20] * 3


# -------------------------------------------------------------------------------------------------
# class balance, image scores, selection


def test_class_balanced_scores_by_hand():
    # class 1: squares with contour sides 10 and 20 (SCS 0.4 and 0.2); class 2: one side-5 square.
    anns = [
        ann(1, 1, 1, rect(0, 0, 11, 11)),
        ann(2, 2, 1, rect(0, 0, 21, 21)),
        ann(3, 2, 2, rect(50, 50, 56, 56)),
    ]
    data = coco(anns, images=[img(1), img(2), img(3)])
    scs = score_dataset(data, "scs", workers=1)
    np.testing.assert_allclose(scs.instance_scores, [0.4, 0.2, 0.8])
    cb = score_dataset(data, "cb_scs", workers=1)
    np.testing.assert_allclose(cb.instance_scores, [0.4 / 0.6, 0.2 / 0.6, 1.0])
    # Image score = sum of its instances; image 3 has none -> 0.
    assert cb.image_score_map() == pytest.approx({1: 2 / 3, 2: 1 / 3 + 1.0, 3: 0.0})
    # si: every square scores SQUARE_SI, so class-balanced = 1/2, 1/2, 1.
    si_cb = score_dataset(data, "si_cb_scs", workers=1)
    np.testing.assert_allclose(si_cb.instance_scores, [0.5, 0.5, 1.0])
    assert si_cb.image_score_map() == pytest.approx({1: 0.5, 2: 1.5, 3: 0.0})
    si = score_dataset(data, "si_scs", workers=1)
    np.testing.assert_allclose(si.instance_scores, [SQUARE_SI] * 3)
    # The rare class (2) is worth as much as the whole frequent class (1).
    s = si_cb.instance_scores
    assert s[2] == pytest.approx(s[0] + s[1])


def test_image_without_annotation_scores_zero_and_is_pruned_first():
    anns = [ann(1, 10, 1, rect(0, 0, 11, 11)), ann(2, 20, 2, rect(0, 0, 31, 31))]
    data = coco(anns, images=[img(5), img(10), img(20)])
    res = score_dataset(data, workers=1)
    assert res.image_ids.tolist() == [5, 10, 20]  # every image, file order
    assert res.image_score_map()[5] == 0.0
    assert rank_images(res)[-1] == 5
    assert select_top(res, count=2) == [10, 20]  # both score 1 (alone in their class): id order
    assert 5 not in select_top(res, keep=2 / 3)


def test_select_top_ties_and_counts():
    scores = {7: 0.5, 3: 0.5, 9: 0.9, 1: 0.0, 4: 0.5}
    assert rank_images(scores) == [9, 3, 4, 7, 1]
    assert select_top(scores, count=2) == [9, 3]
    assert select_top(scores, count=5) == [9, 3, 4, 7, 1]
    assert select_top(scores, keep=1.0) == [9, 3, 4, 7, 1]
    assert select_top(scores, keep=0.5) == [9, 3, 4]  # round(2.5) half up = 3
    assert select_top(scores, keep=0.3) == [9, 3]  # round(1.5) = 2
    assert select_top(scores, keep=0.01) == [9]  # at least one
    assert select_top(list(scores.items()), count=1) == [9]
    assert kept_count(118_287, keep=0.5) == 59_144


@pytest.mark.parametrize("kw", [dict(keep=0.0), dict(keep=1.5), dict(keep=-0.2), dict(keep=float("nan")),
                                dict(count=0), dict(count=6), dict(), dict(keep=0.5, count=2), dict(count=2.5)])
def test_selection_validation(kw):
    with pytest.raises(ConfigError) as e:
        select_top({1: 1.0, 2: 2.0, 3: 0.0, 4: 1.0, 5: 3.0}, **kw)
    assert "\n" not in str(e.value)


def test_option_validation():
    data = coco([ann(1, 1, 1, rect(0, 0, 11, 11))])
    with pytest.raises(ConfigError):
        score_dataset(data, variant="nope")
    with pytest.raises(ConfigError):
        score_dataset(data, contour="biggest")
    with pytest.raises(ConfigError):
        score_dataset(data, workers=0)
    with pytest.raises(DataError):
        score_dataset({"images": [], "annotations": {}})


# -------------------------------------------------------------------------------------------------
# pruning


def test_prune_coco_loads_with_pycocotools():
    crowd_rle = mask_utils.encode(np.asfortranarray(np.ones((200, 300), np.uint8)))
    crowd_rle["counts"] = crowd_rle["counts"].decode()
    anns = [
        ann(1, 1, 1, rect(0, 0, 11, 11)),
        ann(2, 1, 2, rect(20, 20, 41, 41)),
        ann(3, 2, 1, rect(0, 0, 51, 51)),
        ann(4, 3, 3, disc(100, 100, 30)),
        ann(5, 3, 1, crowd_rle, iscrowd=1),
    ]
    data = coco(anns, images=[img(1), img(2), img(3), img(4)])
    res = score_dataset(data, workers=1)
    kept = select_top(res, count=2)
    assert set(kept) == {1, 3}  # 1 holds class 2's only instance; 3 class 3's; 2 and 4 less
    out = prune_coco(data, kept)
    assert [i["id"] for i in out["images"]] == [1, 3]
    assert sorted(a["id"] for a in out["annotations"]) == [1, 2, 4, 5]  # crowd region kept
    assert out["categories"] == data["categories"]
    assert out["info"] == data["info"] and out["licenses"] == data["licenses"]
    gt = COCO()
    gt.dataset = json.loads(json.dumps(out))
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    assert sorted(gt.getImgIds()) == [1, 3]
    assert sorted(gt.getAnnIds()) == [1, 2, 4, 5]
    assert len(gt.getCatIds()) == 3
    assert data["images"][1]["id"] == 2  # the input is not modified


# -------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_counted_by_reason_never_crashes():
    good = rect(10, 10, 31, 31)
    small_rle = mask_utils.encode(np.asfortranarray(np.ones((20, 20), np.uint8)))
    small_rle["counts"] = small_rle["counts"].decode()
    anns = [
        ann(1, 1, 1, good),
        ann(2, 1, 1, [[1, 1, 5, 5]]),  # 2 points
        ann(3, 1, 1, rect(10, 10, 30, 10.6)),  # one pixel row: contour area 0
        ann(4, 1, 1, small_rle),  # RLE made for a 20 x 20 image
        ann(5, 1, 99, good),  # unknown category
        ann(6, 42, 1, good),  # unknown image
        ann(7, 1, 1, [[10, 10, "a", 20, 20, 20]]),  # not a number
        ann(8, 1, 1, {"counts": "corrupt!!", "size": [200, 300]}),  # runs do not add up
        ann(9, 1, 1, rect(500, 500, 520, 520)),  # outside the image: no pixel
        ann(10, 1, 1, [rect(50, 50, 71, 71), [1, 2, 3, 4]]),  # one degenerate part: still scored
        ann(11, 1, 1, []),  # no polygon at all
        ann(12, 1, 1, None),  # unsupported type
        {"id": 13, "image_id": 1},  # no category
        "not an annotation",
        ann(15, 1, 1, [[1, 2, 3, 4, 5]]),  # odd number of coordinates
        ann(16, 1, 1, [[float("nan"), 1, 5, 1, 5, 5]]),
        ann(17, 1, 1, {"counts": [1, 2, 3], "size": [200, 300]}),  # uncompressed, wrong total
        ann(18, 2, 1, good),  # image 2 has no size
    ]
    images = [img(1), {"id": 2, "file_name": "2.jpg"}, {"file_name": "noid.jpg"}, img(1)]
    res = score_dataset(coco(anns, images=images), "si_cb_scs", workers=1)
    assert res.problems == {
        "degenerate_part": 1,
        "degenerate_polygon": 2,
        "duplicate_image_id": 1,
        "empty_mask": 1,
        "invalid_annotation": 2,
        "invalid_image": 1,
        "invalid_image_size": 1,
        "invalid_rle": 2,
        "invalid_segmentation": 4,
        "rle_size_mismatch": 1,
        "unknown_category": 1,
        "unknown_image": 1,
        "zero_area": 1,
    }
    assert res.n_scored == 2  # 1 and 10
    scored = np.flatnonzero(~np.isnan(res.instance_scores))
    assert res.stats.ann_id[scored].tolist() == [1, 10]
    np.testing.assert_allclose(res.instance_scores[scored], [0.5, 0.5])  # two squares, one class
    assert res.image_score_map() == pytest.approx({1: 1.0, 2: 0.0})
    # the same through the pool (copies under new annotation ids: a repeated id is a problem too)
    copies = [dict(a, id=a["id"] + 100 * r) if isinstance(a, dict) else a for r in range(40) for a in anns]
    res2 = score_dataset(coco(copies, images=images), "si_cb_scs", workers=2)
    per_image = ("invalid_image", "duplicate_image_id")  # image-level reasons do not repeat
    assert res2.problems == {k: (v if k in per_image else 40 * v) for k, v in res.problems.items()}
    res3 = score_dataset(coco(anns + [ann(1, 1, 1, good)], images=images), "si_cb_scs", workers=1)
    assert res3.problems == {**res.problems, "duplicate_annotation_id": 1}


def test_workers_give_identical_results():
    rng = np.random.default_rng(1)
    anns = []
    for i in range(700):
        cx, cy, r = rng.uniform(0, 300), rng.uniform(0, 200), rng.uniform(2, 30)
        anns.append(ann(i + 1, 1 + i % 7, 1 + i % 3, disc(cx, cy, r, n=int(rng.integers(6, 30)))))
    data = coco(anns, images=[img(i) for i in range(1, 9)])
    a = score_dataset(data, workers=1)
    b = score_dataset(data, workers=2)
    for x, y in zip(a.stats, b.stats):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    st = instance_shape_stats(data["annotations"], {i["id"]: i for i in data["images"]}, workers=2, chunk_size=100)
    np.testing.assert_array_equal(st.perimeter, a.stats.perimeter)


# -------------------------------------------------------------------------------------------------
# cache


def test_cache_keyed_by_content_variant_and_contour(tmp_path):
    path = tmp_path / "ann.json"
    data = coco([ann(1, 1, 1, rect(0, 0, 11, 11)), ann(2, 1, 2, rect(0, 0, 21, 41))], images=[img(1), img(2)])
    path.write_text(json.dumps(data))
    cdir = tmp_path / "cache"
    _, r1 = score_file(path, "si_cb_scs", cache_dir=cdir, workers=1)
    assert not r1.from_cache
    _, r2 = score_file(path, "si_cb_scs", cache_dir=cdir, workers=1)
    assert r2.from_cache
    np.testing.assert_array_equal(r1.image_scores, r2.image_scores)
    np.testing.assert_array_equal(r1.stats.perimeter, r2.stats.perimeter)
    _, r3 = score_file(path, "scs", cache_dir=cdir, workers=1)
    assert not r3.from_cache and r3.variant == "scs"
    assert len(list(cdir.iterdir())) == 2  # one file per variant
    _, r4 = score_file(path, "scs", contour="all", cache_dir=cdir, workers=1)
    assert not r4.from_cache and len(list(cdir.iterdir())) == 3
    # Editing the file (same size, other content) invalidates its cache entries.
    data["annotations"][0]["segmentation"] = [rect(0, 0, 31, 31)]
    path.write_text(json.dumps(data))
    _, r5 = score_file(path, "si_cb_scs", cache_dir=cdir, workers=1)
    assert not r5.from_cache
    assert r5.stats.area[0] == 900 and r1.stats.area[0] == 100
    assert len(list(cdir.iterdir())) == 4
    # --no-cache neither reads nor writes
    _, r6 = score_file(path, "si_cb_scs", cache_dir=cdir, use_cache=False, workers=1)
    assert not r6.from_cache and len(list(cdir.iterdir())) == 4
    # A corrupt cache file is recomputed, not fatal.
    from alseg.tfdp.scoring import file_sha1

    cfile = cache_path(cdir, file_sha1(path), "si_cb_scs", "largest")
    cfile.write_bytes(b"garbage")
    _, r7 = score_file(path, "si_cb_scs", cache_dir=cdir, workers=1)
    assert not r7.from_cache
    np.testing.assert_array_equal(r7.image_scores, r5.image_scores)


# -------------------------------------------------------------------------------------------------
# CLI


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_end_to_end_tiny_coco(tmp_path, capsys):
    if not TINY_TRAIN.is_file():
        pytest.skip(f"tiny_coco not found at {TINY}")
    out, scores, inst = tmp_path / "kept.json", tmp_path / "scores.csv", tmp_path / "inst.csv"
    rc = cli_main(["--ann", str(TINY_TRAIN), "--variant", "si_cb_scs", "--keep", "0.5", "--out", str(out),
                   "--scores", str(scores), "--instance-scores", str(inst), "--cache-dir", str(tmp_path / "c"),
                   "--workers", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "kept 16 of 32 images" in printed and "images per class" in printed and "problems:" in printed
    src = json.loads(TINY_TRAIN.read_text())
    kept = json.loads(out.read_text())
    assert len(kept["images"]) == 16
    kept_ids = {i["id"] for i in kept["images"]}
    assert {a["id"] for a in kept["annotations"]} == {a["id"] for a in src["annotations"] if a["image_id"] in kept_ids}
    assert kept["categories"] == src["categories"] and kept["licenses"] == src["licenses"]
    gt = COCO()
    gt.dataset = kept
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    assert len(gt.getImgIds()) == 16

    rows = _read_csv(scores)
    assert list(rows[0]) == ["image_id", "score", "kept", "rank"]
    assert len(rows) == 32
    assert sum(int(r["kept"]) for r in rows) == 16
    assert {int(r["image_id"]) for r in rows if r["kept"] == "1"} == kept_ids
    assert [int(r["rank"]) for r in rows] == list(range(1, 33))
    s = [float(r["score"]) for r in rows]
    assert s == sorted(s, reverse=True)
    irows = _read_csv(inst)
    assert list(irows[0])[:6] == ["ann_id", "image_id", "category_id", "perimeter", "area", "score"]
    assert len(irows) == sum(1 for a in src["annotations"] if not a["iscrowd"])

    # --count, another variant, from the same cache dir; then the cached run gives the same file.
    rc = cli_main(["--ann", str(TINY_TRAIN), "--variant", "scs", "--count", "5", "--out", str(out),
                   "--scores", str(scores), "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert rc == 0 and len(json.loads(out.read_text())["images"]) == 5
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    base = ["--out", str(tmp_path / "o.json"), "--scores", str(tmp_path / "s.csv"), "--no-cache", "--no-progress"]
    ann_file = tmp_path / "a.json"
    ann_file.write_text(json.dumps(coco([ann(1, 1, 1, rect(0, 0, 11, 11))], images=[img(1), img(2)])))
    cases = [
        ["--ann", str(ann_file), "--keep", "1.5"],
        ["--ann", str(ann_file), "--count", "3"],  # only 2 images
        ["--ann", str(tmp_path / "missing.json"), "--keep", "0.5"],
        ["--ann", str(ann_file), "--keep", "0.5", "--workers", "0"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            cli_main(argv + base)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("alseg-prune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as e:
        cli_main(["--ann", str(bad), "--keep", "0.5"] + base)
    assert e.value.code == 2 and "not valid JSON" in capsys.readouterr().err
    for argv in (["--keep", "0.5", "--count", "2"], []):  # mutually exclusive, one required
        with pytest.raises(SystemExit) as e:
            cli_main(["--ann", str(ann_file)] + argv + base)
        assert e.value.code == 2
    assert not (tmp_path / "o.json").exists()
    with pytest.raises(SystemExit):  # never overwrite the input
        cli_main(["--ann", str(ann_file), "--keep", "0.5", "--out", str(ann_file), "--scores", str(tmp_path / "s.csv")])
    assert "refusing" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as e:  # an output under a file: one line before any scoring
        cli_main(["--ann", str(ann_file), "--keep", "0.5", "--out", str(a_file / "o.json"), "--scores",
                  str(tmp_path / "s.csv"), "--no-cache", "--no-progress"])
    out = capsys.readouterr()
    assert e.value.code == 2 and f"{a_file}: cannot write" in out.err and out.err.count("\n") == 1
    assert "scored" not in out.out
    assert cli_main(["--ann", str(ann_file), "--keep", "0.5"] + base) == 0
    assert json.loads((tmp_path / "o.json").read_text())["images"] == [img(1)]


# --------------------------------------------------------------------------------------------------
# Input validation of alseg-prune: one line naming the file and the field, exit 2, old outputs kept


def _six_images() -> dict:
    return coco([ann(i, i, 1, rect(2, 2, 10 + i, 12)) for i in range(1, 7)], images=[img(i) for i in range(1, 7)])


def _prune_fails(tmp_path, capsys, data, extra=(), base_args=None) -> str:
    """Run alseg-prune on ``data`` (written to tmp_path/in.json) with a pre-existing --scores file;
    assert exit 2, a one-line error naming the file and no traceback, the old file unchanged."""
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    old = tmp_path / "old.csv"
    old.write_text("OLD\n")
    argv = base_args or ["--out", str(tmp_path / "o.json")]
    with pytest.raises(SystemExit) as e:
        cli_main(["--ann", str(src), "--keep", "0.5", *argv, "--scores", str(old), "--workers", "1",
                  "--no-cache", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("alseg-prune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert old.read_text() == "OLD\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]
    return err


@pytest.mark.parametrize("plot", [False, True])
@pytest.mark.parametrize("where,field,value", [
    ("images", "height", 2**70), ("images", "width", -(2**63) - 1), ("images", "id", 2**64),
    ("annotations", "image_id", 2**70), ("annotations", "id", 2**63), ("annotations", "category_id", 2**70),
    ("categories", "id", 2**70),
])
def test_cli_ids_and_sizes_beyond_int64_are_one_line_errors(tmp_path, capsys, where, field, value, plot):
    data = _six_images()
    data[where][0][field] = value
    extra = ["--plot-scores", str(tmp_path / "p.png")] if plot else []
    err = _prune_fails(tmp_path, capsys, data, extra)
    assert str(tmp_path / "in.json") in err and f"{where}[0]" in err and f"'{field}' {value}" in err
    assert "64-bit" in err


def test_huge_image_is_invalid_image_size_not_a_memory_error(tmp_path, capsys):
    data = _six_images()
    data["images"][0].update(width=10**9, height=10**9)
    data["annotations"][0]["segmentation"] = [[0, 0, 1e9, 0, 1e9, 1e9, 0, 1e9]]
    result = score_dataset(data, workers=1)
    assert result.problems == {"invalid_image_size": 1}
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))
    assert cli_main(["--ann", str(src), "--keep", "0.5", "--out", str(tmp_path / "o.json"), "--scores",
                     str(tmp_path / "s.csv"), "--workers", "1", "--no-cache", "--no-progress"]) == 0
    assert "invalid_image_size=1" in capsys.readouterr().out
    from alseg.data.validation import MAX_IMAGE_SIDE, image_size, index_images

    assert image_size({"width": MAX_IMAGE_SIDE, "height": 1}) == (1, MAX_IMAGE_SIDE)
    assert image_size({"width": MAX_IMAGE_SIDE + 1, "height": 1}) is None
    assert index_images([{"id": 1, "width": 1, "height": MAX_IMAGE_SIDE + 1}]).sizes == {1: None}


def test_huge_coordinates_no_overflow_warning():
    import warnings

    data = _six_images()
    data["annotations"][0]["segmentation"] = [[-1e308, 0, 1e308, 0, 1e308, 1e308, 0, 1e308]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = score_dataset(data, workers=1)
    assert result.problems == {"invalid_segmentation": 1}


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
@pytest.mark.parametrize("value", [None, {"a": 1}])
def test_cli_malformed_top_level_field_names_the_file(tmp_path, capsys, key, value):
    data = _six_images()
    if value is None:
        del data[key]
    else:
        data[key] = value
    err = _prune_fails(tmp_path, capsys, data)
    assert str(tmp_path / "in.json") in err and f"'{key}'" in err


def test_cli_no_images_names_the_file(tmp_path, capsys):
    data = _six_images()
    data["images"] = []
    err = _prune_fails(tmp_path, capsys, data)
    assert str(tmp_path / "in.json") in err and "no images to select from" in err


def test_cli_output_folder_fails_before_writing(tmp_path, capsys):
    (tmp_path / "outdir").mkdir()
    err = _prune_fails(tmp_path, capsys, _six_images(), base_args=["--out", str(tmp_path / "outdir")])
    assert "--out" in err and str(tmp_path / "outdir") in err and "folder" in err


def test_cli_missing_example_images_keep_earlier_outputs(tmp_path, capsys):
    out = tmp_path / "o.json"
    out.write_text("OLDJ")
    (tmp_path / "imgs").mkdir()
    err = _prune_fails(tmp_path, capsys, _six_images(),
                       extra=["--plot-examples", str(tmp_path / "pe.png"), "--images", str(tmp_path / "imgs"),
                              "--plot-scores", str(tmp_path / "ps.png")])
    assert "imgs" in err and "missing" in err
    assert out.read_text() == "OLDJ"
    assert not (tmp_path / "ps.png").exists() and not (tmp_path / "pe.png").exists()


def _raw_prune_fails(tmp_path, capsys, text: str, extra=()) -> str:
    """``_prune_fails`` of a file holding ``text`` as it is (JSON that json.dumps would not write)."""
    src = tmp_path / "in.json"
    src.write_text(text)
    old = tmp_path / "old.csv"
    old.write_text("OLD\n")
    with pytest.raises(SystemExit) as e:
        cli_main(["--ann", str(src), "--keep", "0.5", "--out", str(tmp_path / "o.json"), "--scores", str(old),
                  "--workers", "1", "--no-cache", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith("alseg-prune: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert str(src) in err and old.read_text() == "OLD\n" and not (tmp_path / "o.json").exists()
    return err


@pytest.mark.parametrize("plot", [False, True])
@pytest.mark.parametrize("where", ["top", "images", "annotations", "categories"])
@pytest.mark.parametrize("value,reason", [("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                                          ("9" * 5000, "4300 digits")])
def test_cli_json_too_deep_or_with_too_long_numbers_is_a_one_line_error(tmp_path, capsys, where, value, reason,
                                                                         plot):
    """Well-formed JSON that Python's parsers refuse (RecursionError, ValueError): one line, exit 2."""
    data = _six_images()
    if where == "top":
        data["info"] = "VALUE"
    else:  # an annotation's 'area': a field the scoring reads (an unknown one is copied as it is)
        data[where][0]["area" if where == "annotations" else "extra"] = "VALUE"
    text = json.dumps(data).replace('"VALUE"', value)
    extra = ["--plot-scores", str(tmp_path / "p.png")] if plot else []
    err = _raw_prune_fails(tmp_path, capsys, text, extra)
    assert "JSON that cannot be read" in err and reason in err and "set_int_max_str_digits" not in err


def test_cli_summary_prints_any_category_name_on_one_line(tmp_path, capsys):
    """Category names that are not printable text (a lone surrogate, which stdout cannot encode; a
    newline; a very long name; a list) are escaped and shortened in the summary, not a crash."""
    data = _six_images()
    data["annotations"][1]["category_id"] = 2
    data["annotations"][2]["category_id"] = 3
    data["annotations"][3]["category_id"] = 4
    data["categories"] = [{"id": 1, "name": "bad\ud800"}, {"id": 2, "name": "two\nlines"},
                          {"id": 3, "name": "x" * 1000}, {"id": 4, "name": ["a", "b"]}]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(data))  # ensure_ascii: the surrogate as \ud800
    assert cli_main(["--ann", str(src), "--keep", "0.5", "--out", str(tmp_path / "o.json"), "--scores",
                     str(tmp_path / "s.csv"), "--workers", "1", "--no-cache", "--no-progress"]) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # what a UTF-8 stdout does: no UnicodeEncodeError
    assert "bad\\ud800 " in out and "two\\nlines " in out and "['a', 'b']" in out
    assert max(len(line) for line in out.splitlines() if "->" in line) < 80
    assert json.loads((tmp_path / "o.json").read_text())["categories"] == data["categories"]
