"""TFDP at speed (issue 13): the batched rasteriser gives pycocotools' pixels and OpenCV's numbers
bit for bit, the scores are those of the per-instance implementation it replaced, and the fast
paths of alseg-prune (msgspec loading, annotations parsed in the workers, kept annotations copied
as written, the score cache) give the same results as the plain ones."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
from pycocotools import _mask
from pycocotools import mask as mask_utils

from alseg.data.coco import decode_segmentation
from alseg.errors import DataError
from alseg.tfdp import raster
from alseg.tfdp import scoring
from alseg.tfdp.cli import main as cli_main
from alseg.tfdp.jsonio import dump_json, read_coco, read_coco_lazy
from alseg.tfdp.scoring import prune_coco, rank_images, score_dataset, score_raw
from tfdp_cases import poly3000

TINY = Path(os.environ.get("ALSEG_TINY_COCO", Path(__file__).resolve().parents[2] / "shared/data/tiny_coco"))
TINY_TRAIN = TINY / "annotations" / "instances_train2017.json"


def _digest(res) -> str:
    """sha256 of every array of a ScoreResult that the per-instance implementation produced, its
    problems and crowd count (as recorded before the change)."""
    arrs = {**{f"stats_{k}": v for k, v in res.stats._asdict().items()},
            "instance_scores": res.instance_scores, "image_ids": res.image_ids, "image_scores": res.image_scores}
    h = hashlib.sha256()
    for k in sorted(arrs):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrs[k]).tobytes())
    h.update(json.dumps(res.problems, sort_keys=True).encode())
    h.update(str(res.n_crowd).encode())
    return h.hexdigest()


# Recorded with the per-instance implementation (pycocotools frPoly + decode, one findContours per
# instance; commit 1cce8c8), workers 1 and 2 alike.
POLY3000 = {
    ("scs", "largest"): "6227abbc8c6c4f1c36be11b61ba7b8dde2feee96e28c8ed96cef842ad0be7512",
    ("si_cb_scs", "largest"): "6b68448067a70d5d34858dc172ccd8fe386d108b25a32938e94bb65264943bc1",
    ("scs", "all"): "1b95b35baf93e6194577fa7aed16c051d5ce3dea3e4807eee5b4aebdbc672017",
    ("si_cb_scs", "all"): "aeea4f1ce4d9e774fd9464264d20c6e9bac72a32eb6603947e9d3b3a3f5884cd",
}
TINY = {
    ("scs", "largest"): "c3439ce9f1c8ff1448c920eb55cd80b89c360e9f29832bdc4c70b3383d9d8985",
    ("si_cb_scs", "largest"): "2ea2199fb588d34623f8e529c792d37fa8cc29f934720189c6f2d6d8172963da",
    ("scs", "all"): "32fcb1a5d43acb737fe82e923f678a2038adc9391f0593cc6c4b80a8a9da5ac3",
    ("si_cb_scs", "all"): "09f8c9881748fe919fc8c38bb1de1c8380627490f6c15c79b517cd6392cee8e1",
}


@pytest.fixture(scope="module")
def poly():
    return poly3000()


# -------------------------------------------------------------------------------------------------
# the scores of the implementation it replaced, bit for bit


@pytest.mark.parametrize("variant,contour", sorted(POLY3000))
def test_poly3000_scores_unchanged(poly, variant, contour):
    res = score_dataset(poly, variant, contour, workers=1)
    assert res.problems == {"degenerate_part": 57, "empty_mask": 531, "zero_area": 98}
    assert _digest(res) == POLY3000[(variant, contour)]


def test_poly3000_scores_unchanged_through_workers(poly):
    assert _digest(score_dataset(poly, "si_cb_scs", "largest", workers=2)) == POLY3000[("si_cb_scs", "largest")]


@pytest.mark.parametrize("variant,contour", sorted(TINY))
def test_tiny_coco_scores_unchanged(variant, contour):
    if not TINY_TRAIN.is_file():
        pytest.skip("tiny_coco not available")
    assert _digest(score_dataset(json.loads(TINY_TRAIN.read_text()), variant, contour, workers=1)) == TINY[(variant, contour)]


# -------------------------------------------------------------------------------------------------
# the rasteriser against pycocotools, the contour numbers against OpenCV


def _random_parts(seed: int, n: int):
    """Polygon parts of awkward kinds: real-valued, one decimal, near half grid steps, a repeated
    vertex, integer corners (exact ties in the y-major steps), thin slanted bars, tiny ones."""
    rng = np.random.default_rng(seed)
    parts, sizes = [], []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        k = int(rng.integers(3, 16))
        kind = i % 7
        if kind == 0:
            pt = rng.uniform(-15, 95, 2 * k)
        elif kind == 1:
            pt = np.round(rng.uniform(-3, 82, 2 * k), 1)
        elif kind == 2:
            pt = rng.integers(-5, 85, 2 * k) + rng.choice([0, 0.5, 0.1, 0.9, -0.1, 0.3, 0.7], 2 * k)
        elif kind == 3:
            pt = np.round(rng.uniform(-2, 30, 2 * k) * 5) / 5
            j = int(rng.integers(0, k - 1))
            pt[2 * j + 2:2 * j + 4] = pt[2 * j:2 * j + 2]
        elif kind == 4:
            pt = rng.integers(0, 40, 2 * k).astype(float)
        elif kind == 5:
            a, length, d = rng.uniform(0, np.pi), rng.uniform(5, 200), rng.uniform(0.05, 2)
            cx, cy = rng.uniform(0, 80, 2)
            ca, sa = math.cos(a), math.sin(a)
            pt = np.round([cx, cy, cx + length * ca, cy + length * sa, cx + length * ca + d * sa,
                           cy + length * sa - d * ca, cx + d * sa, cy - d * ca], 2)
        else:
            pt = np.round(rng.uniform(0, 1, 2 * k) * rng.choice([0.4, 2, 10, 60]) + rng.uniform(-1, 60), 2)
        parts.append(np.asarray(pt, np.float64))
        sizes.append((h, w))
    return parts, sizes


def test_boundary_points_draw_pycocotools_masks():
    parts, sizes = _random_parts(7, 2100)
    zero = [np.zeros(len(p) // 2) for p in parts]
    X = np.concatenate([raster.upsampled(p[0::2], z) for p, z in zip(parts, zero)])
    Y = np.concatenate([raster.upsampled(p[1::2], z) for p, z in zip(parts, zero)])
    vptr = np.concatenate([[0], np.cumsum([len(p) // 2 for p in parts])]).astype(np.int64)
    h = np.array([s[0] for s in sizes], np.int64)
    w = np.array([s[1] for s in sizes], np.int64)
    part, x, y = raster.boundary_points(X, Y, vptr, h, w)
    assert ((x >= 0) & (x < w[part]) & (y >= 0) & (y <= h[part])).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, p in enumerate(parts):
            sel = part == i
            toggles = np.bincount(x[sel] * h[i] + y[sel], minlength=h[i] * w[i] + 1)[: h[i] * w[i]]
            mask = (np.cumsum(toggles) & 1).astype(np.uint8).reshape(w[i], h[i]).T
            ref = _mask.decode(_mask.frPoly([p], int(h[i]), int(w[i])))[:, :, 0]
            assert np.array_equal(mask, ref), (i, p.tolist(), h[i], w[i])


def test_contour_stats_equal_arclength_and_contourarea():
    rng = np.random.default_rng(3)
    for trial in range(300):
        m = (rng.random((int(rng.integers(2, 30)), int(rng.integers(2, 30)))) < rng.uniform(0.2, 0.9)).astype(np.uint8)
        if trial % 3 == 0:
            m = cv2.dilate(m, np.ones((2, 2), np.uint8))
        simple, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        full, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        if not simple:
            continue
        lens = np.array([len(c) for c in simple])
        pts = np.concatenate(simple).reshape(-1, 2).astype(np.int64)
        n = len(simple)
        per, area = raster.contour_stats(pts, lens, np.arange(n), n, "all")
        assert per.tolist() == [cv2.arcLength(c, True) for c in full]
        assert area.tolist() == [cv2.contourArea(c) for c in full]
        p1, a1 = raster.contour_stats(pts, lens, np.zeros(n, np.int64), 1, "largest")
        assert (a1[0], p1[0]) == max((cv2.contourArea(c), cv2.arcLength(c, True)) for c in full)


def test_polygon_stats_match_full_image_reference_with_several_parts():
    """Instances of 1 to 3 parts (unions, overlaps, holes), several per canvas, on one image."""
    rng = np.random.default_rng(11)
    h, w = 90, 130
    anns, refs = [], []
    for i in range(250):
        segs = []
        for _ in range(1 if i % 4 else int(rng.integers(2, 4))):
            cx, cy, r = rng.uniform(-5, w + 5), rng.uniform(-5, h + 5), rng.uniform(0.5, 40)
            k = int(rng.integers(3, 14))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k)) if i % 3 else rng.uniform(0, 2 * np.pi, k)  # self-crossing too
            rad = r * rng.uniform(0.3, 1.0, k)
            segs.append(np.round(np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).ravel(), 2).tolist())
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": segs,
                     "area": 1.0, "bbox": [0, 0, 1, 1]})
        m = decode_segmentation(segs, h, w)
        cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        refs.append([(cv2.contourArea(c), cv2.arcLength(c, True)) for c in cs])
    data = {"images": [{"id": 1, "file_name": "1.jpg", "height": h, "width": w}], "annotations": anns,
            "categories": [{"id": 1, "name": "a"}]}
    for contour in ("largest", "all"):
        st = score_dataset(data, "scs", contour, workers=1).stats
        for k, ref in enumerate(refs):
            if st.status[k] not in (scoring.OK, scoring.DEGENERATE_PART):
                assert not ref or st.status[k] == scoring.ZERO_AREA
                continue
            if contour == "largest":
                assert (st.area[k], st.perimeter[k]) == max(ref), k
            else:
                assert (st.area[k], st.perimeter[k]) == (sum(a for a, _ in ref), sum(p for _, p in ref)), k


def test_a_failing_batch_falls_back_to_one_instance_at_a_time(poly, monkeypatch):
    """An error in a batch (never seen) must not lose the batch: each instance is redone alone and
    only one that fails alone is invalid_segmentation."""
    ref = score_dataset(poly, "scs", workers=1)
    real = scoring.polygon_stats

    def flaky(X, Y, vptr, iptr, cw, ch, contour="largest"):
        if len(cw) > 1:
            raise ValueError("boom")
        return real(X, Y, vptr, iptr, cw, ch, contour)

    monkeypatch.setattr(scoring, "polygon_stats", flaky)
    got = score_dataset(poly, "scs", workers=1)
    for a, b in zip(ref.stats, got.stats):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------------------------
# the lazy path (annotations parsed in the workers) against the plain one


def _bad_inputs() -> dict:
    good = [10, 10, 31, 10, 31, 31, 10, 31]
    small_rle = mask_utils.encode(np.asfortranarray(np.ones((20, 20), np.uint8)))
    small_rle["counts"] = small_rle["counts"].decode()

    def ann(aid, iid, cat, seg, crowd=0):
        return {"id": aid, "image_id": iid, "category_id": cat, "segmentation": seg, "iscrowd": crowd,
                "area": 1.0, "bbox": [0, 0, 1, 1]}

    anns = [ann(1, 1, 1, [good]), ann(2, 1, 1, [[1, 1, 5, 5]]), ann(3, 1, 1, [[10, 10, 30, 10, 30, 10.6, 10, 10.6]]),
            ann(4, 1, 1, small_rle), ann(5, 1, 99, [good]), ann(6, 42, 1, [good]), ann(7, 1, 1, [[10, 10, "a", 20, 20, 20]]),
            ann(8, 1, 1, {"counts": "corrupt!!", "size": [200, 300]}), ann(9, 1, 1, [[500, 500, 520, 500, 520, 520]]),
            ann(10, 1, 1, [good, [1, 2, 3, 4]]), ann(11, 1, 1, []), ann(12, 1, 1, None), {"id": 13, "image_id": 1},
            "not an annotation", ann(15, 1, 1, [[1, 2, 3, 4, 5]]), ann(17, 1, 1, {"counts": [1, 2, 3], "size": [200, 300]}),
            ann(18, 2, 1, [good]), {"id": "x", "image_id": 1, "category_id": 1, "segmentation": [good]},
            ann(19, 1, 1, [good], crowd=3), ann(20, 1, 1, [good], crowd=1), ann(1, 1, 1, [good])]
    # copies under ids that repeat every 5 copies: repeated ids within and across chunks
    copies = [dict(a, id=a["id"] + 100 * (r % 5)) if isinstance(a, dict) and isinstance(a.get("id"), int) else a
              for r in range(40) for a in anns]
    images = [{"id": 1, "file_name": "1.jpg", "height": 200, "width": 300}, {"id": 2, "file_name": "2.jpg"},
              {"file_name": "noid.jpg"}, {"id": 1, "file_name": "1b.jpg", "height": 200, "width": 300}]
    return {"info": {"x": 1}, "images": images, "annotations": copies,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


@pytest.mark.parametrize("workers,chunk", [(1, 7), (2, 5)])
def test_lazy_path_equals_plain_path(tmp_path, poly, workers, chunk):
    for name, data in (("bad", _bad_inputs()), ("poly", poly)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        loaded = read_coco_lazy(path)
        assert loaded.lazy and isinstance(loaded.data["annotations"][0], msgspec.Raw)
        ref = score_dataset(json.loads(path.read_text()), "si_cb_scs", workers=1)
        got = score_raw(loaded.data, "si_cb_scs", workers=workers, chunk_size=chunk)
        for a, b in zip(ref.stats, got.stats):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ref.instance_scores, got.instance_scores)
        np.testing.assert_array_equal(ref.image_scores, got.image_scores)
        np.testing.assert_array_equal(ref.prune_image_id, got.prune_image_id)
        np.testing.assert_array_equal(ref.prune_image_ok, got.prune_image_ok)
        assert (ref.problems, ref.n_crowd) == (got.problems, got.n_crowd)
        if name == "bad":  # every kind of problem, ids repeated within and across chunks
            assert len(ref.problems) >= 12 and ref.problems["duplicate_annotation_id"] > 100


def test_cli_kept_file_is_prune_coco_of_the_same_selection(tmp_path, poly, capsys):
    data = _bad_inputs()
    data["info"]["name"] = "café ü ✓"  # copied as written on the lazy path, re-encoded on the plain one
    data["images"] += poly["images"]
    data["categories"] += [c for c in poly["categories"] if c["id"] > 2]
    data["annotations"] += [dict(a, id=a["id"] + 10**6) for a in poly["annotations"]]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    outs = {}
    for mode in ("lazy", "plain", "cached", "cached-again"):
        out, scores = tmp_path / f"{mode}.json", tmp_path / f"{mode}.csv"
        extra = ["--plot-scores", str(tmp_path / "p.png")] if mode == "plain" else []
        cache = ["--no-cache"] if mode in ("lazy", "plain") else ["--cache-dir", str(tmp_path / "cache")]
        workers = "2" if mode == "lazy" else "1"
        assert cli_main(["--ann", str(path), "--keep", "0.3", "--out", str(out), "--scores", str(scores),
                         "--workers", workers, "--no-progress", *cache, *extra]) == 0
        printed = capsys.readouterr().out
        assert "time: load " in printed and ", scoring " in printed and "memory: peak RSS" in printed
        outs[mode] = (json.loads(out.read_text()), scores.read_text())
    assert "(cached)" in printed
    kept = {int(line.split(",")[0]) for line in outs["lazy"][1].splitlines()[1:] if line.split(",")[2] == "1"}
    expected = prune_coco(data, kept)
    for mode, (pruned, csv_text) in outs.items():
        assert pruned == expected, mode
        assert list(pruned) == list(expected), mode
        assert csv_text == outs["lazy"][1], mode


# -------------------------------------------------------------------------------------------------
# JSON: what msgspec refuses goes through json, with json's object and messages


@pytest.mark.parametrize("text", [
    '{"images": [], "annotations": [{"area": NaN}], "categories": []}',
    '{"images": [], "annotations": [{"area": 1e400}], "categories": []}',
    '{"images": [{"id": 123456789012345678901234567890}], "annotations": [], "categories": []}',
    '\ufeff{"images": [], "annotations": [], "categories": []}',
    '{"images": [], "annotations": [{"s": "\\ud800"}], "categories": [], "x": -Infinity}',
    '{"a": 1, "a": [2, 3], "images": [], "annotations": [], "categories": []}',
])
def test_read_coco_is_json_load(tmp_path, text):
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    try:
        with open(path) as f:
            expected = json.load(f)
    except json.JSONDecodeError:
        expected = None
    for reader in (read_coco, read_coco_lazy):
        if expected is None:
            with pytest.raises(DataError, match="not valid JSON"):
                reader(path)
            continue
        loaded = reader(path)
        if loaded.lazy:
            ann = [json.loads(bytes(a)) for a in loaded.data["annotations"]]
            assert json.dumps(ann) == json.dumps(expected["annotations"])
            for key in ("images", "categories"):
                assert json.dumps(loaded.data[key]) == json.dumps(expected[key])
        else:
            assert json.dumps(loaded.data) == json.dumps(expected)
        assert loaded.sha1 == hashlib.sha1(path.read_bytes()).hexdigest()


def test_read_coco_errors_are_load_json_errors(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        read_coco_lazy(tmp_path / "missing.json")
    for text, msg in (("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object")):
        (tmp_path / "b.json").write_text(text)
        for reader in (read_coco, read_coco_lazy):
            with pytest.raises(DataError, match=msg):
                reader(tmp_path / "b.json")


def test_dump_json_keeps_nan_when_the_file_had_it():
    assert json.loads(dump_json({"a": [1.5, 2]}, strict=True)) == {"a": [1.5, 2]}
    assert dump_json({"a": float("nan")}, strict=False) == b'{"a":NaN}'  # as json.dump wrote it
    assert dump_json({"a": 10**30}, strict=True) == b'{"a":1000000000000000000000000000000}'


def test_ranking_from_lazy_and_plain_paths_is_the_same(tmp_path, poly):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(poly))
    a = score_raw(read_coco_lazy(path).data, "si_cb_scs", workers=1)
    b = score_dataset(poly, "si_cb_scs", workers=1)
    assert rank_images(a) == rank_images(b)
