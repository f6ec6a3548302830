import numpy as np
import pytest
from PIL import Image

from alseg.data.coco import CocoDataset
from alseg.engine.evaluate import _coco_eval, dice_and_greedy_iou, to_coco_results


def test_dice_and_greedy_iou_by_hand():
    g = np.zeros((2, 4, 4), np.uint8)
    g[0, :2, :2] = 1  # 4 px
    g[1, 2:, 2:] = 1  # 4 px
    p = np.zeros((2, 4, 4), bool)
    p[0, :2, :1] = True  # 2 px inside g0: IoU 2/4, Dice 2*2/(4+2)
    p[1, :2, :2] = True  # equals g0: IoU 1
    dice, iou = dice_and_greedy_iou(g, p)
    # Greedy takes the best pair first (g0, p1), then g1 has no overlapping prediction left.
    assert iou == [1.0, 0.0] and dice == [1.0, 0.0]
    dice, iou = dice_and_greedy_iou(g, p[:1])
    assert iou == [0.5, 0.0] and dice[0] == pytest.approx(4 / 6)
    assert dice_and_greedy_iou(g, None) == ([0.0, 0.0], [0.0, 0.0])


def test_cocoeval_of_ground_truth_is_perfect(tmp_path):
    images = [{"id": 1, "file_name": "1.png", "width": 40, "height": 40}]
    Image.new("RGB", (40, 40)).save(tmp_path / "1.png")  # image headers are checked
    sq = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 20, 20], "segmentation": sq(0, 0, 20, 20), "area": 400},
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [22, 22, 15, 15], "segmentation": sq(22, 22, 37, 37), "area": 225},
    ]
    d = CocoDataset({"images": images, "annotations": anns, "categories": [{"id": 5, "name": "x"}, {"id": 9, "name": "y"}]}, tmp_path)
    rec = d.by_id[1]
    masks = rec.decode_masks().astype(bool)
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (i.bbox for i in rec.instances)])
    segm, bbox = to_coco_results(d, 1, boxes, np.array([0.9, 0.8]), np.array([1, 2]), masks)
    assert {r["category_id"] for r in segm} == {5, 9}  # contiguous labels mapped back to file ids
    m = _coco_eval(d.coco_gt, segm, "segm", d.class_names)
    assert m["mask_AP"] == pytest.approx(1.0) and m["mask_AP/x"] == pytest.approx(1.0)
    # Swapping the classes makes every detection a false positive.
    segm_wrong, _ = to_coco_results(d, 1, boxes, np.array([0.9, 0.8]), np.array([2, 1]), masks)
    assert _coco_eval(d.coco_gt, segm_wrong, "segm", d.class_names)["mask_AP"] == 0.0
    assert _coco_eval(d.coco_gt, [], "bbox", d.class_names)["box_AP"] == 0.0


# --------------------------------------------------------------------------------------------------
# The evaluation set is what the val file says; a metric COCOeval cannot compute is missing, not 0.

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

from pycocotools import mask as mask_utils  # noqa: E402

from alseg.data.build import coco as build_coco  # noqa: E402

CASE03 = Path(__file__).parent / "data" / "bad_inputs" / "case03"


def _case03(caplog=None):
    kw = dict(train_ann=str(CASE03 / "train.json"), train_images=str(CASE03 / "images"),
              val_ann=str(CASE03 / "val.json"), val_images=str(CASE03 / "images"))
    if caplog is None:
        return build_coco(**kw)
    with caplog.at_level(logging.INFO, logger="alseg.data.coco"):
        return build_coco(**kw)


def _gt_predictions(data, image_ids, score):
    """Each ground-truth instance of the images as a detection (exact box and mask)."""
    segm, bbox = [], []
    for iid in image_ids:
        rec = data.by_id[iid]
        if not rec.instances:
            continue
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (i.bbox for i in rec.instances)])
        s, b = to_coco_results(data, iid, boxes, np.full(len(boxes), score), np.array([i.label for i in rec.instances]),
                               rec.decode_masks().astype(bool))
        segm += s
        bbox += b
    return segm, bbox


def test_case03_val_keeps_its_empty_images_and_detections_there_are_false_positives(caplog):
    """case03: half the val images have no annotation. They stay in the evaluation set, so a detector
    firing on them is penalised: box AP 2/3 (COCOeval over all val images), not 1.0."""
    data = _case03(caplog)
    assert data.val.image_ids == [2001, 2002, 2003, 2004] and data.val.dropped_empty == 0
    assert data.train.image_ids == [1002, 1004, 1006, 1008, 1010, 1012] and data.train.dropped_empty == 6
    assert "train.json: drop_empty: dropped 6 of 12 images without any instance of the kept classes" in caplog.text
    val = data.val
    segm, bbox = _gt_predictions(val, val.image_ids, score=0.5)
    # A "box" detection with a higher score on each empty image: box-class precision 1/3 at every
    # recall, disc class 1.0 -> AP = (1/3 + 1) / 2.
    fp_mask = np.zeros((1, 64, 64), bool)
    fp_mask[0, 10:30, 10:30] = True
    for iid in (2001, 2003):
        s, b = to_coco_results(val, iid, np.array([[10, 10, 30, 30]]), np.array([0.9]), np.array([1]), fp_mask)
        segm += s
        bbox += b
    box = _coco_eval(val.coco_gt, bbox, "bbox", val.class_names)
    mask = _coco_eval(val.coco_gt, segm, "segm", val.class_names)
    for m, prefix in ((box, "box_"), (mask, "mask_")):
        assert m[prefix + "AP"] == pytest.approx(2 / 3)
        assert m[prefix + "AP/box"] == pytest.approx(1 / 3) and m[prefix + "AP/disc"] == pytest.approx(1.0)
        assert m[prefix + "APs"] == pytest.approx(2 / 3)  # every val object is small (< 32^2 px)
        assert math.isnan(m[prefix + "APm"]) and math.isnan(m[prefix + "APl"])  # none there: missing, not 0
    # What dropping the empty val images did: the detector is never run on them, AP 1.0.
    kept = [i for i in val.image_ids if val.by_id[i].instances]
    only_annotated = val.subset(kept)
    _, bbox_kept = _gt_predictions(only_annotated, kept, score=0.5)
    assert _coco_eval(only_annotated.coco_gt, bbox_kept, "bbox", val.class_names)["box_AP"] == pytest.approx(1.0)


