"""One image reader, one frame: alseg.data.images (PIL; EXIF orientation policy; complete decoding),
the up-front header check of CocoDataset, and the readers of training, visualize and the TFDP plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from alseg.data.coco import CocoDataset
from alseg.data.images import check_image_headers, probe_header, read_image
from alseg.errors import AlsegError, ConfigError, DataError

CASE11 = Path(__file__).parent / "data" / "bad_inputs" / "case11"  # copied from ../shared/cases/bad_inputs

# The displayed image of stored pixels `a` (H, W, C) for each EXIF orientation, written from the
# EXIF 2.3 table (2: mirrored, 3: 180 degrees, 4: flipped, 5: transposed, 6: rotate 90 degrees
# clockwise to display, 7: transversed, 8: rotate 90 degrees counter-clockwise), not from PIL.
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}
# Stored pixels that display as `d`.
STORE = {**{o: DISPLAY[o] for o in (1, 2, 3, 4, 5, 7)}, 6: lambda d: np.rot90(d, 1), 8: lambda d: np.rot90(d, -1)}
H, W = 32, 48  # stored, non-square


def pattern(h=H, w=W) -> np.ndarray:
    """Smooth, asymmetric RGB content (every flip and rotation gives another image)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + 2 * y) % 256], axis=2).astype(np.uint8)


def write_jpeg(path: Path, pixels: np.ndarray, orientation: int | None = None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


class Rec:
    def __init__(self, image_id, path, width, height):
        self.image_id, self.path, self.width, self.height = image_id, Path(path), width, height


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, AlsegError)
    return msg


# ------------------------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("o", range(1, 9))
def test_exif_orientation_apply_ignore_error(tmp_path, o):
    p = write_jpeg(tmp_path / f"o{o}.jpg", pattern(), o)
    stored = read_image(p, "ignore", expected_hw=(H, W))
    assert stored.shape == (H, W, 3) and stored.dtype == np.uint8
    assert np.abs(stored.astype(int) - pattern()).mean() < 3  # the stored pixels, JPEG-close
    shown = read_image(p, "apply")
    np.testing.assert_array_equal(shown, DISPLAY[o](stored))  # the displayed frame, per the EXIF table
    assert shown.shape[:2] == ((W, H) if o >= 5 else (H, W))
    assert read_image(p, expected_hw=shown.shape[:2]).shape == shown.shape  # apply is the default
    # The ecosystem's frame: OpenCV's default imread applies the orientation too.
    np.testing.assert_array_equal(shown, cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB))
    if o == 1:
        np.testing.assert_array_equal(read_image(p, "error"), stored)
    else:
        with pytest.raises(DataError) as e:
            read_image(p, "error", image_id=5)
        msg = one_line(e)
        assert msg.startswith(f"{p}: carries EXIF orientation {o}") and "(image_id=5)" in msg
        assert "dataset.exif_orientation=error" in msg and "=apply" in msg and "=ignore" in msg


