import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from alseg.data.voc import VOC_CLASSES, load_voc, voc_to_coco_dict
from alseg.errors import DataError
from conftest import checkout_env

REPO = Path(__file__).resolve().parents[1]
W, H = 40, 30
PERSON, DOG, CAT, AEROPLANE = 15, 12, 8, 1


def _palette() -> list[int]:
    """The VOC colour map, so the PNGs look like the real ones (values are palette indices)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
    im.putpalette(_palette())
    im.save(path)


def _xml(path: Path, objects: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{objs}</annotation>")


@pytest.fixture
def voc(tmp_path) -> Path:
    """Three 40x30 images.

    A: person (instance 1) at rows 5..14, cols 4..13 inside a one-pixel 255 ring; dog (instance 2)
       at rows 20..24, cols 25..34 whose first row is labelled cat in the class PNG; XML marks the
       dog difficult.
    B: aeroplane on rows 0..2; the XML lists two difficult objects (count mismatch -> flags unused).
    C: background only, no XML.
    """
    root = tmp_path / "VOC2012"
    obj, cls = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    obj[4:16, 3:15] = cls[4:16, 3:15] = 255
    obj[5:15, 4:14], cls[5:15, 4:14] = 1, PERSON
    obj[20:25, 25:35], cls[20:25, 25:35] = 2, DOG
    cls[20, 25:35] = CAT
    _png(root / "SegmentationObject" / "2008_000001.png", obj)
    _png(root / "SegmentationClass" / "2008_000001.png", cls)
    _xml(root / "Annotations" / "2008_000001.xml", [("person", 0), ("dog", 1)])

    obj, cls = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    obj[0:3, :], cls[0:3, :] = 1, AEROPLANE
    _png(root / "SegmentationObject" / "2008_000002.png", obj)
    _png(root / "SegmentationClass" / "2008_000002.png", cls)
    _xml(root / "Annotations" / "2008_000002.xml", [("aeroplane", 1), ("aeroplane", 1)])

    _png(root / "SegmentationObject" / "2008_000003.png", np.zeros((H, W)))
    _png(root / "SegmentationClass" / "2008_000003.png", np.zeros((H, W)))

    (root / "JPEGImages").mkdir()
    for i in (1, 2, 3):
        Image.new("RGB", (W, H), (i * 40, 0, 0)).save(root / "JPEGImages" / f"2008_00000{i}.jpg")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2008_000001\n2008_000002\n2008_000003\n")
    return root


def test_voc_classes():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[PERSON - 1] == "person" and VOC_CLASSES[-1] == "tvmonitor"


def test_conversion_values(voc):
    d = voc_to_coco_dict(voc, "train")
    assert [c["id"] for c in d["categories"]] == list(range(1, 21))
    assert d["images"] == [
        {"id": 2008000001, "file_name": "2008_000001.jpg", "width": 40, "height": 30},
        {"id": 2008000002, "file_name": "2008_000002.jpg", "width": 40, "height": 30},
        {"id": 2008000003, "file_name": "2008_000003.jpg", "width": 40, "height": 30},
    ]
    anns = d["annotations"]
    assert len(anns) == 3
    person, dog, plane = anns
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert [a["image_id"] for a in anns] == [2008000001, 2008000001, 2008000002]
    # Majority class: the dog has 40 dog pixels and 10 cat pixels.
    assert [a["category_id"] for a in anns] == [PERSON, DOG, AEROPLANE]
    # The 44-pixel 255 ring around the person belongs to no instance: 10x10 = 100, not 12x12 = 144.
    assert person["area"] == 100 and person["bbox"] == [4.0, 5.0, 10.0, 10.0]
    assert dog["area"] == 50 and dog["bbox"] == [25.0, 20.0, 10.0, 5.0]
    assert plane["area"] == 120 and plane["bbox"] == [0.0, 0.0, 40.0, 3.0]
    m = mask_utils.decode(person["segmentation"])
    assert m.shape == (30, 40) and m.sum() == 100 and m[5:15, 4:14].all()
    assert m[4, 3] == 0 and m[15, 14] == 0  # ring corners
    assert isinstance(person["segmentation"]["counts"], str)
    assert mask_utils.decode(dog["segmentation"])[20:25, 25:35].sum() == 50
    # Difficult flags by XML order; image B's XML lists 2 objects for 1 instance, so no flag is used.
    assert [a["difficult"] for a in anns] == [0, 1, 0]
    assert [a["iscrowd"] for a in anns] == [0, 0, 0]


def test_difficult_as_crowd(voc):
    anns = voc_to_coco_dict(voc, "train", difficult_as_crowd=True)["annotations"]
    assert [a["iscrowd"] for a in anns] == [0, 1, 0]
    ds = load_voc(voc, "train", difficult_as_crowd=True)
    # The difficult dog is a crowd region: not a training instance, still in the COCOeval ground truth.
    assert [i.category_id for i in ds.by_id[2008000001].instances] == [PERSON]
    assert len(ds.coco_gt.getAnnIds(imgIds=[2008000001])) == 2


def test_load_voc(voc):
    ds = load_voc(voc, "train")
    assert ds.source == str(voc / "ImageSets" / "Segmentation" / "train.txt")
    assert ds.num_classes == 20 and ds.image_ids == [2008000001, 2008000002, 2008000003]
    rec = ds.by_id[2008000001]
    assert rec.path == voc / "JPEGImages" / "2008_000001.jpg"
    assert [i.label for i in rec.instances] == [PERSON, DOG]
    assert rec.decode_masks().sum(axis=(1, 2)).tolist() == [100, 50]
    counts = ds.class_counts()
    assert counts["person"] == counts["dog"] == counts["aeroplane"] == 1 and sum(counts.values()) == 3
    ds = load_voc(voc, "train", class_names=["dog"], drop_empty=True)
    assert ds.image_ids == [2008000001] and [i.label for i in ds.images[0].instances] == [1]


def test_cli_writes_coco_json(voc, tmp_path):
    out = tmp_path / "out" / "instances_train.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "voc_to_coco.py"), "--voc-root", str(voc),
                        "--split", "train", "--out", str(out)], capture_output=True, text=True, env=checkout_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [f"{out}: 3 images, 3 instances (aeroplane=1, dog=1, person=1)"]
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [2008000001, 2008000002, 2008000003]
    assert coco.getAnnIds(catIds=[DOG]) == [2] and coco.loadAnns(2)[0]["difficult"] == 1
    assert coco.annToMask(coco.loadAnns(1)[0]).sum() == 100
    assert [p.name for p in out.parent.iterdir()] == ["instances_train.json"]  # no temp file left


def test_missing_object_png(voc, tmp_path):
    (voc / "SegmentationObject" / "2008_000002.png").unlink()
    with pytest.raises(DataError, match=r"SegmentationObject/2008_000002\.png: PNG not found"):
        voc_to_coco_dict(voc, "train")
    out = tmp_path / "old.json"
    out.write_text('{"old": true}')
    r = subprocess.run([sys.executable, str(REPO / "tools" / "voc_to_coco.py"), "--voc-root", str(voc),
                        "--out", str(out)], capture_output=True, text=True, env=checkout_env())
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and "2008_000002.png" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert out.read_text() == '{"old": true}'


def test_a_png_pillow_refuses_is_one_line(voc, monkeypatch):
    """Every error Pillow raises on a mask (here a decompression bomb: not an OSError) names the PNG."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the 40x30 masks exceed 2x the limit
    with pytest.raises(DataError) as info:
        voc_to_coco_dict(voc, "train")
    msg = str(info.value)
    assert "2008_000001.png: cannot be read (Image size (1200 pixels) exceeds limit" in msg and "\n" not in msg


