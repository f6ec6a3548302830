import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from PIL import Image

from alseg.data.coco import CocoDataset, decode_segmentation
from alseg.errors import DataError


def _coco(tmp_path, anns, images=None, cats=None):
    images = images or [{"id": 7, "file_name": "a.png", "width": 20, "height": 10}]
    cats = cats or [{"id": 3, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "book"}]
    for im in images:
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / im["file_name"])  # headers are checked
    return {"images": images, "annotations": anns, "categories": cats}


def _poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_polygon_and_rle_decode_and_label_mapping(tmp_path):
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 7, "category_id": 90, "bbox": [0, 0, 4, 4], "segmentation": _poly(0, 0, 4, 4), "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [3, 2, 6, 3], "segmentation": rle, "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 18, "bbox": [10, 0, 5, 5], "segmentation": rle, "iscrowd": 1},
    ]
    d = CocoDataset(_coco(tmp_path, anns), tmp_path)
    # Non-contiguous ids 3, 18, 90 map to labels 1, 2, 3 and back.
    assert d.cat_id_to_label == {3: 1, 18: 2, 90: 3}
    assert d.label_to_cat_id[3] == 90
    rec = d.by_id[7]
    assert [i.ann_id for i in rec.instances] == [1, 2]  # the crowd region is not an instance
    masks = rec.decode_masks()
    assert masks[1].sum() == 18 and masks[1][2:5, 3:9].all()
    # pycocotools rasterises the polygon square (0,0)-(4,4) to 4x4 pixels.
    assert masks[0].sum() == 16
    # COCOeval ground truth keeps the crowd region.
    assert len(d.coco_gt.getAnnIds(iscrowd=True)) == 1


def test_multipart_polygon_is_merged():
    seg = _poly(0, 0, 2, 2) + _poly(5, 5, 7, 7)
    assert decode_segmentation(seg, 10, 10).sum() == 8


def test_class_subset_and_unknown_name(tmp_path):
    anns = [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [0, 0, 4, 4], "segmentation": _poly(0, 0, 4, 4)}]
    d = CocoDataset(_coco(tmp_path, anns), tmp_path, class_names=["book", "cat"])
    assert d.class_names == ["cat", "book"] and d.cat_id_to_label == {3: 1, 90: 2}
    with pytest.raises(DataError, match="unknown class name.*'zebra'"):
        CocoDataset(_coco(tmp_path, anns), tmp_path, class_names=["zebra"])


def test_drop_empty_and_max_images(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "segmentation": _poly(0, 0, 4, 4)}]
    assert CocoDataset(_coco(tmp_path, anns, images), tmp_path, drop_empty=True).image_ids == [2]
    assert CocoDataset(_coco(tmp_path, anns, images), tmp_path, max_images=2).image_ids == [1, 2]


@pytest.mark.parametrize(
    "seg, match",
    [
        ([[0, 0, 1, 1]], "degenerate polygon"),
        ({"size": [5, 5], "counts": "abc"}, "RLE size"),
        ([], "empty polygon"),
    ],
)
def test_bad_segmentation_is_an_error_or_skipped(tmp_path, seg, match):
    anns = [{"id": 11, "image_id": 7, "category_id": 3, "bbox": [0, 0, 4, 4], "segmentation": seg}]
    with pytest.raises(DataError, match=rf"annotations\[0\] \(id=11\): {match}"):
        CocoDataset(_coco(tmp_path, anns), tmp_path)
    d = CocoDataset(_coco(tmp_path, anns), tmp_path, invalid_annotations="skip")
    assert d.by_id[7].instances == [] and sum(d.skipped.values()) == 1


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDataset.from_file(tmp_path / "nope.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad.json: not valid JSON \(line 1"):
        CocoDataset.from_file(bad, tmp_path)
    nofield = tmp_path / "nofield.json"
    nofield.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="missing or malformed field 'annotations'"):
        CocoDataset.from_file(nofield, tmp_path)