def test_unknown_policy_is_a_config_error(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", pattern())
    for bad in ("rotate", "", None):
        with pytest.raises(ConfigError, match="dataset.exif_orientation: must be one of apply, ignore, error"):
            read_image(p, bad)
    with pytest.raises(ConfigError, match="dataset.exif_orientation"):
        check_image_headers([], "Apply")


@pytest.mark.parametrize("o", [5, 6, 7, 8])
def test_size_mismatch_explained_by_a_90_degree_rotation(tmp_path, o):
    p = write_jpeg(tmp_path / "r.jpg", pattern(), o)
    # Annotated in the stored frame (48x32), read as displayed (32x48): the error names the tag and `ignore`.
    with pytest.raises(DataError) as e:
        read_image(p, "apply", expected_hw=(H, W), image_id=3)
    msg = one_line(e)
    assert msg.startswith(f"{p}: image is {H}x{W} but the annotation file says {W}x{H}")
    assert f"EXIF orientation {o}" in msg and "set dataset.exif_orientation=ignore" in msg and "(image_id=3)" in msg
    # Annotated as displayed but read in the stored frame: the error names `apply`.
    with pytest.raises(DataError) as e:
        read_image(p, "ignore", expected_hw=(W, H))
    assert f"EXIF orientation {o}" in one_line(e) and "set dataset.exif_orientation=apply" in str(e.value)
    # The header check says the same, without decoding.
    with pytest.raises(DataError) as e:
        check_image_headers([Rec(3, p, W, H)], "apply", source="train.json")
    assert f"EXIF orientation {o}" in one_line(e) and "=ignore" in str(e.value) and "train.json" in str(e.value)
    assert check_image_headers([Rec(3, p, H, W)], "apply")["oriented"] == 1
    # Neither frame fits: the sizes are named, and both frames.
    with pytest.raises(DataError) as e:
        read_image(p, "apply", expected_hw=(10, 10))
    assert "image is 32x48 but the annotation file says 10x10, and neither does the stored pixels" in one_line(e)


def test_size_mismatch_without_orientation_names_sizes_only(tmp_path):
    p = write_jpeg(tmp_path / "plain.jpg", pattern())
    with pytest.raises(DataError) as e:
        read_image(p, expected_hw=(W, H))
    msg = one_line(e)
    assert f"image is {W}x{H} but the annotation file says {H}x{W}" in msg and "EXIF" not in msg


# ------------------------------------------------------------------------------------ damaged files
def _truncated(tmp_path, fmt: str) -> Path:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    return p


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_an_error_not_a_grey_image(tmp_path, fmt):
    p = _truncated(tmp_path, fmt)
    if fmt == "JPEG":  # what the reader guards against: OpenCV returns a padded image, silently
        assert cv2.imread(str(p)) is not None
    with pytest.raises(DataError) as e:
        read_image(p, image_id=9)
    msg = one_line(e)
    assert msg.startswith(f"{p}: image cannot be decoded completely") and "truncated" in msg and "(image_id=9)" in msg
    # The header check finds it too (no end marker: the file is decoded), before any training.
    with pytest.raises(DataError) as e:
        check_image_headers([Rec(9, p, 80, 60)], source="ann.json")
    assert "cannot be decoded completely" in one_line(e) and "truncated: 1" in str(e.value)


def test_trailing_bytes_after_the_end_marker_are_fine(tmp_path):
    p = write_jpeg(tmp_path / "trailer.jpg", pattern())
    p.write_bytes(p.read_bytes() + b"\x00" * 100 + b"camera trailer")  # the EOI is no longer at the end
    assert probe_header(p).size == (W, H) and probe_header(p).problem is None
    assert read_image(p).shape == (H, W, 3)


def test_missing_not_an_image_and_directory(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    cases = [("missing.jpg", "image file missing"), ("text.jpg", "image unreadable: not an image file"),
             ("folder.png", "image header unreadable")]
    for name, reason in cases:
        with pytest.raises(DataError) as e:
            read_image(tmp_path / name, image_id=4)
        assert one_line(e).startswith(f"{tmp_path / name}: {reason}") and "(image_id=4)" in str(e.value)
        assert probe_header(tmp_path / name).reason.startswith(reason)


def test_header_check_counts_every_problem_and_names_the_first(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg", pattern())
    (tmp_path / "text.png").write_text("x")
    recs = [Rec(1, good, W, H), Rec(2, tmp_path / "gone.jpg", W, H), Rec(3, tmp_path / "text.png", W, H),
            Rec(4, good, 10, 10), Rec(5, tmp_path / "gone2.jpg", W, H)]
    for workers in (1, 3):
        with pytest.raises(DataError) as e:
            check_image_headers(recs, source="train.json", workers=workers)
        assert one_line(e) == (f"{tmp_path / 'gone.jpg'}: image file missing (image_id=2; 4 of 5 images of train.json "
                               f"have problems, missing: 2, unreadable: 1, size differs: 1)")
    report = check_image_headers(recs[:1] * 50, workers=4)
    assert report["images"] == 50 and report["oriented"] == 0 and report["seconds"] >= 0


# ------------------------------------------------------------------------------------ pixel formats
def test_grey_rgba_palette_and_16bit_become_rgb_uint8(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, 2))

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert (read_image(tmp_path / "rgba.png") == [10, 20, 30]).all()  # alpha dropped, as OpenCV IMREAD_COLOR does

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([200, 0, 0, 0, 0, 250] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png")[:, :, 0], [[200, 0], [0, 200]])
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png")[:, :, 2], [[0, 250], [250, 0]])

    Image.fromarray(np.array([[0, 255, 40000, 65535]], np.uint16)).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 156, 255])  # / 256, as OpenCV reads 16-bit
    np.testing.assert_array_equal(out[0, :, 0], cv2.imread(str(tmp_path / "deep.png"))[0, :, 0])

    Image.fromarray(np.array([[0, 1]], bool)).save(tmp_path / "bw.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bw.png")[0, :, 1], [0, 255])


