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