def test_bad_inputs(voc):
    with pytest.raises(DataError, match=r"Segmentation/val\.txt: split file not found"):
        voc_to_coco_dict(voc, "val")
    # Instance 1 of image B lies only on background in the class PNG.
    _png(voc / "SegmentationClass" / "2008_000002.png", np.zeros((H, W)))
    with pytest.raises(DataError, match=r"2008_000002\.png: class of instance 1 .* cannot be determined"):
        voc_to_coco_dict(voc, "train")
    _png(voc / "SegmentationClass" / "2008_000002.png", np.zeros((H, W + 1)))
    with pytest.raises(DataError, match=r"SegmentationClass/2008_000002\.png: shape \(30, 41\) differs"):
        voc_to_coco_dict(voc, "train")


def test_val_split_keeps_every_image(voc):
    """drop_empty applies to the training pool only: image C (background only) stays in val."""
    from alseg.data.build import voc as build_voc

    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2008_000001\n2008_000003\n")
    splits = build_voc(str(voc), class_names=["dog"], drop_empty=True)
    assert splits.train.image_ids == [2008000001] and splits.train.dropped_empty == 2
    assert splits.val.image_ids == [2008000001, 2008000003] and splits.val.dropped_empty == 0


def test_converted_dict_goes_through_validation(voc, monkeypatch):
    """The converted dict passes the checks of every COCO file; a conversion that produced an
    invalid annotation (here: RLE counts corrupted on the way) is a one-line DataError."""
    from alseg.data import voc as voc_module

    real_encode = voc_module.mask_utils.encode

    def bad_encode(m):
        rle = real_encode(m)
        rle["counts"] = rle["counts"][:-1]  # runs no longer add up to height x width
        return rle

    monkeypatch.setattr(voc_module.mask_utils, "encode", bad_encode)
    with pytest.raises(DataError) as e:
        voc_to_coco_dict(voc, "train")
    msg = str(e.value)
    assert msg.startswith(f"{voc / 'ImageSets' / 'Segmentation' / 'train.txt'}: image 2008_000001.jpg: "
                          "annotations[0] (id=1): ")
    assert "(3 invalid converted annotations)" in msg and "\n" not in msg


def test_split_file_not_text_is_one_line(voc, tmp_path):
    """A split file that is not UTF-8 text (UnicodeDecodeError) or cannot be read: one line naming it."""
    (voc / "ImageSets" / "Segmentation" / "latin.txt").write_bytes(b"2008_000001\n2008_\xff\n")
    with pytest.raises(DataError, match=r"Segmentation/latin\.txt: split file cannot be read \("):
        voc_to_coco_dict(voc, "latin")
    out = tmp_path / "old.json"
    out.write_text('{"old": true}')
    r = subprocess.run([sys.executable, str(REPO / "tools" / "voc_to_coco.py"), "--voc-root", str(voc),
                        "--split", "latin", "--out", str(out)], capture_output=True, text=True,
                       env=checkout_env())
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "latin.txt" in r.stderr and out.read_text() == '{"old": true}'