def test_reader_returns_a_new_writable_array(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", pattern(), 6)
    a = read_image(p)
    a[0, 0] = 0  # no "read-only" error
    assert a.flags.c_contiguous and a.flags.writeable


# ------------------------------------------------------------------------------------ case11
def _case11() -> Path:
    if not CASE11.is_dir():
        pytest.skip("tests/data/bad_inputs/case11 missing")
    return CASE11


def test_case11_warning_states_the_choice_and_the_setting(tmp_path, caplog):
    case = _case11()
    with caplog.at_level(logging.WARNING, logger="alseg.data.images"):
        d = CocoDataset.from_file(case / "train.json", case / "images")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0]
    assert "12 of 12 images carry an EXIF orientation tag that leaves their size unchanged" in msg
    assert "dataset.exif_orientation=apply" in msg and "set dataset.exif_orientation=ignore" in msg
    assert "EXIF orientation 3, rotated 180 degrees" in msg
    assert d.exif_orientation == "apply" and d.image_check["unconfirmed"] == 12
    assert all(r.exif_orientation == "apply" for r in d.images)


def test_case11_ignore_reads_the_stored_frame_of_the_masks(tmp_path, caplog):
    case = _case11()
    with caplog.at_level(logging.WARNING, logger="alseg.data.images"):
        d = CocoDataset.from_file(case / "train.json", case / "images", exif_orientation="ignore")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    from alseg.data.torch_dataset import read_image as read_record

    for rec in d.images:
        img = read_record(rec)
        cv_ignore = cv2.imread(str(rec.path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        np.testing.assert_array_equal(img, cv2.cvtColor(cv_ignore, cv2.COLOR_BGR2RGB))
        # The PNG next to each JPEG is the picture the masks were drawn on: ignore matches it, apply does not.
        drawn = np.asarray(Image.open(rec.path.with_suffix(".png")).convert("RGB")).astype(int)
        assert np.abs(img - drawn).mean() < 8
        assert np.abs(read_image(rec.path, "apply") - drawn).mean() > 12


def test_case11_error_policy(tmp_path):
    case = _case11()
    with pytest.raises(DataError) as e:
        CocoDataset.from_file(case / "val.json", case / "images", exif_orientation="error")
    msg = one_line(e)
    assert msg.startswith(f"{case / 'images' / 'val_0.jpg'}: carries EXIF orientation 3 (rotated 180 degrees)")
    assert "4 of 4 images" in msg and "EXIF orientation refused: 4" in msg


# ------------------------------------------------------------------------------------ one frame everywhere
def rotated_dataset(tmp_path, orientation=6, policy="apply", n=2) -> tuple[dict, Path]:
    """n JPEGs stored 48x32 whose displayed image (32 wide, 48 high) is dark with a bright 12x20
    rectangle at x 6..18, y 20..40; the annotation (in the displayed frame) is that rectangle."""
    image_dir = tmp_path / "imgs"
    image_dir.mkdir(exist_ok=True)
    shown = np.full((W, H, 3), 20, np.uint8)
    shown[20:40, 6:18] = 235
    images, anns = [], []
    for i in range(1, n + 1):
        write_jpeg(image_dir / f"{i}.jpg", STORE[orientation](shown), orientation)
        images.append({"id": i, "file_name": f"{i}.jpg", "width": H, "height": W})
        anns.append({"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": 240.0,
                     "bbox": [6, 20, 12, 20], "segmentation": [[6, 20, 18, 20, 18, 40, 6, 40]]})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}, image_dir


def assert_aligned(image: np.ndarray, mask: np.ndarray):
    mask = mask.astype(bool)
    assert image.shape[:2] == mask.shape
    assert image[mask].mean() > 200 and image[~mask].mean() < 60


def test_training_and_inference_samples_share_the_frame_of_the_masks(tmp_path):
    from alseg.data.torch_dataset import ImageSet, ImageView, build_sample

    data, image_dir = rotated_dataset(tmp_path)
    d = CocoDataset(data, image_dir)
    rec = d.by_id[1]
    s = build_sample(rec, ImageView(full_image=True, box_ann_ids={11}, mask_ann_ids={11}))
    assert s["image"].shape == (W, H, 3)
    assert_aligned(s["image"], s["masks"][0])
    tensor, image_id = ImageSet(d)[0]
    assert image_id == 1 and tuple(tensor.shape) == (3, W, H)


def _capture_draws(monkeypatch):
    import alseg.tools.visualize as vis

    calls = []
    real = vis.draw_instances

    def spy(image, masks, labels, *a, **k):
        calls.append((np.array(image), None if masks is None else np.array(masks), list(labels)))
        return real(image, masks, labels, *a, **k)

    monkeypatch.setattr(vis, "draw_instances", spy)
    return calls


def test_tfdp_example_plots_use_the_shared_reader(tmp_path, monkeypatch):
    from alseg.tfdp import score_dataset
    from alseg.tfdp.plots import plot_kept_vs_pruned

    data, image_dir = rotated_dataset(tmp_path)
    result = score_dataset(data, variant="si_cb_scs", workers=1)
    calls = _capture_draws(monkeypatch)
    out = plot_kept_vs_pruned(result, data, image_dir, [1], tmp_path / "ex.png", n=1)
    assert out.is_file() and len(calls) == 2
    for image, masks, labels in calls:
        assert labels == [1]
        assert_aligned(image, masks[0])
    # The stored frame, when asked: the annotation (displayed frame) no longer fits, said in one line.
    with pytest.raises(DataError) as e:
        plot_kept_vs_pruned(result, data, image_dir, [1], tmp_path / "ex2.png", n=1, exif_orientation="ignore")
    assert "EXIF orientation 6" in one_line(e) and "set dataset.exif_orientation=apply" in str(e.value)
    assert not (tmp_path / "ex2.png").exists()


def test_visualize_draws_images_in_the_frame_of_their_masks(tmp_path, monkeypatch):
    import alseg.predictions as predictions
    import alseg.tools.visualize as vis
    from alseg.data.build import DataSplits

    data, image_dir = rotated_dataset(tmp_path)
    ds = CocoDataset(data, image_dir)
    monkeypatch.setattr(vis, "load_run", lambda run_dir, round_index, device: ({}, DataSplits("t", ds, ds), None, 1))

    def no_predictions(model, ds, image_ids, **kw):
        for i in image_ids:
            r = ds.by_id[i]
            yield i, np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, r.height, r.width), bool)

    monkeypatch.setattr(predictions, "predict", no_predictions)
    calls = _capture_draws(monkeypatch)
    out = vis.visualize_run(tmp_path, num_images=2, out=tmp_path / "grid.png")
    assert out.is_file()
    # Per image: the ground-truth panel, then the prediction panel (no predictions: the object drawn as missed).
    assert len(calls) == 4 and all(labels == [1] for _, _, labels in calls)
    for image, masks, _ in calls:
        assert_aligned(image, masks[0])  # enlarged for display, still one frame