def test_no_detections_ap_zero_where_ground_truth_exists_nan_elsewhere():
    val = _case03().val
    for iou_type, prefix in (("bbox", "box_"), ("segm", "mask_")):
        m = _coco_eval(val.coco_gt, [], iou_type, val.class_names)
        assert {k: m[prefix + k] for k in ("AP", "AP50", "AP75", "APs")} == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0}
        assert math.isnan(m[prefix + "APm"]) and math.isnan(m[prefix + "APl"])
        assert m[prefix + "AP/box"] == 0.0 and m[prefix + "AP/disc"] == 0.0


def test_missing_area_is_the_mask_area_not_the_box_area(tmp_path):
    """A thin diagonal band: its box is 150 x 150 ("large"), its mask ~640 px ("small")."""
    band = [[0, 0, 4, 0, 154, 150, 150, 150]]
    images = [{"id": 1, "file_name": "1.png", "width": 200, "height": 200}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 154, 150], "segmentation": band}]
    d = CocoDataset({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "stick"}]}, tmp_path,
                    check_images=False)
    expected = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(band, 200, 200))))
    assert 500 < expected < 1024  # COCO's "small" range
    assert d.by_id[1].instances[0].area == expected
    assert d.coco_gt.anns[1]["area"] == expected and "area" not in anns[0]
    rec = d.by_id[1]
    segm, bbox = to_coco_results(d, 1, np.array([[0, 0, 154, 150]]), np.array([0.9]), np.array([1]),
                                 rec.decode_masks().astype(bool))
    m = _coco_eval(d.coco_gt, segm, "segm", d.class_names)
    assert m["mask_APs"] == pytest.approx(1.0)
    assert math.isnan(m["mask_APm"]) and math.isnan(m["mask_APl"])


def test_nan_metrics_in_the_writers_and_compare(tmp_path, capsys):
    """NaN (not computable) is null in results.jsonl (strict JSON), an empty cell in results.csv, '-'
    on the console; alseg-compare treats null as missing."""
    from alseg.tools.compare import compare
    from alseg.writers.console import results_table
    from alseg.writers.files import CsvWriter, JsonlWriter

    def rec(k, ap, apl, seed):
        return {"round": k, "labeled_images": 4 * (k + 1), "hours": 0.1 * (k + 1), "strategy": "random", "seed": seed,
                "mask_AP": ap, "mask_AP50": ap, "box_AP": ap, "mask_APl": apl}

    runs = {"a": [rec(0, 0.2, math.nan, 0), rec(1, 0.3, math.nan, 0)],
            "b": [rec(0, 0.4, 0.5, 1), rec(1, float("nan"), math.nan, 1)]}
    for name, records in runs.items():
        run = tmp_path / "runs" / name
        for w in (JsonlWriter(), CsvWriter()):
            w.open(run, {}, [])
            for r in records:
                w.write(r)

    def strict(c):
        raise AssertionError(f"{c} in results.jsonl")

    lines = [json.loads(l, parse_constant=strict) for l in (tmp_path / "runs/a/results.jsonl").read_text().splitlines()]
    assert lines[0]["mask_APl"] is None and lines[0]["mask_AP"] == 0.2
    csv_rows = (tmp_path / "runs/a/results.csv").read_text().splitlines()
    assert csv_rows[1].endswith(",") and "nan" not in "".join(csv_rows).lower()
    t = results_table([lines[0], {**runs["b"][1]}])  # a resumed record (null) and a fresh one (NaN)
    assert list(t.columns[3].cells) == ["0.200", "-"]

    groups = compare([tmp_path / "runs"], metrics=["mask_AP", "mask_APl"], out=tmp_path / "cmp", show=False)
    rows = {r.round: r for r in groups[0].rows}
    assert rows[0].metrics["mask_AP"] == pytest.approx((0.3, 0.1 * 2 ** 0.5))  # mean, sample std of 0.2, 0.4
    assert rows[0].metrics["mask_APl"] is None and rows[1].metrics["mask_AP"] is None
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "round 0: mask_APl missing in some runs" in md and "round 1: mask_AP missing in some runs" in md
    assert "round 1: mask_AP, mask_APl" not in md  # missing in every run: nothing to note
