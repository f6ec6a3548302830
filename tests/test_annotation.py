import pytest
from PIL import Image

from alseg.annotation.budget import Budget
from alseg.annotation.cost import CostTable
from alseg.annotation.ledger import Ledger
from alseg.annotation.oracle import Oracle
from alseg.annotation.queries import Query, image_query, instance_query, point_query
from alseg.data.coco import CocoDataset
from alseg.errors import ConfigError


@pytest.fixture
def data(tmp_path):
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}]
    images = [{"id": i, "file_name": f"{i}.png", "width": 20, "height": 20} for i in (1, 2, 3)]
    for im in images:
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / im["file_name"])  # headers are checked
    sq = lambda x0, y0, x1, y1: [[x0, y0, x1, y0, x1, y1, x0, y1]]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "segmentation": sq(0, 0, 10, 10)},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [12, 12, 6, 6], "segmentation": sq(12, 12, 18, 18)},
        {"id": 12, "image_id": 2, "category_id": 2, "bbox": [2, 2, 10, 10], "segmentation": sq(2, 2, 7, 12)},
    ]
    return CocoDataset({"images": images, "annotations": anns, "categories": cats}, tmp_path)


def test_image_cost_checks_absent_classes_then_masks(data):
    o = Oracle(data, CostTable())
    # image 1: 2 masks of 1 class; 3 classes -> 2 absent classes checked at 1 s.
    assert o.cost(image_query(1)) == pytest.approx(2 * 1.0 + 2 * 79.2)
    # image 3 has no instance: 3 class checks.
    assert o.cost(image_query(3)) == pytest.approx(3.0)
    assert o.cost(instance_query(1, 10)) == 79.2
    assert o.cost(point_query(1, 10, 1, 1)) == 0.9
    assert Oracle(data, CostTable(image_checks_absent_classes=False)).cost(image_query(1)) == pytest.approx(158.4)


def test_oracle_answers_from_ground_truth(data):
    o = Oracle(data, CostTable())
    labels = o.answer(image_query(1))
    assert [(l.kind, l.ann_id) for l in labels] == [("image", None), ("mask", 10), ("mask", 11)]
    assert sum(l.seconds for l in labels) == pytest.approx(160.4)
    # instance 12's mask covers x in [2, 7), its box x in [2, 12): inside the box, on and off the mask.
    assert o.answer(point_query(2, 12, 3.5, 5.0))[0].value == 1
    assert o.answer(point_query(2, 12, 9.5, 5.0))[0].value == 0
    with pytest.raises(ValueError, match="outside the box"):
        o.answer(point_query(2, 12, 15.0, 5.0))
    with pytest.raises(ValueError):
        Query("point", 2, 12)


def test_ledger_views_seconds_and_round_trip(data, tmp_path):
    o = Oracle(data, CostTable())
    led = Ledger()
    led.add(o.answer(image_query(1)), 0)
    led.add(o.answer(point_query(2, 12, 3.5, 5.0)), 1)
    led.add(o.answer(instance_query(2, 12)), 1)
    assert led.seconds() == pytest.approx(160.4 + 0.9 + 79.2)
    assert led.seconds(up_to_round=0) == pytest.approx(160.4)
    assert led.fully_labeled_images() == {1}
    views = led.training_views()
    assert views[1].full_image and views[1].mask_ann_ids == {10, 11}
    assert views[2].mask_ann_ids == {12} and views[2].points == [(12, 3.5, 5.0, 1)]
    # Written round by round and read back, it is the same ledger.
    again = Ledger()
    for k in (0, 1):
        led.save_round(k, tmp_path / f"labels_{k}.jsonl")
        again.load_round(k, tmp_path / f"labels_{k}.jsonl")
    assert len((tmp_path / "labels_1.jsonl").read_text().splitlines()) == 2
    assert again.entries == led.entries
    assert again.training_views() == views and again.seconds() == led.seconds()
    again.drop_round(1)
    assert again.counts()["labeled_points"] == 0 and again.seconds() == pytest.approx(160.4)


def test_budget_units(data):
    o = Oracle(data, CostTable())
    ranked = [image_query(1), image_query(2), image_query(3)]
    inst = lambda q: len(data.by_id[q.image_id].instances)
    assert [q.image_id for q in Budget(2, "images").take(ranked, o.cost, inst)] == [1, 2]
    # 2 instances allowed: image 1 (2 instances) fits, image 2 would overrun, image 3 (0) fits.
    assert [q.image_id for q in Budget(2, "instances").take(ranked, o.cost, inst)] == [1, 3]
    # 100 s: image 1 costs 160.4 s and is skipped; image 2 costs 2 + 79.2 = 81.2 s; image 3 3 s.
    assert [q.image_id for q in Budget(100, "seconds").take(ranked, o.cost, inst)] == [2, 3]
    pts = [point_query(2, 12, 3, 3), point_query(2, 12, 4, 4), point_query(2, 12, 5, 5)]
    assert len(Budget(2, "points").take(pts, o.cost, inst)) == 2
    with pytest.raises(ConfigError):
        Budget(0, "images")
    with pytest.raises(ConfigError):
        Budget(5, "hours")
    with pytest.raises(ConfigError, match="cost.mask"):
        CostTable(mask=-1)