def test_dataset_builders_thread_the_policy(tmp_path):
    from alseg.data.build import coco

    data, image_dir = rotated_dataset(tmp_path, orientation=6)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    splits = coco(str(ann), str(image_dir), str(ann), str(image_dir))
    assert splits.train.exif_orientation == splits.val.exif_orientation == "apply"
    with pytest.raises(DataError, match="EXIF orientation 6.*=error refuses"):
        coco(str(ann), str(image_dir), str(ann), str(image_dir), exif_orientation="error")
    with pytest.raises(DataError, match="set dataset.exif_orientation=apply"):
        coco(str(ann), str(image_dir), str(ann), str(image_dir), exif_orientation="ignore")
    # Stored-frame annotations with `ignore`: accepted, and every record reads the stored frame.
    for im in data["images"]:
        im["width"], im["height"] = W, H
    ann.write_text(json.dumps(data))
    splits = coco(str(ann), str(image_dir), str(ann), str(image_dir), exif_orientation="ignore")
    assert {r.exif_orientation for r in splits.train.images} == {"ignore"}
    from alseg.data.torch_dataset import read_image as read_record

    assert read_record(splits.train.images[0]).shape == (H, W, 3)


def test_voc_mask_png_damaged_anywhere_is_one_line(tmp_path):
    """VOC's instance / class PNGs are palette indices (annotations, not pictures): read apart from
    read_image, but fully decoded: a truncated or damaged one is a one-line DataError."""
    import io

    from alseg.data.voc import _read_png

    pal = Image.fromarray(np.random.default_rng(0).integers(0, 20, (60, 80)).astype(np.uint8), "P")
    pal.putpalette(list(range(60)))
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    data = buf.getvalue()
    bad_crc = bytearray(data)
    bad_crc[29] ^= 0xFF  # the IHDR chunk's checksum
    for name, content in [("cut.png", data[: len(data) // 2]), ("crc.png", bytes(bad_crc))]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as e:
            _read_png(tmp_path / name)
        assert one_line(e).startswith(f"{tmp_path / name}: cannot be read")
    (tmp_path / "ok.png").write_bytes(data)
    assert _read_png(tmp_path / "ok.png").shape == (60, 80)


def test_png_exif_orientation_is_seen_by_the_header_check_and_the_reader(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    p = tmp_path / "o8.png"
    Image.fromarray(pattern()).save(p, exif=exif.tobytes())  # PIL writes eXIf before the pixel data
    h = probe_header(p)
    assert h.size == (W, H) and h.orientation == 8
    np.testing.assert_array_equal(read_image(p, expected_hw=(W, H)), DISPLAY[8](pattern()))  # PNG: lossless
    np.testing.assert_array_equal(read_image(p, "ignore", expected_hw=(H, W)), pattern())
    assert check_image_headers([Rec(1, p, H, W)])["oriented"] == 1