def test_missing_image_file_and_unknown_ids(tmp_path):
    data = _coco(tmp_path, [])
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match="a.png: image file missing"):
        CocoDataset(data, tmp_path)
    data = _coco(tmp_path, [{"id": 1, "image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "segmentation": _poly(0, 0, 1, 1)}])
    with pytest.raises(DataError, match="unknown image_id 99"):
        CocoDataset(data, tmp_path)
    data = _coco(tmp_path, [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [0, 0, 1, 1], "segmentation": _poly(0, 0, 1, 1)}])
    with pytest.raises(DataError, match="unknown category_id 5"):
        CocoDataset(data, tmp_path)


def test_tiny_coco_reads_real_annotations(tiny_coco):
    d = CocoDataset.from_file(tiny_coco / "annotations/instances_train2017.json", tiny_coco / "images/train2017",
                              invalid_annotations="skip")
    assert d.num_classes == 80 and len(d.images) == 32
    n = sum(len(r.instances) for r in d.images)
    crowd = len(d.coco_gt.getAnnIds(iscrowd=True))
    assert n + crowd + sum(d.skipped.values()) == 288
    # Every instance decodes to a mask of its image's size with pixels inside its box.
    rec = max(d.images, key=lambda r: len(r.instances))
    masks = rec.decode_masks()
    assert masks.shape == (len(rec.instances), rec.height, rec.width) and (masks.reshape(len(masks), -1).sum(1) > 0).all()
    sub = CocoDataset.from_file(tiny_coco / "annotations/instances_train2017.json", tiny_coco / "images/train2017",
                                class_names=["person", "cat", "sports ball", "book"], drop_empty=True)
    assert set(sub.class_counts()) == {"person", "cat", "sports ball", "book"}
    assert all(r.instances for r in sub.images)


def test_segmentation_area_counts_mask_pixels():
    from alseg.data.coco import segmentation_area

    assert segmentation_area(_poly(0, 0, 4, 4), 10, 20) == 16.0  # 4 x 4 pixels
    assert segmentation_area(_poly(0, 0, 2, 2) + _poly(5, 5, 7, 7), 10, 10) == 8.0  # parts merged
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    assert segmentation_area({"counts": rle["counts"].decode(), "size": [10, 20]}, 10, 20) == 18.0
    runs = [23, 3, 7, 3, 7, 3, 7, 3, 7, 3, 7, 3, 124]  # uncompressed, column-major
    assert segmentation_area({"counts": runs, "size": [10, 20]}, 10, 20) == 18.0


def test_instances_without_area_get_the_mask_area(tmp_path):
    anns = [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 7], "segmentation": _poly(0, 0, 4, 4)},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 9, 9], "segmentation": _poly(0, 0, 4, 4),
             "area": 55.5}]
    d = CocoDataset(_coco(tmp_path, anns), tmp_path)
    assert [i.area for i in d.by_id[7].instances] == [16.0, 55.5]  # the mask's 16 px, not the box's 35; the file's
    assert [d.coco_gt.anns[i]["area"] for i in (1, 2)] == [16.0, 55.5]


def test_drop_empty_is_counted_and_logged(tmp_path, caplog):
    images = [{"id": i, "file_name": f"{i}.png", "width": 10, "height": 10} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "segmentation": _poly(0, 0, 4, 4)},
            {"id": 2, "image_id": 3, "category_id": 18, "bbox": [0, 0, 4, 4], "segmentation": _poly(0, 0, 4, 4)}]
    with caplog.at_level("INFO", logger="alseg.data.coco"):
        d = CocoDataset(_coco(tmp_path, anns, images), tmp_path, source="t.json", class_names=["cat"], drop_empty=True)
    assert d.image_ids == [2] and d.dropped_empty == 2
    assert "t.json: drop_empty: dropped 2 of 3 images without any instance of the kept classes" in caplog.text
    keep_all = CocoDataset(_coco(tmp_path, anns, images), tmp_path, class_names=["cat"])
    assert keep_all.image_ids == [1, 2, 3] and keep_all.dropped_empty == 0


def test_tiny_coco_is_valid_and_its_val_split_keeps_every_image(tiny_coco):
    from alseg.data.build import coco as build_coco

    splits = build_coco(str(tiny_coco / "annotations/instances_train2017.json"), str(tiny_coco / "images/train2017"),
                        str(tiny_coco / "annotations/instances_val2017.json"), str(tiny_coco / "images/val2017"),
                        class_names=["person", "cat", "sports ball", "book"])
    assert splits.train.skipped == {} and splits.val.skipped == {}  # the real annotations pass, crowd included
    assert all(r.instances for r in splits.train.images) and splits.train.dropped_empty > 0
    assert len(splits.val.images) == 6  # every val image, with or without the 4 classes
