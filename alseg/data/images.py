"""The one image reader of alseg (PIL), and the up-front check of image headers against the sizes of
an annotation file.

Every image alseg shows to a model or draws (training, evaluation, pool inference, strategies,
``tools/visualize.py``, the TFDP example plots) goes through ``read_image``, so pixels and masks are
always in one frame.

EXIF orientation (tag 0x0112; values 2..8 flip and/or rotate the stored pixels for display) is the
``dataset.exif_orientation`` setting:

* ``apply`` (default): the image as displayed, the EXIF orientation applied with PIL's
  ``ImageOps.exif_transpose``. This is the ecosystem's frame: detectron2's ``read_image``,
  torchvision's ``decode_image(apply_exif_orientation=True)``, OpenCV's default ``imread``, and COCO's
  ``width``/``height``, which are those of the displayed image.
* ``ignore``: the stored pixel frame (what OpenCV's ``IMREAD_IGNORE_ORIENTATION`` reads), for
  annotations drawn on the raw pixels.
* ``error``: refuse images carrying an orientation tag other than 1 (a DataError naming the file).

Images are decoded completely: a truncated JPEG or PNG is a DataError naming the file (PIL's
``Image.load`` raises where OpenCV's ``imread`` silently fills the missing rows with grey).
PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False (its default) for that.

Generic helper: imports nothing of alseg but its errors.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alseg.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EXIF_POLICIES = ("apply", "ignore", "error")
SETTING = "dataset.exif_orientation"
ORIENTATION_TAG = 0x0112
# What displaying the stored pixels takes, per EXIF orientation value (1 = as stored).
ORIENTATION_NAMES = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed (mirrored and rotated 90 degrees)",
    6: "rotated 90 degrees clockwise",
    7: "transversed (mirrored and rotated 90 degrees)",
    8: "rotated 90 degrees counter-clockwise",
}
SWAPS_SIDES = frozenset({5, 6, 7, 8})
MISSING = "image file missing"
UNIDENTIFIED = "image unreadable: not an image file PIL can identify; replace or remove it"


def exif_policy(value: str) -> str:
    """``value`` when it is one of ``EXIF_POLICIES``; ConfigError naming the setting otherwise."""
    if value not in EXIF_POLICIES:
        raise ConfigError(f"{SETTING}: must be one of {', '.join(EXIF_POLICIES)}, got {value!r}")
    return value


def _orientation(im: Image.Image, decoded: bool) -> int | None:
    """The EXIF orientation 2..8 of an opened image, None when absent, 1, invalid or unparsable.

    Read as ``ImageOps.exif_transpose`` reads it (``getexif``: the EXIF block, else XMP's
    tiff:Orientation). Undecoded PNGs are read through the base ``getexif``, which uses only the
    metadata before the pixel data: PIL's PNG ``getexif`` decodes every pixel to look for an
    ``eXIf`` chunk after it (rare; ``read_image``, which decodes, still sees such a chunk).
    """
    try:
        if not decoded and im.format == "PNG" and "exif" not in im.info:
            exif = Image.Image.getexif(im)
        else:
            exif = im.getexif()
        value = exif.get(ORIENTATION_TAG)
        value = int(value) if value is not None else None
    except Exception:  # a damaged EXIF block: exif_transpose would not rotate either
        return None
    return value if value in ORIENTATION_NAMES else None


def _displayed(stored_wh: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    return stored_wh[::-1] if orientation in SWAPS_SIDES else stored_wh


def _wxh(wh: tuple[int, int]) -> str:
    return f"{wh[0]}x{wh[1]}"


def _size_problem(stored_wh: tuple[int, int], orientation: int | None, policy: str,
                  expected_wh: tuple[int, int] | None) -> str | None:
    """Why an image of stored size ``stored_wh`` (width, height) does not fit the annotation file's
    ``expected_wh`` under ``policy``; None when it fits. Names the EXIF orientation when a
    90-degree rotation explains the difference."""
    if expected_wh is None:
        return None
    displayed = _displayed(stored_wh, orientation)
    actual = displayed if policy == "apply" else stored_wh
    if actual == tuple(expected_wh):
        return None
    msg = f"image is {_wxh(actual)} but the annotation file says {_wxh(expected_wh)}"
    if orientation in SWAPS_SIDES:
        tag = f"EXIF orientation {orientation} ({ORIENTATION_NAMES[orientation]})"
        if policy == "apply" and stored_wh == tuple(expected_wh):
            return (f"{msg}: the file's {tag} turns its stored {_wxh(stored_wh)} pixels into a "
                    f"{_wxh(displayed)} image, and the annotation file describes the stored pixels; "
                    f"set {SETTING}=ignore to read the stored pixel frame")
        if policy == "ignore" and displayed == tuple(expected_wh):
            return (f"{msg}: the annotation file describes the image as displayed, after the file's "
                    f"{tag} of the stored {_wxh(stored_wh)} pixels; set {SETTING}=apply to read it so")
        other = "stored pixels, before" if policy == "apply" else "displayed image, after"
        return (f"{msg}, and neither does the {other} its {tag}; fix the annotation file's width/height "
                f"or replace the image")
    return f"{msg}; fix the annotation file's width/height or replace the image"


def _orientation_refused(orientation: int) -> str:
    return (f"carries EXIF orientation {orientation} ({ORIENTATION_NAMES[orientation]}) and "
            f"{SETTING}=error refuses such images; set {SETTING}=apply if the annotations are drawn on "
            f"the displayed image (COCO's convention) or =ignore if on the stored pixels")


def _where(image_id) -> str:
    return f" (image_id={image_id})" if image_id is not None else ""


def _header_unreadable(e: Exception) -> str:
    detail = " ".join(str(e).split()) or type(e).__name__
    return f"image header unreadable ({type(e).__name__}: {detail}); replace or remove it"


def _not_decodable(e: Exception) -> str:
    detail = " ".join(str(e).split()) or type(e).__name__
    return f"image cannot be decoded completely ({detail}): the file is truncated or damaged; replace it"


def _to_rgb_uint8(im: Image.Image, path, image_id) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded image: alpha dropped (as OpenCV's IMREAD_COLOR and
    detectron2 do), grey / palette / CMYK converted by PIL, 16-bit grey scaled by 1/256 (as OpenCV
    does; PIL's own conversion would clip everything above 255 to white)."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit grey) and I (32-bit, read as 16-bit)
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535) >> 8
        return np.repeat(a.astype(np.uint8)[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{path}: floating-point image (PIL mode F) is not supported; "
                        f"convert it to 8-bit RGB{_where(image_id)}")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike, exif_orientation: str = "apply",
               expected_hw: tuple[int, int] | None = None, image_id: int | None = None) -> np.ndarray:
    """Decode an image completely into an (H, W, 3) uint8 RGB array (a new, writable array).

    ``exif_orientation``: ``apply`` (the displayed frame, PIL's ``ImageOps.exif_transpose``),
    ``ignore`` (the stored pixel frame) or ``error`` (DataError for an orientation tag 2..8).
    ``expected_hw``: (height, width) from the annotation file, checked in the chosen frame; the
    error says when an EXIF 90-degree rotation explains the difference, and which setting to change.
    Grey, palette, RGBA/LA (alpha dropped), CMYK and 16-bit grey inputs become RGB uint8.

    Raises ConfigError for an unknown policy and a one-line DataError naming ``path`` and ``image_id``
    for a missing file, a file that is not an image, a truncated or damaged one, a refused
    orientation, or a size that differs from ``expected_hw``.
    """
    policy = exif_policy(exif_orientation)
    where = _where(image_id)
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: {MISSING}{where}") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: {UNIDENTIFIED}{where}") from None
    except Exception as e:  # PermissionError, IsADirectoryError, a decompression bomb, a damaged header
        raise DataError(f"{path}: {_header_unreadable(e)}{where}") from None
    with im:
        try:
            im.load()  # every pixel: raises on truncated data where OpenCV pads it with grey
        except Exception as e:  # PIL: OSError 'image file is truncated', SyntaxError 'broken PNG file', ...
            raise DataError(f"{path}: {_not_decodable(e)}{where}") from None
        orientation = _orientation(im, decoded=True)
        if orientation is not None and policy == "error":
            raise DataError(f"{path}: {_orientation_refused(orientation)}{where}")
        if expected_hw is not None:
            problem = _size_problem(im.size, orientation, policy, (expected_hw[1], expected_hw[0]))
            if problem:
                raise DataError(f"{path}: {problem}{where}")
        shown = ImageOps.exif_transpose(im) if orientation is not None and policy == "apply" else im
        return _to_rgb_uint8(shown, path, image_id)


# --------------------------------------------------------------------------------------------------
# header check


class ImageEntry(Protocol):
    """What ``check_image_headers`` needs of an image record (``alseg.data.coco.ImageRecord``)."""

    image_id: int
    path: Path
    width: int
    height: int


# A complete JPEG ends with the EOI marker, a complete PNG with its IEND chunk (some writers pad a
# few bytes after them). Files without one are decoded to tell truncation from harmless trailing data.
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}


def _looks_truncated(im: Image.Image) -> bool:
    marker = _END_MARKERS.get(im.format or "")
    if marker is None or im.fp is None:
        return False
    fp = im.fp
    here = fp.tell()
    try:
        fp.seek(0, os.SEEK_END)
        fp.seek(max(0, fp.tell() - 64))
        tail = fp.read(64)
    finally:
        fp.seek(here)
    return marker not in tail


@dataclass(frozen=True)
class Header:
    """What ``probe_header`` found: the stored ``size`` (width, height) and EXIF ``orientation``
    (2..8 or None), or a ``problem`` kind ("missing", "unreadable", "truncated") and its ``reason``."""

    size: tuple[int, int] | None = None
    orientation: int | None = None
    problem: str | None = None
    reason: str | None = None


def probe_header(path: str | os.PathLike) -> Header:
    """Size and EXIF orientation from the file's header, without decoding pixels, or why the file
    cannot be used. A JPEG or PNG whose last bytes hold no end marker (EOI, IEND) is decoded to find
    out whether it is truncated (the only case where pixels are read)."""
    try:
        with Image.open(path) as im:
            size, orientation = im.size, _orientation(im, decoded=False)
            if _looks_truncated(im):
                try:
                    im.load()
                except Exception as e:
                    return Header(problem="truncated", reason=_not_decodable(e))
            return Header(size, orientation)
    except FileNotFoundError:
        return Header(problem="missing", reason=MISSING)
    except UnidentifiedImageError:
        return Header(problem="unreadable", reason=UNIDENTIFIED)
    except Exception as e:  # PermissionError, IsADirectoryError, a damaged header, a decompression bomb
        return Header(problem="unreadable", reason=_header_unreadable(e))


def _probe_chunk(paths: Sequence) -> list[Header]:
    return [probe_header(p) for p in paths]


def default_workers() -> int:
    # Header reads wait on the disk (or a network file system) far more than on the CPU.
    return min(32, 4 * (os.cpu_count() or 1))


def check_image_headers(records: Iterable[ImageEntry], exif_orientation: str = "apply", source: str = "<memory>",
                        workers: int | None = None) -> dict:
    """Read the header (size and EXIF orientation, no pixels) of every image, with a thread pool.

    Each record needs ``path``, ``image_id``, ``width`` and ``height`` (the annotation file's, i.e.
    the displayed frame with ``apply``, the stored one with ``ignore`` and ``error``).

    Raises DataError (one line) naming the first faulty image in record order and counting every
    fault of the list: missing file, unreadable header, size differing from the annotation file
    (naming the EXIF orientation when a 90-degree rotation explains it), and with ``error`` any
    orientation tag 2..8. With ``apply``, images whose tag leaves the size unchanged (mirrors, 180
    degrees, square images), so that the sizes cannot confirm the frame, are counted in one warning
    that states the choice and the setting.

    Returns {"images": n, "oriented": images with a tag 2..8, "unconfirmed": those whose size cannot
    tell the frame, "workers": threads used, "seconds": wall time}.
    """
    policy = exif_policy(exif_orientation)
    records = list(records)
    t0 = time.perf_counter()
    workers = max(1, int(workers or default_workers()))
    paths = [r.path for r in records]
    chunk = max(1, min(512, len(paths) // (4 * workers) or 1))
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 1 or len(chunks) <= 1:
        results = [res for c in chunks for res in _probe_chunk(c)]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-headers") as pool:
            results = [res for part in pool.map(_probe_chunk, chunks) for res in part]

    kinds: Counter = Counter()
    first: tuple[ImageEntry, str] | None = None
    oriented = unconfirmed = 0
    example = None
    for rec, res in zip(records, results):
        kind, problem = res.problem, res.reason
        if kind is None:
            stored_wh, orientation = res.size, res.orientation
            if orientation is not None:
                oriented += 1
                if policy == "error":
                    kind, problem = "EXIF orientation refused", _orientation_refused(orientation)
            if problem is None:
                problem = _size_problem(stored_wh, orientation, policy, (rec.width, rec.height))
                kind = "size differs" if problem else None
            if problem is None and orientation is not None and _displayed(stored_wh, orientation) == stored_wh:
                unconfirmed += 1
                example = example or (rec.path, orientation)
        if problem is not None:
            kinds[kind] += 1
            first = first or (rec, problem)
    seconds = time.perf_counter() - t0
    if first is not None:
        rec, problem = first
        counts = ", ".join(f"{k}: {v}" for k, v in kinds.items())
        raise DataError(f"{rec.path}: {problem} (image_id={rec.image_id}; {sum(kinds.values())} of {len(records)} "
                        f"images of {source} have problems, {counts})")
    if unconfirmed and policy == "apply":
        log.warning("%s: %d of %d images carry an EXIF orientation tag that leaves their size unchanged "
                    "(e.g. %s: EXIF orientation %d, %s), so the annotation file's sizes cannot tell which frame the annotations "
                    "use; they are read as displayed (EXIF orientation applied, as COCO, detectron2 and "
                    "PIL's exif_transpose do: %s=apply); if the annotations were drawn on the stored pixels, "
                    "set %s=ignore (or =error to refuse such images)", source, unconfirmed, len(records),
                    example[0], example[1], ORIENTATION_NAMES[example[1]], SETTING, SETTING)
    elif oriented:
        log.info("%s: %d of %d images carry an EXIF orientation tag; %s=%s reads them %s", source, oriented,
                 len(records), SETTING, policy, "as displayed" if policy == "apply" else "in the stored pixel frame")
    return {"images": len(records), "oriented": oriented, "unconfirmed": unconfirmed, "workers": workers,
            "seconds": seconds}
