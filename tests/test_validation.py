"""alseg.data.validation: every kind of malformed annotation, one reason each, the same for the
training loader (CocoDataset: one-line error or counted skip) and alseg-prune (counted problem)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from alseg.data import validation as V
from alseg.data.coco import CocoDataset
from alseg.errors import DataError
from alseg.tfdp.scoring import score_dataset

W, H = 64, 48  # the image of every case below
CASES_DIR = Path(__file__).parent / "data" / "bad_inputs"


def square(x0=10, y0=10, x1=30, y1=30):
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ann(aid=2, seg=None, **kw):
    a = {"id": aid, "image_id": 1, "category_id": 1, "segmentation": [square()] if seg is None else seg,
         "bbox": [10, 10, 20, 20], "area": 400.0, "iscrowd": 0}
    a.update(kw)
    return a


def rle_of(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": r["counts"].decode("ascii"), "size": list(mask.shape)}


def uncompressed(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F").astype(np.uint8)
    runs, prev, n = [], 0, 0
    for v in flat:
        if v != prev:
            runs.append(n)
            prev, n = v, 0
        n += 1
    runs.append(n)
    return {"counts": runs, "size": list(mask.shape)}


BLOB = np.zeros((H, W), np.uint8)
BLOB[5:20, 8:30] = 1
EMPTY = np.zeros((H, W), np.uint8)


def coco(*anns, images=None):
    images = images or [{"id": 1, "file_name": "1.png", "width": W, "height": H},
                        {"id": 2, "file_name": "2.png", "width": W, "height": H}]
    return {"images": images, "annotations": [ann(1)] + list(anns),
            "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


# (case id, the bad annotation (second in the file, after a valid one), reason, words of the message)
CASES = [
    ("not_a_dict", "just text", "invalid_annotation", "not a JSON object (str)"),
    ("null", None, "invalid_annotation", "not a JSON object (NoneType)"),
    ("no_id", without(ann(), "id"), "invalid_annotation", "must be integers, got None, 1, 1"),
    ("string_id", ann("7"), "invalid_annotation", "must be integers"),
    ("bool_id", ann(True), "invalid_annotation", "must be integers"),
    ("float_image_id", ann(image_id=1.0), "invalid_annotation", "must be integers"),
    ("no_category_id", without(ann(), "category_id"), "invalid_annotation", "must be integers"),
    ("iscrowd_2", ann(iscrowd=2), "invalid_annotation", "'iscrowd' must be 0 or 1, got 2"),
    ("iscrowd_text", ann(iscrowd="yes"), "invalid_annotation", "'iscrowd' must be 0 or 1, got 'yes'"),
    ("duplicate_id", ann(1), "duplicate_annotation_id", "duplicate annotation id 1 (also annotations[0])"),
    ("no_segmentation", without(ann(), "segmentation"), "invalid_segmentation", "no segmentation"),
    ("segmentation_text", ann(seg="polygon"), "invalid_segmentation", "unsupported type str"),
    ("segmentation_number", ann(seg=3), "invalid_segmentation", "unsupported type int"),
    ("empty_polygon_list", ann(seg=[]), "degenerate_polygon", "empty polygon list"),
    ("two_points", ann(seg=[[1, 1, 5, 5]]), "degenerate_polygon", "no part with 3 points or more"),
    ("empty_part", ann(seg=[[]]), "degenerate_polygon", "no part with 3 points or more"),
    ("degenerate_part", ann(seg=[square(), [1, 2, 3, 4]]), "degenerate_part", "part 1 has fewer than 3 points"),
    ("flat_polygon", ann(seg=square()), "invalid_segmentation", "polygon part 0 is not a list of coordinates (int)"),
    ("odd_length", ann(seg=[square() + [5]]), "invalid_segmentation", "part 0 has an odd number of coordinates (9)"),
    ("word_coordinate", ann(seg=[[10, 10, "a", 20, 20, 20]]), "invalid_segmentation", "not all numbers"),
    ("nested_coordinate", ann(seg=[[10, [10], 30, 20, 20, 20]]), "invalid_segmentation", "not all numbers"),
    ("numeric_string_coordinate", ann(seg=[[10, 10, "30", 10, 30, 30]]), "invalid_segmentation", "not all numbers"),
    ("boolean_coordinate", ann(seg=[[10, 10, 30, 10, 30, True]]), "invalid_segmentation", "not all numbers"),
    ("null_coordinate", ann(seg=[[10, None, 30, 20, 20, 20]]), "invalid_segmentation", "not finite"),
    ("nan_coordinate", ann(seg=[[math.nan, 1, 5, 1, 5, 5]]), "invalid_segmentation", "not finite"),
    ("inf_coordinate", ann(seg=[[math.inf, 1, 5, 1, 5, 5]]), "invalid_segmentation", "not finite"),
    ("coordinates_1e8", ann(seg=[[10, 10, 1e8, 10, 1e8, 1e8]]), "invalid_segmentation",
     "far outside the 64x48 image (x from 10 to 1e+08"),
    ("coordinates_minus_1e8", ann(seg=[[-1e8, 10, 30, 10, 30, 30]]), "invalid_segmentation", "far outside"),
    ("just_beyond_margin", ann(seg=[[10, 10, 30, 10, 30, H + 4 * W + 1]]), "invalid_segmentation", "far outside"),
    ("outside_right", ann(seg=[square(W, 10, W + 20, 30)]), "empty_mask", "entirely outside the 64x48 image"),
    ("outside_above", ann(seg=[square(10, -30, 30, 0)]), "empty_mask", "entirely outside"),
    ("collinear", ann(seg=[[0, 0, 10, 10, 20, 20, 5, 5]]), "zero_area", "encloses no area"),
    ("one_point", ann(seg=[[7, 7, 7, 7, 7, 7]]), "zero_area", "encloses no area"),
    ("coco_id_918", ann(seg=[[29.65, 38.33, 29.65, 38.33, 30.68, 38.33, 30.68, 38.33]], bbox=[29.65, 38.33, 1.03, 1.0]),
     "zero_area", "encloses no area"),
    ("all_parts_collinear", ann(seg=[[0, 0, 10, 0, 20, 0], [5, 5, 5, 9, 5, 20]]), "zero_area", "encloses no area"),
    ("rle_without_counts", ann(seg={"size": [H, W]}), "invalid_segmentation", "RLE without 'counts' and 'size'"),
    ("rle_size_not_pair", ann(seg={"counts": [H * W], "size": H}), "invalid_segmentation", "RLE without"),
    ("rle_size_words", ann(seg={"counts": [H * W], "size": [str(H), str(W)]}), "invalid_segmentation",
     "'size' must be two integers"),
    ("rle_size_mismatch", ann(seg=rle_of(np.ones((20, 20)))), "rle_size_mismatch",
     "RLE size [20, 20] differs from image size [48, 64]"),
    ("rle_counts_total_case08", ann(seg={"counts": [100, 50], "size": [H, W]}), "invalid_rle",
     "RLE counts add up to 150 pixels, not height x width = 48 x 64 = 3072"),
    ("rle_counts_negative", ann(seg={"counts": [3000, -10, 82], "size": [H, W]}), "invalid_rle", "integers in [0, 2^32)"),
    ("rle_counts_float", ann(seg={"counts": [3000.0, 72.0], "size": [H, W]}), "invalid_rle", "integers in [0, 2^32)"),
    ("rle_counts_word", ann(seg={"counts": [3000, "72"], "size": [H, W]}), "invalid_rle", "integers in [0, 2^32)"),
    ("rle_counts_huge", ann(seg={"counts": [2**32, 0], "size": [H, W]}), "invalid_rle", "integers in [0, 2^32)"),
    ("rle_string_bad_chars", ann(seg={"counts": "corrupt!!", "size": [H, W]}), "invalid_rle", "string is corrupt"),
    ("rle_string_unterminated", ann(seg={"counts": rle_of(BLOB)["counts"] + "P", "size": [H, W]}), "invalid_rle",
     "string is corrupt"),
    ("rle_string_total", ann(seg={"counts": rle_of(BLOB[:10])["counts"], "size": [H, W]}), "invalid_rle",
     "add up to 640 pixels"),
    ("rle_string_not_ascii", ann(seg={"counts": "\u00e9\u00e9", "size": [H, W]}), "invalid_rle", "string is corrupt"),
    ("rle_counts_dict", ann(seg={"counts": {"a": 1}, "size": [H, W]}), "invalid_segmentation",
     "RLE counts of unsupported type dict"),
    ("rle_no_foreground", ann(seg=uncompressed(EMPTY)), "empty_mask", "RLE without any foreground pixel"),
    ("rle_string_no_foreground", ann(seg=rle_of(EMPTY)), "empty_mask", "RLE without any foreground pixel"),
    ("no_bbox", without(ann(), "bbox"), "invalid_bbox", "invalid bbox None"),
    ("bbox_three_numbers", ann(bbox=[1, 2, 3]), "invalid_bbox", "invalid bbox [1, 2, 3]"),
    ("bbox_zero_width", ann(bbox=[10, 10, 0, 20]), "invalid_bbox", "width and height > 0"),
    ("bbox_negative_height", ann(bbox=[606, 571, 1, -24]), "invalid_bbox", "invalid bbox"),
    ("bbox_nan", ann(bbox=[math.nan, 10, 20, 20]), "invalid_bbox", "invalid bbox"),
    ("bbox_inf", ann(bbox=[10, 10, math.inf, 20]), "invalid_bbox", "invalid bbox"),
    ("bbox_words", ann(bbox=["10", "10", "20", "20"]), "invalid_bbox", "invalid bbox"),
    ("area_negative", ann(area=-5), "invalid_area", "invalid area -5 (needs a finite number >= 0)"),
    ("area_word", ann(area="big"), "invalid_area", "invalid area 'big'"),
    ("area_nan", ann(area=math.nan), "invalid_area", "invalid area nan"),
    # crowd regions go through the same checks (COCOeval crashed on these after round 0)
    ("crowd_empty_polygon", ann(seg=[], iscrowd=1), "degenerate_polygon", "empty polygon list"),
    ("crowd_two_points", ann(seg=[[1, 1, 5, 5]], iscrowd=1), "degenerate_polygon", "no part with 3 points"),
    ("crowd_rle_total", ann(seg={"counts": [100, 50], "size": [H, W]}, iscrowd=1), "invalid_rle", "add up to 150"),
    ("crowd_no_bbox", without(ann(seg=uncompressed(BLOB), iscrowd=1), "bbox"), "invalid_bbox", "invalid bbox"),
]
IDS = [c[0] for c in CASES]
# The file refers to an image / category it does not list: an error even with invalid_annotations=skip.
REFERENCE_CASES = [
    ("unknown_image", ann(image_id=42), "unknown_image", "unknown image_id 42"),
    ("unknown_category", ann(category_id=9), "unknown_category", "unknown category_id 9"),
    ("crowd_unknown_image", ann(image_id=42, iscrowd=1), "unknown_image", "unknown image_id 42"),
]


def test_at_least_forty_malformed_annotations():
    assert len(CASES) + len(REFERENCE_CASES) >= 40 and len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("name, bad, reason, words", CASES + REFERENCE_CASES, ids=IDS + [c[0] for c in REFERENCE_CASES])
def test_each_malformed_annotation_has_one_reason(name, bad, reason, words):
    data = coco(bad)
    check = V.check_coco(data, require_names=True)
    assert check.file_problems == []
    assert V.REASONS[check.annotations.status[0]] == "ok"
    assert V.REASONS[check.annotations.status[1]] == reason
    assert check.annotations.counts() == {reason: 1}
    text = check.describe(data["annotations"], 1)
    assert text.startswith("annotations[1]") and words in text and "\n" not in text
    # alseg-prune counts the same reason (one source of truth)
    problems = score_dataset(data, "scs", workers=1).problems
    assert problems.get(reason) == 1


@pytest.mark.parametrize("name, bad, reason, words", CASES, ids=IDS)
def test_loader_error_or_counted_skip(tmp_path, name, bad, reason, words):
    data = coco(bad)
    with pytest.raises(DataError) as e:
        CocoDataset(data, tmp_path, source="ann.json", check_images=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ann.json: annotations[1]") and words in msg
    assert "dataset.invalid_annotations=skip" in msg
    d = CocoDataset(data, tmp_path, source="ann.json", invalid_annotations="skip", check_images=False)
    assert d.skipped == {reason: 1}
    assert [i.ann_id for i in d.by_id[1].instances] == [1]  # only the valid annotation is an instance
    gt_ids = [a["id"] for a in d.to_coco_dict()["annotations"]]
    assert gt_ids == [1]  # nor in COCOeval's ground truth (crowd regions included)
    assert d.coco_gt.getAnnIds() == [1]


@pytest.mark.parametrize("name, bad, reason, words", REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES])
def test_reference_problems_are_errors_even_when_skipping(tmp_path, name, bad, reason, words):
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=rf"^ann\.json: annotations\[1\] \(id=2\): {words}.*right annotation file"):
            CocoDataset(coco(bad), tmp_path, source="ann.json", invalid_annotations=policy, check_images=False)


def test_valid_annotations_pass(tmp_path):
    bow_tie = [[10, 10, 30, 30, 30, 10, 10, 30]]  # halves cancel in the shoelace sum, yet it has pixels
    anns = [
        ann(2, seg=bow_tie),
        ann(3, seg=[square(-5, -5, 10, 10)]),  # partly outside: fine
        ann(4, seg=[[0, 0, W, 0, W, H]]),  # on the border
        ann(5, seg=rle_of(BLOB)),
        ann(6, seg=uncompressed(BLOB), iscrowd=1),
        ann(7, seg=[square(), square(40, 5, 50, 15)]),  # two parts
        ann(8, area=None),  # no area: computed from the mask
        without(ann(9), "iscrowd"),
        ann(10, iscrowd=True, seg=rle_of(BLOB)),
        ann(11, seg=[[10.5, 10.25, 30, 10, 30, 30.75]]),
        ann(12, seg={"counts": rle_of(BLOB)["counts"].encode(), "size": [H, W]}),  # bytes counts
        ann(13, seg=[[float(v) for v in square()]], bbox=[10.0, 10.0, 20.5, 0.5], area=0),
    ]
    check = V.check_coco(coco(*anns), require_names=True)
    assert check.annotations.counts() == {} and check.file_problems == []
    assert check.annotations.crowd.tolist() == [False] * 5 + [True] + [False] * 3 + [True] + [False] * 3


def test_problem_counts_and_chunk_boundaries():
    """Every case in one file, then again in reverse order: the first copies keep their reasons,
    the second ones are duplicates (unless their ids are not even integers), whatever the chunking."""
    first = [dict(b, id=1000 + i) if isinstance(b, dict) and V.is_int(b.get("id")) and name != "duplicate_id" else b
             for i, (name, b, _, _) in enumerate(CASES)]
    anns = [ann(1)] + first + [ann(100 + i) for i in range(7)] + first[::-1]
    idx = V.index_images(coco()["images"])
    cats, _ = V.index_categories(coco()["categories"])
    ref = V.check_annotations(anns, idx.sizes, cats, chunk_size=4096).status
    for size in (1, 2, 7, 33):
        assert V.check_annotations(anns, idx.sizes, cats, chunk_size=size).status.tolist() == ref.tolist()
    names = [V.REASONS[s] for s in ref]
    n = len(CASES)
    assert names[0] == "ok" and names[n + 1:n + 8] == ["ok"] * 7
    assert names[1:n + 1] == [c[2] for c in CASES]
    assert names[n + 8:] == [("invalid_annotation" if c[2] == "invalid_annotation" else "duplicate_annotation_id")
                             for c in CASES[::-1]]
    counts = V.AnnotationReport(ref, np.zeros(len(ref), bool)).counts()
    assert sum(counts.values()) == 2 * n


def test_geometry_keeps_the_valid_parts_only():
    anns = [
        ann(1, seg=[square(0, 0, 5, 5)]),
        ann(2, seg=[[1, 2, 3, 4], square(10, 10, 20, 20)]),  # degenerate part dropped, instance kept
        ann(3, seg=[[math.nan, 0, 1, 1, 2, 2]]),  # invalid: not in the geometry
        ann(4, seg=[square(1, 1, 2, 2)], iscrowd=1),  # crowd: only with crowd_geometry
        ann(5, seg=[square(3, 3, 9, 9), square(20, 20, 30, 30)], bbox=None),  # invalid bbox
        ann(6, seg=rle_of(BLOB)),
        ann(7, seg=[square(40, 40, 41, 41), [7, 7, 8, 8, 9, 7]]),
    ]
    idx = V.index_images(coco()["images"])
    for crowd_geometry in (True, False):
        c = V.AnnotationChecker(idx.sizes, {1, 2}).check(anns, 0, len(anns), geometry=True, crowd_geometry=crowd_geometry)
        assert [V.REASONS[s] for s in c.status] == ["ok", "degenerate_part", "invalid_segmentation", "ok",
                                                    "invalid_bbox", "ok", "ok"]
        kept = [0, 1, 3, 6] if crowd_geometry else [0, 1, 6]
        assert c.poly_local.tolist() == kept
        parts = {0: [square(0, 0, 5, 5)], 1: [square(10, 10, 20, 20)], 3: [square(1, 1, 2, 2)],
                 6: [square(40, 40, 41, 41), [7, 7, 8, 8, 9, 7]]}
        for j, k in enumerate(kept):
            got = [c.coords[c.part_ptr[p]:c.part_ptr[p + 1]].tolist()
                   for p in range(c.inst_ptr[j], c.inst_ptr[j + 1])]
            assert got == parts[k]
        assert c.hw.tolist() == [[H, W]] * len(kept)
        assert [r[0] for r in c.rles] == [5]


def test_index_images_and_categories():
    images = [
        {"id": 1, "file_name": "a.png", "width": 10, "height": 20},
        "x",
        {"id": "2", "file_name": "b.png", "width": 10, "height": 20},
        {"id": 1, "file_name": "c.png", "width": 10, "height": 20},
        {"id": 3, "width": 10, "height": 20},
        {"id": 4, "file_name": "d.png", "width": 0, "height": 20},
        {"id": 5, "file_name": "e.png", "width": 10.5, "height": 20},
        {"id": 6, "file_name": "f.png", "width": True, "height": 20},
        {"id": 7, "file_name": "g.png", "width": "10", "height": 20},
        {"id": 8, "file_name": "h.png", "width": 10.0, "height": 20},
    ]
    idx = V.index_images(images, require_file_name=True)
    assert idx.ids == [1, 3, 4, 5, 6, 7, 8]
    assert idx.sizes[1] == (20, 10) and idx.sizes[8] == (20, 10) and idx.sizes[4] is None and idx.sizes[7] is None
    assert [(p.where, p.reason) for p in idx.problems] == [
        ("images[1]", "invalid_image"), ("images[2]", "invalid_image"), ("images[3]", "duplicate_image_id"),
        ("images[4] (id=3)", "invalid_image"), ("images[5] (id=4)", "invalid_image_size"),
        ("images[6] (id=5)", "invalid_image_size"), ("images[7] (id=6)", "invalid_image_size"),
        ("images[8] (id=7)", "invalid_image_size")]
    assert "also images[0]" in idx.problems[2].text
    assert [p.reason for p in V.index_images(images).problems].count("invalid_image") == 2  # file_name not needed
    cats, problems = V.index_categories([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}, {"name": "c"},
                                         {"id": 2}, 7], require_name=True)
    assert list(cats) == [1] and [p.reason for p in problems] == ["duplicate_category_id", "invalid_category",
                                                                  "invalid_category", "invalid_category"]


@pytest.mark.parametrize("images, categories, words", [
    ([{"id": 1, "file_name": "1.png", "width": W}], None, "images[0] (id=1): 'width' and 'height' must be positive"),
    ([{"id": 1, "file_name": "1.png", "width": W, "height": H}] * 2, None, "images[1]: duplicate image id 1"),
    ([{"id": "1", "file_name": "1.png", "width": W, "height": H}], None, "images[0]: 'id' must be an integer"),
    ([{"id": 1, "width": W, "height": H}], None, "images[0] (id=1): needs a 'file_name'"),
    (None, [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "categories[1]: duplicate category id 1"),
    (None, [{"id": 1}], "categories[0]: needs an integer 'id' and a string 'name'"),
])
def test_malformed_image_and_category_entries_are_errors_even_when_skipping(tmp_path, images, categories, words):
    data = coco()
    data["annotations"] = []
    if images is not None:
        data["images"] = images
    if categories is not None:
        data["categories"] = categories
    for policy in ("error", "skip"):
        with pytest.raises(DataError, match=r"^ann\.json: " + words.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)").replace("]", r"\]")):
            CocoDataset(data, tmp_path, source="ann.json", invalid_annotations=policy, check_images=False)


def test_error_names_the_first_and_counts_the_others(tmp_path, caplog):
    data = coco(ann(2, seg=[]), ann(3, seg={"counts": [1], "size": [H, W]}), ann(4, seg={"counts": [2], "size": [H, W]}))
    with pytest.raises(DataError) as e:
        CocoDataset(data, tmp_path, source="f.json", check_images=False)
    assert str(e.value) == (
        "f.json: annotations[1] (id=2): empty polygon list; 2 more invalid annotations (3 in all: "
        "degenerate_polygon=1, invalid_rle=2); set dataset.invalid_annotations=skip to drop and count them")
    with caplog.at_level(logging.WARNING, logger="alseg.data.coco"):
        d = CocoDataset(data, tmp_path, source="f.json", invalid_annotations="skip", check_images=False)
    assert d.skipped == {"degenerate_polygon": 1, "invalid_rle": 2}
    assert "skipped 3 invalid annotations of 4 (degenerate_polygon=1, invalid_rle=2)" in caplog.text
    assert "annotations[1] (id=2): empty polygon list" in caplog.text


def test_skipped_crowd_regions_leave_cocoeval_ground_truth(tmp_path):
    good_crowd = ann(3, seg=uncompressed(BLOB), iscrowd=1)
    bad_crowd = ann(4, seg=[[1, 1, 5, 5]], iscrowd=1)
    d = CocoDataset(coco(good_crowd, bad_crowd), tmp_path, invalid_annotations="skip", check_images=False)
    assert d.skipped == {"degenerate_polygon": 1}
    assert d.coco_gt.getAnnIds(iscrowd=True) == [3] and d.coco_gt.getAnnIds(iscrowd=False) == [1]
    assert [i.ann_id for i in d.by_id[1].instances] == [1]


def test_validation_leaves_the_data_unchanged(tmp_path):
    data = coco(ann(2, area=None), ann(3, seg=uncompressed(BLOB), iscrowd=1))
    before = json.dumps(data, sort_keys=True)
    d = CocoDataset(data, tmp_path, check_images=False)
    assert d.coco_gt.anns[2]["area"] == 400.0  # computed for COCOeval, from the mask
    assert json.dumps(data, sort_keys=True) == before


# --------------------------------------------------------------------------------------------------
# compressed RLE strings


def test_rle_string_runs_match_pycocotools_and_reference():
    rng = np.random.default_rng(0)
    for t in range(300):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        r = mask_utils.encode(np.asfortranarray(m))
        runs = V.rle_string_runs(r["counts"])
        assert np.array_equal(runs, V._rle_string_runs_py(r["counts"]))
        assert runs.sum() == h * w and runs[1::2].sum() == m.sum() == mask_utils.area(r)
        assert V.rle_string_total(r["counts"].decode()) == h * w
    for t in range(2000):  # random strings: corrupt or not, the same answer as the reference loop
        s = bytes(rng.integers(40, 120, int(rng.integers(0, 25))).astype(np.uint8).tolist())
        a, b = V.rle_string_runs(s), V._rle_string_runs_py(s)
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), s
    # redundant continuation characters (values longer than 7 characters) go through the loop
    assert V.rle_string_runs(b"PPPPPPPPP0").tolist() == [0]
    assert V.rle_string_runs(b"o" * 8 + b"0") is None  # 2^40: too large
    assert V.rle_string_runs(b"") .tolist() == []


# --------------------------------------------------------------------------------------------------
# the shared cases


@pytest.mark.parametrize("split, bad_id", [("train", 10001), ("val", 20001)])
def test_case08_uncompressed_rle_with_wrong_counts(tmp_path, split, bad_id):
    """case08: an uncompressed RLE whose counts add up to 150, not 64 x 64 (alseg-prune already said
    so; the loader accepted it and evaluation later hung in pycocotools)."""
    path = CASES_DIR / "case08" / f"{split}.json"
    with pytest.raises(DataError) as e:
        CocoDataset.from_file(path, CASES_DIR / "case08" / "images")
    assert str(e.value) == (f"{path}: annotations[0] (id={bad_id}): RLE counts add up to 150 pixels, not height x "
                            "width = 64 x 64 = 4096; set dataset.invalid_annotations=skip to drop and count them")
    d = CocoDataset.from_file(path, CASES_DIR / "case08" / "images", invalid_annotations="skip")
    assert d.skipped == {"invalid_rle": 1}
    assert bad_id not in {i.ann_id for r in d.images for i in r.instances}
    assert bad_id not in d.coco_gt.getAnnIds()
    assert score_dataset(json.loads(path.read_text()), workers=1).problems == {"invalid_rle": 1}


def _both_ways(annotations: list, sizes, cats):
    """check() of the annotations parsed as dicts and as TypedAnnotation (None: the typed decoder
    refuses them, so they are always checked as dicts)."""
    import msgspec

    text = json.dumps(annotations).encode()
    try:
        typed = V.TYPED_ANNOTATIONS.decode(text)
    except msgspec.DecodeError:
        return None
    dicts = json.loads(text)
    a = V.AnnotationChecker(sizes, cats).check(dicts, 0, len(dicts), geometry=True, crowd_geometry=False)
    b = V.AnnotationChecker(sizes, cats).check(typed, 0, len(typed), geometry=True, crowd_geometry=False)
    return a, b


def _assert_same_check(a, b):
    for f in ("status", "ann_id", "image_id", "category_id", "crowd", "poly_local", "coords", "part_ptr", "inst_ptr", "hw"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert [(k, dict(s), h, w) for k, s, h, w in a.rles] == [(k, dict(s), h, w) for k, s, h, w in b.rles]


@pytest.mark.parametrize("name, bad, reason, words", CASES + REFERENCE_CASES, ids=IDS + [c[0] for c in REFERENCE_CASES])
def test_typed_annotations_check_as_dicts_do(name, bad, reason, words):
    """The typed fast path (alseg-prune's workers) gives every case the statuses, ids and geometry
    the dict path gives; cases the typed decoder refuses take the dict path."""
    sizes = {1: (H, W), 2: (H, W), 3: None}
    both = _both_ways([ann(1), bad, ann(3, image_id=2, iscrowd=1, seg=uncompressed(BLOB))], sizes, {1, 2})
    if both is not None:
        a, b = both
        _assert_same_check(a, b)
        assert V.REASONS[a.status[1]] == reason


def test_typed_annotations_mixed_chunk():
    """All the cases the typed decoder takes, in one chunk, plus repeated ids and an image without
    a size: the same check as dicts; most cases do take the typed path."""
    import msgspec

    taken, anns = 0, [ann(1)]
    for i, (_, bad, _, _) in enumerate(CASES + REFERENCE_CASES):
        try:
            V.TYPED_ANNOTATIONS.decode(json.dumps([bad]).encode())
        except msgspec.DecodeError:
            continue
        taken += 1
        anns.append({**bad, "id": 100 + i})
    anns += [ann(1), ann(7, image_id=3), ann(8, seg=[[0.5, 1, 30.25, 2, 20, 40.75], square(), [1, 2]])]
    assert taken >= 25
    a, b = _both_ways(anns, {1: (H, W), 2: (H, W), 3: None}, {1, 2})
    _assert_same_check(a, b)
    assert V.REASONS[a.status[-3]] == "duplicate_annotation_id" and V.REASONS[a.status[-2]] == "invalid_image_size"


def test_typed_decoder_refuses_what_only_the_dict_path_can_say():
    import msgspec

    for bad in (ann(True), ann(iscrowd=True), ann(image_id=1.0), ann(seg="polygon"), without(ann(), "bbox"),
                ann(seg=[[10, 10, "a", 20, 20, 20]]), "just text", ann(area="big")):
        with pytest.raises(msgspec.DecodeError):
            V.TYPED_ANNOTATIONS.decode(json.dumps([ann(1), bad]).encode())
