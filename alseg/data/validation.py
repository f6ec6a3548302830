"""Validation of COCO annotation dicts: what makes an annotation unusable, decided in one place.

One pass over every annotation of a file, crowd regions included, before anything is built. Its
users decide what to do with a problem; they never check annotations themselves:

* the training loader (``alseg.data.coco.CocoDataset``, hence every split, the VOC reader and the
  synthetic data) stops with a one-line error or drops and counts the annotation
  (``dataset.invalid_annotations``);
* ``alseg-prune`` (``alseg.tfdp.scoring``) counts the problems by reason and scores the rest; it
  reuses the chunks built here (concatenated polygon coordinates, checked RLEs) for its scoring.

Reason codes (``REASONS`` gives their names). One code per annotation, that of the first check that
fails, in this order: ids and iscrowd, duplicate id, image, category, the segmentation's structure
(types, part lengths, RLE 'size'), bbox, area, then the polygon coordinates (numbers, range,
position, area) or the RLE counts.

==========================  ======================================================================
invalid_annotation          not a JSON object; 'id' / 'image_id' / 'category_id' missing or not an
                            integer; 'iscrowd' not 0 or 1
duplicate_annotation_id     an earlier annotation has the same id (pycocotools keeps one of them,
                            so COCOeval would see the other one twice)
unknown_image               'image_id' names no image of the file
invalid_image_size          its image entry has no positive integer 'width' / 'height' of at most
                            MAX_IMAGE_SIDE (100,000) pixels
unknown_category            'category_id' names no category of the file
invalid_segmentation        missing or of an unsupported type; a polygon part that is not a list
                            of finite numbers or has an odd number of coordinates; coordinates
                            more than 4 x max(height, width) outside the image (pycocotools walks,
                            and allocates, the whole border: ~1e8 exhausts memory); an RLE without
                            'counts' and 'size', or whose counts are neither a list nor a string
degenerate_polygon          an empty polygon list, or no part with 3 points or more
degenerate_part             some parts have fewer than 3 points (pycocotools reads a 4-number part
                            as a box); ``alseg-prune`` drops such parts and scores the rest
zero_area                   every part's points lie on one line: the polygon encloses nothing
empty_mask                  a polygon entirely outside the image, or an RLE without foreground
rle_size_mismatch           the RLE's 'size' differs from its image's [height, width]
invalid_rle                 counts that are not non-negative integers (< 2^32), or (compressed or
                            not) do not add up to height x width: pycocotools would decode garbage
                            past the buffer, or hang in COCOeval
invalid_bbox                'bbox' missing, not 4 finite numbers, or width / height not > 0
invalid_area                'area' present but not a finite number >= 0 (a missing one is fine)
==========================  ======================================================================

No mask is rasterised: polygon checks work on the concatenated coordinates of a chunk of
annotations with numpy (finite, range, collinearity), RLE checks sum the runs. A polygon inside the
image's frame that still covers no pixel centre is therefore not an ``empty_mask`` here (``alseg-prune``
finds those when it rasterises).

File-level problems (the fields not lists, malformed image or category entries, duplicate image or
category ids) are reported by ``index_images`` / ``index_categories``.

Image sizes are bounded: a side (``width`` or ``height``) above ``MAX_IMAGE_SIDE`` = 100,000 pixels
makes the image's size unusable (``invalid_image_size``, like a width of 0), so that no mask
rasterised at an image's size (``alseg-prune`` crops, RLE decoding) can ask for an astronomical
buffer (a 1e9 x 1e9 image would need ~1e18 bytes); 100,000 px is far above any real photograph
or aerial tile used for instance segmentation.

Integers that do not fit a signed 64-bit integer (ids of images, categories and annotations, image
'width' / 'height') are not a problem to count but an error: ``index_images``, ``index_categories``
and ``AnnotationChecker.check`` raise ``DataError`` naming the entry (``images[i]``,
``categories[i]``, ``annotations[i] (id=N)``) and the field; ``check_coco`` adds the file.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Container, Iterator, Literal, Mapping, NamedTuple, Sequence, Union

import msgspec
import numpy as np

from alseg.errors import DataError

OK = 0
DEGENERATE_PART = 1
CROWD = 2  # alseg-prune's status of a valid crowd region (not an instance); never a problem
INVALID_ANNOTATION = 3
UNKNOWN_IMAGE = 4
INVALID_IMAGE_SIZE = 5
UNKNOWN_CATEGORY = 6
INVALID_SEGMENTATION = 7
DEGENERATE_POLYGON = 8
RLE_SIZE_MISMATCH = 9
INVALID_RLE = 10
EMPTY_MASK = 11
ZERO_AREA = 12
DUPLICATE_ANNOTATION_ID = 13
INVALID_BBOX = 14
INVALID_AREA = 15

REASONS = {
    OK: "ok",
    DEGENERATE_PART: "degenerate_part",
    CROWD: "crowd",
    INVALID_ANNOTATION: "invalid_annotation",
    UNKNOWN_IMAGE: "unknown_image",
    INVALID_IMAGE_SIZE: "invalid_image_size",
    UNKNOWN_CATEGORY: "unknown_category",
    INVALID_SEGMENTATION: "invalid_segmentation",
    DEGENERATE_POLYGON: "degenerate_polygon",
    RLE_SIZE_MISMATCH: "rle_size_mismatch",
    INVALID_RLE: "invalid_rle",
    EMPTY_MASK: "empty_mask",
    ZERO_AREA: "zero_area",
    DUPLICATE_ANNOTATION_ID: "duplicate_annotation_id",
    INVALID_BBOX: "invalid_bbox",
    INVALID_AREA: "invalid_area",
}
# Annotations that refer to what the file does not define: the file itself is inconsistent.
REFERENCE_PROBLEMS = (UNKNOWN_IMAGE, INVALID_IMAGE_SIZE, UNKNOWN_CATEGORY)

FAR_MARGIN = 4.0  # polygon coordinates may lie up to FAR_MARGIN * max(height, width) outside the image
ZERO_AREA_EPS = 1e-6  # square pixels: polygon parts enclosing less than this count as collinear points
UINT32_MAX = 2**32
MAX_IMAGE_SIDE = 100_000  # pixels: a larger 'width' or 'height' is invalid_image_size (see the module docstring)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_CHUNK = 4096


def is_int(v: Any) -> bool:
    """An integer id as JSON gives it (bool excluded), or a numpy integer."""
    return type(v) is int or isinstance(v, np.integer)


def fits_int64(v: int) -> bool:
    """An integer that a signed 64-bit integer can hold."""
    return INT64_MIN <= v <= INT64_MAX


def _check_int64(where: str, entry: Mapping, fields: Sequence[str]) -> None:
    """DataError naming ``where`` and the field when one of ``fields`` of ``entry`` is an integer
    that does not fit int64 (it could not be stored in the id and size arrays)."""
    for f in fields:
        v = entry.get(f)
        if is_int(v) and not fits_int64(v):
            raise DataError(f"{where}: '{f}' {v} does not fit a 64-bit integer")


def image_size(img: Mapping) -> tuple[int, int] | None:
    """(height, width) of an image entry, or None when they are not positive integers of at most
    ``MAX_IMAGE_SIDE`` (integral floats such as 480.0 count as integers; bools and strings do not)."""
    try:
        h, w = img["height"], img["width"]
        if isinstance(h, (bool, str)) or isinstance(w, (bool, str)):
            return None
        hi, wi = int(h), int(w)
        if hi != h or wi != w or not (1 <= hi <= MAX_IMAGE_SIDE) or not (1 <= wi <= MAX_IMAGE_SIDE):
            return None
        return hi, wi
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


# --------------------------------------------------------------------------------------------------
# Images and categories


@dataclass
class FileProblem:
    """A malformed image or category entry: ``where`` is e.g. ``images[3]``."""

    where: str
    reason: str  # invalid_image | duplicate_image_id | invalid_image_size | invalid_category | duplicate_category_id
    text: str


@dataclass
class ImageIndex:
    ids: list[int]  # valid image ids in file order (the first entry of a duplicated id)
    sizes: dict[int, tuple[int, int] | None]  # id -> (height, width); None: no usable size
    problems: list[FileProblem] = field(default_factory=list)


def index_images(images: Sequence, require_file_name: bool = False) -> ImageIndex:
    """Image ids and sizes of a COCO 'images' list, with a problem for each malformed entry.

    An entry without an integer id (or, with ``require_file_name``, without a non-empty string
    'file_name') is ``invalid_image``; a repeated id is ``duplicate_image_id`` (the first entry is
    kept); an entry without positive integer width / height (at most ``MAX_IMAGE_SIDE``) is
    indexed with size None and is ``invalid_image_size``. DataError when an id, width or height is
    an integer that does not fit int64.
    """
    ids: list[int] = []
    sizes: dict[int, tuple[int, int] | None] = {}
    first: dict[int, int] = {}
    problems: list[FileProblem] = []
    for i, img in enumerate(images):
        if not isinstance(img, dict):
            problems.append(FileProblem(f"images[{i}]", "invalid_image", f"not a JSON object ({type(img).__name__})"))
            continue
        iid = img.get("id")
        h, w = img.get("height"), img.get("width")
        fast = (type(iid) is int and INT64_MIN <= iid <= INT64_MAX and type(h) is int and type(w) is int
                and 0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE)  # the common entry, checked in one go
        if not fast:
            _check_int64(f"images[{i}]" + (f" (id={iid})" if is_int(iid) and fits_int64(iid) else ""), img,
                         ("id", "width", "height"))
        if not is_int(iid):
            problems.append(FileProblem(f"images[{i}]", "invalid_image", f"'id' must be an integer, got {iid!r}"))
            continue
        iid = int(iid)
        if iid in sizes:
            problems.append(FileProblem(f"images[{i}]", "duplicate_image_id",
                                        f"duplicate image id {iid} (also images[{first[iid]}])"))
            continue
        if require_file_name and not (isinstance(img.get("file_name"), str) and img["file_name"]):
            problems.append(FileProblem(f"images[{i}] (id={iid})", "invalid_image",
                                        f"needs a 'file_name', got {img.get('file_name')!r}"))
        size = (h, w) if fast else image_size(img)
        if size is None:
            problems.append(FileProblem(f"images[{i}] (id={iid})", "invalid_image_size", "'width' and 'height' must "
                                        f"be positive integers of at most {MAX_IMAGE_SIDE}, got "
                                        f"{img.get('width')!r} x {img.get('height')!r}"))
        first[iid] = i
        ids.append(iid)
        sizes[iid] = size
    return ImageIndex(ids, sizes, problems)


def index_categories(categories: Sequence, require_name: bool = False) -> tuple[dict[int, dict], list[FileProblem]]:
    """id -> category entry of a COCO 'categories' list (first entry of a duplicated id), and a
    problem for each entry without an integer id (or, with ``require_name``, a string 'name') and
    each duplicated id. DataError when an id is an integer that does not fit int64."""
    cats: dict[int, dict] = {}
    problems: list[FileProblem] = []
    for i, c in enumerate(categories):
        where = f"categories[{i}]"
        cid = c.get("id") if isinstance(c, dict) else None
        if is_int(cid) and not fits_int64(cid):
            raise DataError(f"{where}: 'id' {cid} does not fit a 64-bit integer")
        if not is_int(cid) or (require_name and not isinstance(c.get("name"), str)):
            problems.append(FileProblem(where, "invalid_category", "needs an integer 'id'"
                                        + (" and a string 'name'" if require_name else "")))
            continue
        if int(cid) in cats:
            problems.append(FileProblem(where, "duplicate_category_id", f"duplicate category id {cid}"))
            continue
        cats[int(cid)] = c
    return cats, problems


# --------------------------------------------------------------------------------------------------
# Compressed RLE strings


def _rle_string_runs_py(counts: bytes) -> np.ndarray | None:
    """Reference decoder of a compressed COCO RLE string, as pycocotools' rleFrString reads it."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None
            c = counts[p] - 48
            if c < 0 or c > 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0 or x >= UINT32_MAX:
            return None
        runs.append(x)
    return np.asarray(runs, dtype=np.int64)


def rle_string_runs(counts: str | bytes) -> np.ndarray | None:
    """The runs (int64) of a compressed COCO RLE string, or None when it is corrupt: a character
    outside '0'..'o', an unterminated last run, or a run that is negative or >= 2^32 (pycocotools
    would write past its buffer). Vectorised; values longer than 7 characters (only possible with
    redundant continuation characters) go through the reference loop."""
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            return None
    b = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b.min() < 0 or b.max() > 63:
        return None
    more = (b & 0x20) != 0
    if more[-1]:
        return None
    ends = np.flatnonzero(~more)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 7:
        return _rle_string_runs_py(counts)
    k = np.arange(b.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    neg = (b[ends] & 0x10) != 0
    x[neg] |= -1 << (5 * lengths[neg])
    # rleFrString: run m is its value plus run m - 2, for m > 2 (two interleaved cumulative sums).
    runs = x
    runs[1::2] = np.cumsum(x[1::2])
    runs[2::2] = np.cumsum(x[2::2])
    if runs.min() < 0 or runs.max() >= UINT32_MAX:
        return None
    return runs


def rle_string_total(counts: str | bytes) -> int | None:
    """Sum of the runs of a compressed COCO RLE string (the pixels it covers), None when corrupt."""
    runs = rle_string_runs(counts)
    return None if runs is None else int(runs.sum())


# --------------------------------------------------------------------------------------------------
# Annotations, chunk by chunk


@dataclass
class CheckedChunk:
    """Annotations ``start .. start + len(status) - 1`` after validation.

    Geometry (only with ``geometry=True``) of the annotations left valid (status OK or
    DEGENERATE_PART), crowd ones only with ``crowd_geometry=True``: polygon parts with 3 points or
    more, concatenated; RLEs with their (checked) dict.
    """

    start: int
    status: np.ndarray  # int8 (m,), see REASONS
    ann_id: np.ndarray  # int64 (m,), -1 where missing
    image_id: np.ndarray  # int64 (m,), -1 where missing
    category_id: np.ndarray  # int64 (m,), -1 where missing
    crowd: np.ndarray  # bool (m,): iscrowd set
    poly_local: np.ndarray  # int32 (n_poly,): chunk-local index of each polygon annotation
    coords: np.ndarray  # float64: x0 y0 x1 y1 ... of every part, concatenated
    part_ptr: np.ndarray  # int64 (n_parts + 1,): offsets of the parts in coords (in values)
    inst_ptr: np.ndarray  # int64 (n_poly + 1,): offsets of each annotation's parts in part_ptr
    hw: np.ndarray  # int64 (n_poly, 2): image height and width of each polygon annotation
    rles: list  # (chunk-local index, RLE dict, height, width)
    texts: dict[int, str] | None = None  # chunk-local index -> why, when asked for


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of arange(lo[i], hi[i]) over i (int64)."""
    n = hi - lo
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n)
    return offsets + np.arange(total)


def _take_instances(coords, part_ptr, inst_ptr, keep):
    """The polygon arrays restricted to the instances where ``keep`` is True."""
    sel = np.flatnonzero(keep)
    parts = _ranges(inst_ptr[sel], inst_ptr[sel + 1])
    plen = part_ptr[parts + 1] - part_ptr[parts]
    values = _ranges(part_ptr[parts], part_ptr[parts + 1])
    new_part_ptr = np.concatenate([[0], np.cumsum(plen)]).astype(np.int64)
    n_parts = inst_ptr[sel + 1] - inst_ptr[sel]
    new_inst_ptr = np.concatenate([[0], np.cumsum(n_parts)]).astype(np.int64)
    return coords[values], new_part_ptr, new_inst_ptr


_PLACEHOLDER_BOX = [0.0, 0.0, 1.0, 1.0]
_ZERO, _ONE = 0, 1


def _polygon_text(seg: list) -> str:
    """Why a polygon list is a problem (its first fault, in the order the pass checks them)."""
    if not seg:
        return "empty polygon list"
    first_short = None
    for j, part in enumerate(seg):
        if type(part) is not list:
            return f"polygon part {j} is not a list of coordinates ({type(part).__name__})"
        if len(part) % 2:
            return f"polygon part {j} has an odd number of coordinates ({len(part)})"
        if len(part) < 6 and first_short is None:
            first_short = j
    if all(len(part) < 6 for part in seg):
        return "degenerate polygon: no part with 3 points or more"
    return f"degenerate polygon: part {first_short} has fewer than 3 points"


def _bbox_ok(bbox: Any) -> bool:
    if type(bbox) is not list and type(bbox) is not tuple or len(bbox) != 4:
        return False
    try:
        x, y, w, h = bbox
        return w > 0 and h > 0 and math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)
    except (TypeError, OverflowError):
        return False


# What a polygon coordinate may be as json parses it: a number, or null (NaN: "not finite" below).
# Not bool (a subclass of int) nor a string, which numpy would read as 1.0 or 5.0.
_COORDINATE_TYPES = {int, float, type(None)}


def _add_polygon(seg: list, coords: list, part_ptr: list) -> int:
    """Append the parts of a polygon list with 3 points or more to ``coords`` / ``part_ptr``;
    returns OK, DEGENERATE_PART (a shorter part dropped), DEGENERATE_POLYGON (no part kept) or
    INVALID_SEGMENTATION (a part that is not a list, or has an odd length: nothing appended)."""
    mark_c, mark_p = len(coords), len(part_ptr)
    dropped = False
    for part in seg:
        if type(part) is not list:
            break
        n = len(part)
        if n % 2:
            break
        if n < 6:
            dropped = True
            continue
        coords.extend(part)
        part_ptr.append(len(coords))
    else:
        if len(part_ptr) == mark_p:
            return DEGENERATE_POLYGON
        return DEGENERATE_PART if dropped else OK
    del coords[mark_c:]
    del part_ptr[mark_p:]
    return INVALID_SEGMENTATION


def _rle_header(counts: Any, rsize: Any, size: tuple[int, int]) -> tuple[int, str | None]:
    """(status, why) of an RLE's 'counts' presence and 'size' against the image's (height, width);
    its counts are checked later (``AnnotationChecker._check_rles``)."""
    h, w = size
    if counts is None or type(rsize) not in (list, tuple) or len(rsize) != 2:
        return INVALID_SEGMENTATION, "RLE without 'counts' and 'size'"
    if not (is_int(rsize[0]) and is_int(rsize[1])):
        return INVALID_SEGMENTATION, f"RLE 'size' must be two integers, got {rsize!r}"
    if rsize[0] != h or rsize[1] != w:
        return RLE_SIZE_MISMATCH, f"RLE size {list(rsize)} differs from image size [{h}, {w}]"
    return OK, None


class _TypedRle(msgspec.Struct, gc=False):
    counts: Any
    size: Any


class TypedAnnotation(msgspec.Struct, gc=False):
    """An annotation as ``TYPED_ANNOTATIONS`` decodes it: integer ids, iscrowd 0 or 1 (default 0),
    a polygon list (lists of numbers, as float) or an RLE object, a bbox list of numbers and an
    optional numeric area; other keys are ignored. A JSON array any of whose annotations does not
    fit fails to decode as a whole (``msgspec.ValidationError``): decode it untyped then, and
    ``AnnotationChecker`` says what is wrong."""

    id: int
    image_id: int
    category_id: int
    segmentation: Union[list[list[float]], _TypedRle]
    bbox: list[float]
    area: Union[float, None] = None
    iscrowd: Literal[0, 1] = 0


TYPED_ANNOTATIONS = msgspec.json.Decoder(list[TypedAnnotation])


def _area_ok(area: Any) -> bool:
    if area is None:
        return True
    try:
        return type(area) in (int, float) and math.isfinite(area) and area >= 0
    except OverflowError:
        return False


class _Geometry(NamedTuple):
    """The lists the per-annotation pass fills for the geometry checks: polygon coordinates (as
    given), part and instance offsets, the chunk-local index and image (height, width) of each
    polygon annotation, and the RLE items (chunk-local index, RLE dict, height, width)."""

    coords: list
    part_ptr: list
    inst_ptr: list
    poly_k: list
    poly_hw: list
    rle_items: list

    @classmethod
    def empty(cls) -> "_Geometry":
        return cls([], [0], [0], [], [], [])

    def add_polygon(self, k: int, seg: list, size: tuple[int, int]) -> int:
        """Annotation ``k``'s polygon list (``_add_polygon``); kept with its image size unless it
        is DEGENERATE_POLYGON or INVALID_SEGMENTATION. Returns its status."""
        code = _add_polygon(seg, self.coords, self.part_ptr)
        if code == OK or code == DEGENERATE_PART:
            self.poly_k.append(k)
            self.inst_ptr.append(len(self.part_ptr) - 1)
            self.poly_hw.append(size)
        return code


class AnnotationChecker:
    """Checks annotations chunk by chunk against a file's images and categories.

    ``sizes``: image id -> (height, width), None for an image without a usable size (an
    ``ImageIndex.sizes``); ``category_ids``: the file's category ids (None: any). Remembers the
    annotation ids it has seen, so chunks must be checked in order, each once. ``index_offset``: the
    position of ``annotations[0]`` in the file's list, for the index an error names (a worker
    checks a slice of the file).
    """

    def __init__(self, sizes: Mapping[int, tuple[int, int] | None], category_ids: Container[int] | None,
                 index_offset: int = 0):
        self.sizes = sizes
        self.category_ids = category_ids
        self.index_offset = index_offset
        self.seen: dict[int, int] = {}

    def check(self, annotations: Sequence, start: int, stop: int, geometry: bool = False,
              crowd_geometry: bool = True, texts: bool = False) -> CheckedChunk:
        """Validate ``annotations[start:stop]``: dicts as parsed from JSON, or ``TypedAnnotation``
        (a list decoded by ``TYPED_ANNOTATIONS``, which did the type checks: the same statuses,
        faster). ``texts``: also say why for each problem (slower; used to describe a problem found
        by the pass over a whole file, not for the pass itself). DataError naming the annotation and
        the field when an 'id', 'image_id' or 'category_id' is an integer that does not fit int64."""
        chunk = annotations[start:stop]
        why: dict[int, str] | None = {} if texts else None
        scan_typed = not texts and all(type(a) is TypedAnnotation for a in chunk)
        if scan_typed:
            scan = self._scan_typed(chunk, start)
        else:
            scan = self._scan(chunk, start, why)
        st, aid_l, iid_l, cid_l, crowd_l, (coords, part_ptr, inst_ptr, poly_k, poly_hw, rle_items), boxes, areas = scan
        status = np.asarray(st, dtype=np.int8)
        crowd_arr = np.asarray(crowd_l, dtype=bool)
        self._check_boxes(boxes, areas, status, why)
        hw = np.asarray(poly_hw, dtype=np.int64).reshape(-1, 2)
        coords_arr, part_arr, inst_arr = self._check_polygons(coords, part_ptr, inst_ptr, poly_k, hw, status, why,
                                                              typed=scan_typed)
        del coords
        rles = self._check_rles(rle_items, status, why)

        poly_local = np.asarray(poly_k, dtype=np.int32)
        if geometry:
            keep = np.isin(status[poly_local], (OK, DEGENERATE_PART))
            if not crowd_geometry:
                keep &= ~crowd_arr[poly_local]
                rles = [r for r in rles if not crowd_l[r[0]]]
            if not keep.all():
                coords_arr, part_arr, inst_arr = _take_instances(coords_arr, part_arr, inst_arr, keep)
                poly_local, hw = poly_local[keep], hw[keep]
        else:
            coords_arr = np.zeros(0, np.float64)
            part_arr, inst_arr = np.zeros(1, np.int64), np.zeros(1, np.int64)
            poly_local, hw, rles = poly_local[:0], hw[:0], []
        try:
            ids = [np.asarray(v, dtype=np.int64) for v in (aid_l, iid_l, cid_l)]
        except OverflowError:
            self._raise_int64(aid_l, iid_l, cid_l, start)
        return CheckedChunk(start, status, *ids, crowd_arr, poly_local, coords_arr, part_arr, inst_arr, hw, rles, why)

    def _raise_int64(self, aid_l: list, iid_l: list, cid_l: list, start: int) -> None:
        """DataError for the first annotation of the chunk with an id that does not fit int64."""
        for k, vals in enumerate(zip(aid_l, iid_l, cid_l)):
            for name, v in zip(("id", "image_id", "category_id"), vals):
                if not fits_int64(v):
                    aid = vals[0]
                    where = f"annotations[{self.index_offset + start + k}]" + (f" (id={aid})" if fits_int64(aid) else "")
                    raise DataError(f"{where}: '{name}' {v} does not fit a 64-bit integer")
        raise DataError(f"annotations[{self.index_offset + start}..]: an id does not fit a 64-bit integer")

    def _scan(self, chunk: Sequence, start: int, why: dict[int, str] | None) -> tuple:
        """The per-annotation checks of dicts as parsed from JSON (any types): status list, ids,
        crowd flags, polygon coordinates and offsets, RLE items, bboxes and areas (``check``)."""
        m = len(chunk)
        st = [OK] * m
        aid_l = [-1] * m
        iid_l = [-1] * m
        cid_l = [-1] * m
        crowd_l = [False] * m
        geo = _Geometry.empty()
        rle_items = geo.rle_items
        # bbox and area of every annotation, checked with numpy after the loop (placeholders for
        # annotations that failed an earlier check, whose status is already set).
        boxes: list = []
        areas: list = []
        sizes, cats, seen = self.sizes, self.category_ids, self.seen
        placeholder = _PLACEHOLDER_BOX
        for k in range(m):
            ann = chunk[k]
            if type(ann) is not dict:
                st[k] = INVALID_ANNOTATION
                boxes.append(placeholder)
                areas.append(0.0)
                if why is not None:
                    why[k] = f"not a JSON object ({type(ann).__name__})"
                continue
            boxes.append(ann.get("bbox"))
            areas.append(ann.get("area"))
            aid = ann.get("id")
            iid = ann.get("image_id")
            cid = ann.get("category_id")
            if not (type(aid) is int and type(iid) is int and type(cid) is int) and not (
                is_int(aid) and is_int(iid) and is_int(cid)
            ):
                st[k] = INVALID_ANNOTATION
                if why is not None:
                    why[k] = ("'id', 'image_id' and 'category_id' must be integers, got "
                              f"{aid!r}, {iid!r}, {cid!r}")
                continue
            aid_l[k] = aid
            iid_l[k] = iid
            cid_l[k] = cid
            crowd = ann.get("iscrowd")
            if crowd is not _ZERO and crowd is not None:  # identity first: JSON's 0 is the cached small int
                if crowd is _ONE or crowd is True or (type(crowd) is int and crowd == 1):
                    crowd_l[k] = True
                elif not ((type(crowd) is int and crowd == 0) or crowd is False):
                    st[k] = INVALID_ANNOTATION
                    if why is not None:
                        why[k] = f"'iscrowd' must be 0 or 1, got {crowd!r}"
                    continue
            if aid in seen:
                st[k] = DUPLICATE_ANNOTATION_ID
                if why is not None:
                    why[k] = f"duplicate annotation id {aid} (also annotations[{seen[aid]}])"
                continue
            seen[aid] = start + k
            size = sizes.get(iid)
            if size is None:
                if iid in sizes:
                    st[k] = INVALID_IMAGE_SIZE
                    if why is not None:
                        why[k] = f"image {iid} has no positive integer width and height"
                else:
                    st[k] = UNKNOWN_IMAGE
                    if why is not None:
                        why[k] = f"unknown image_id {iid}"
                continue
            if cats is not None and cid not in cats:
                st[k] = UNKNOWN_CATEGORY
                if why is not None:
                    why[k] = f"unknown category_id {cid}"
                continue
            seg = ann.get("segmentation")
            if type(seg) is list:
                code = geo.add_polygon(k, seg, size)
                if code != OK:
                    st[k] = code
                    if why is not None:
                        why[k] = _polygon_text(seg)
                continue
            if type(seg) is dict:
                counts = seg.get("counts")
                code, text = _rle_header(counts, seg.get("size"), size)
                if code == OK:
                    rle_items.append((k, seg, size[0], size[1]))
                    continue
            else:
                code = INVALID_SEGMENTATION
                text = "no segmentation" if seg is None else f"segmentation of unsupported type {type(seg).__name__}"
            st[k] = code
            if why is not None:
                why[k] = text
        return st, aid_l, iid_l, cid_l, crowd_l, geo, boxes, areas

    def _scan_typed(self, chunk: Sequence, start: int) -> tuple:
        """``_scan`` of annotations whose types the decoder checked (``TypedAnnotation``): every id
        is an int and iscrowd 0 or 1, so only the checks against the file and the seen ids remain."""
        m = len(chunk)
        st = [OK] * m
        aid_l = [a.id for a in chunk]
        iid_l = [a.image_id for a in chunk]
        cid_l = [a.category_id for a in chunk]
        crowd_l = [a.iscrowd == 1 for a in chunk]
        boxes = [a.bbox for a in chunk]
        areas = [a.area for a in chunk]
        geo = _Geometry.empty()
        rle_items = geo.rle_items
        sizes, cats, seen = self.sizes, self.category_ids, self.seen
        for k in range(m):
            aid = aid_l[k]
            if aid in seen:
                st[k] = DUPLICATE_ANNOTATION_ID
                continue
            seen[aid] = start + k
            iid = iid_l[k]
            size = sizes.get(iid)
            if size is None:
                st[k] = INVALID_IMAGE_SIZE if iid in sizes else UNKNOWN_IMAGE
                continue
            if cats is not None and cid_l[k] not in cats:
                st[k] = UNKNOWN_CATEGORY
                continue
            seg = chunk[k].segmentation
            if type(seg) is list:
                code = geo.add_polygon(k, seg, size)
            else:
                code, _ = _rle_header(seg.counts, seg.size, size)
                if code == OK:
                    rle_items.append((k, {"counts": seg.counts, "size": seg.size}, size[0], size[1]))
            if code != OK:
                st[k] = code
        return st, aid_l, iid_l, cid_l, crowd_l, geo, boxes, areas

    @staticmethod
    def _check_boxes(boxes, areas, status, why):
        """'bbox' and 'area' of the annotations still valid (status OK or DEGENERATE_PART)."""
        try:
            b = np.asarray(boxes)
            box_fast = b.ndim == 2 and b.shape[1] == 4 and b.dtype.kind in "fiu"
        except (ValueError, TypeError, OverflowError):
            box_fast = False
        if box_fast:
            b = b.astype(np.float64, copy=False)
            with np.errstate(invalid="ignore"):
                good_box = np.isfinite(b).all(1) & (b[:, 2] > 0) & (b[:, 3] > 0)
        else:
            good_box = np.fromiter(map(_bbox_ok, boxes), dtype=bool, count=len(boxes))
        try:
            a = np.asarray(areas)
            area_fast = a.ndim == 1 and a.dtype.kind in "fiu"
        except (ValueError, TypeError, OverflowError):
            area_fast = False
        if area_fast:
            a = a.astype(np.float64, copy=False)
            with np.errstate(invalid="ignore"):
                good_area = np.isfinite(a) & (a >= 0)
        else:
            good_area = np.fromiter(map(_area_ok, areas), dtype=bool, count=len(areas))
        bad = ~(good_box & good_area) & ((status == OK) | (status == DEGENERATE_PART))
        for k in np.flatnonzero(bad).tolist():
            if not good_box[k]:
                status[k] = INVALID_BBOX
                if why is not None:
                    why[k] = (f"invalid bbox {boxes[k]!r} (needs [x, y, width, height]: finite numbers, "
                              "width and height > 0)")
            else:
                status[k] = INVALID_AREA
                if why is not None:
                    why[k] = f"invalid area {areas[k]!r} (needs a finite number >= 0)"

    @staticmethod
    def _check_polygons(coords, part_ptr, inst_ptr, poly_k, hw, status, why, typed=False):
        """Numbers, finiteness, range, position and area of the polygon annotations of a chunk
        (status updated in place); returns the coordinate (float64) and offset (int64) arrays.
        ``typed``: the coordinates were decoded as floats (``TypedAnnotation``); else each one's
        type is checked (numpy would read the string "5" or true as a number)."""
        part_arr = np.asarray(part_ptr, dtype=np.int64)
        inst_arr = np.asarray(inst_ptr, dtype=np.int64)
        if not poly_k:
            return np.zeros(0, np.float64), part_arr, inst_arr
        try:
            if not typed and not set(map(type, coords)) <= _COORDINATE_TYPES:
                raise TypeError("a coordinate that is not a JSON number")
            arr = np.fromiter(coords, dtype=np.float64, count=len(coords))
        except (ValueError, TypeError, OverflowError):
            # Some coordinate is not a number (a word, a boolean, a nested list...): find which
            # annotations, zero their coordinates and mark them.
            arr = np.zeros(len(coords), dtype=np.float64)
            for j, k in enumerate(poly_k):
                a, b = part_arr[inst_arr[j]], part_arr[inst_arr[j + 1]]
                try:
                    if not set(map(type, coords[a:b])) <= _COORDINATE_TYPES:
                        raise TypeError("a coordinate that is not a JSON number")
                    arr[a:b] = np.asarray(coords[a:b], dtype=np.float64)  # None -> NaN: not finite, below
                except (ValueError, TypeError, OverflowError):
                    status[k] = INVALID_SEGMENTATION
                    if why is not None:
                        why[k] = "polygon coordinates are not all numbers"
        xy = arr.reshape(-1, 2)
        vptr = part_arr // 2
        v0 = vptr[inst_arr[:-1]]
        h, w = hw[:, 0].astype(np.float64), hw[:, 1].astype(np.float64)
        fin = np.isfinite(xy)
        if fin.all():
            finite = np.ones(len(poly_k), dtype=bool)
        else:
            fin = fin.all(1)
            finite = np.logical_and.reduceat(fin, v0)
            xy = np.where(fin[:, None], xy, 0.0)
        lo, hi = np.minimum.reduceat(xy, v0), np.maximum.reduceat(xy, v0)
        d = FAR_MARGIN * np.maximum(h, w)
        far = (lo[:, 0] < -d) | (lo[:, 1] < -d) | (hi[:, 0] > w + d) | (hi[:, 1] > h + d)
        outside = (hi[:, 0] <= 0) | (hi[:, 1] <= 0) | (lo[:, 0] >= w) | (lo[:, 1] >= h)
        # Zero area: the shoelace sum of every part ~0 ...
        pv0, pv1 = vptr[:-1], vptr[1:]
        nxt = np.arange(1, len(xy) + 1)
        nxt[pv1 - 1] = pv0
        x, y = xy[:, 0], xy[:, 1]
        with np.errstate(over="ignore", invalid="ignore"):  # +-1e308: inf or nan, not near 0, as it should be
            part_area2 = np.abs(np.add.reduceat(x * y[nxt] - x[nxt] * y, pv0))
        zero = np.add.reduceat(part_area2, inst_arr[:-1]) <= 2 * ZERO_AREA_EPS
        # ... and, to tell collinear points from a figure-eight whose halves cancel, the absolute
        # triangle fan around each part's first point is ~0 too (few candidates: a loop is fine).
        for j in np.flatnonzero(zero & finite & ~far).tolist():
            a, b = pv0[inst_arr[j]:inst_arr[j + 1]], pv1[inst_arr[j]:inst_arr[j + 1]]
            fan = 0.0
            for p, q in zip(a.tolist(), b.tolist()):
                dxy = xy[p:q] - xy[p]
                with np.errstate(over="ignore", invalid="ignore"):
                    fan += float(np.abs(dxy[:-1, 0] * dxy[1:, 1] - dxy[1:, 0] * dxy[:-1, 1]).sum())
            zero[j] = fan <= 2 * ZERO_AREA_EPS

        bad = ~finite | far | outside | zero
        if bad.any():
            for j in np.flatnonzero(bad).tolist():
                k = poly_k[j]
                if status[k] not in (OK, DEGENERATE_PART):
                    continue
                if not finite[j]:
                    code, text = INVALID_SEGMENTATION, "polygon coordinates are not finite"
                elif far[j]:
                    code = INVALID_SEGMENTATION
                    text = (f"polygon coordinates far outside the {int(w[j])}x{int(h[j])} image (x from "
                            f"{lo[j, 0]:.6g} to {hi[j, 0]:.6g}, y from {lo[j, 1]:.6g} to {hi[j, 1]:.6g})")
                elif outside[j]:
                    code, text = EMPTY_MASK, f"polygon entirely outside the {int(w[j])}x{int(h[j])} image"
                else:
                    code, text = ZERO_AREA, "polygon encloses no area (all its points lie on one line)"
                status[k] = code
                if why is not None:
                    why[k] = text
        return arr, part_arr, inst_arr

    @staticmethod
    def _check_rles(rle_items, status, why) -> list:
        """Counts of the RLE annotations of a chunk (status updated in place); returns the valid ones."""
        out = []
        for k, seg, h, w in rle_items:
            if status[k] != OK:
                continue
            counts = seg["counts"]
            code, text = OK, None
            if type(counts) is list:
                try:  # array('q') takes ints only (no floats, strings or nested lists): fast and strict
                    runs = np.frombuffer(array("q", counts), dtype=np.int64) if counts else np.zeros(0, np.int64)
                    if runs.size and (runs.min() < 0 or runs.max() >= UINT32_MAX):
                        runs = None
                except (TypeError, OverflowError):
                    runs = None
                if runs is None:
                    code, text = INVALID_RLE, "uncompressed RLE counts must be integers in [0, 2^32)"
            elif isinstance(counts, (str, bytes)):
                runs = rle_string_runs(counts)
                if runs is None:
                    code, text = INVALID_RLE, "compressed RLE counts string is corrupt"
            else:
                code, text = INVALID_SEGMENTATION, f"RLE counts of unsupported type {type(counts).__name__}"
                runs = None
            if runs is not None:
                total = int(runs.sum())
                if total != h * w:
                    code = INVALID_RLE
                    text = f"RLE counts add up to {total} pixels, not height x width = {h} x {w} = {h * w}"
                elif not runs[1::2].any():
                    code, text = EMPTY_MASK, "RLE without any foreground pixel"
            if code == OK:
                out.append((k, seg, h, w))
            else:
                status[k] = code
                if why is not None:
                    why[k] = text
        return out


def iter_checked_chunks(annotations: Sequence, sizes: Mapping[int, tuple[int, int] | None],
                        category_ids: Container[int] | None, chunk_size: int = DEFAULT_CHUNK,
                        geometry: bool = False, crowd_geometry: bool = True) -> Iterator[CheckedChunk]:
    """``AnnotationChecker.check`` over consecutive chunks of ``annotations`` (lazily)."""
    checker = AnnotationChecker(sizes, category_ids)
    n = len(annotations)
    for start in range(0, n, chunk_size):
        yield checker.check(annotations, start, min(n, start + chunk_size), geometry=geometry,
                            crowd_geometry=crowd_geometry)


# --------------------------------------------------------------------------------------------------
# A whole file


@dataclass
class AnnotationReport:
    """Status of every annotation (see REASONS) and its crowd flag, in input order."""

    status: np.ndarray  # int8 (n,)
    crowd: np.ndarray  # bool (n,)

    @property
    def valid(self) -> np.ndarray:
        """bool (n,): annotations without any problem (DEGENERATE_PART is a problem here)."""
        return self.status == OK

    @property
    def n_problems(self) -> int:
        return int((self.status != OK).sum())

    def counts(self) -> dict[str, int]:
        """reason -> number of annotations with that problem (sorted by reason)."""
        c = np.bincount(self.status.astype(np.int64), minlength=len(REASONS))
        return {REASONS[code]: int(c[code]) for code in sorted(REASONS, key=REASONS.get) if code != OK and c[code]}


def check_annotations(annotations: Sequence, sizes: Mapping[int, tuple[int, int] | None],
                      category_ids: Container[int] | None, chunk_size: int = DEFAULT_CHUNK) -> AnnotationReport:
    """Status of every annotation (one pass, no geometry kept)."""
    n = len(annotations)
    status = np.zeros(n, dtype=np.int8)
    crowd = np.zeros(n, dtype=bool)
    for c in iter_checked_chunks(annotations, sizes, category_ids, chunk_size):
        status[c.start:c.start + len(c.status)] = c.status
        crowd[c.start:c.start + len(c.status)] = c.crowd
    return AnnotationReport(status, crowd)


def describe(annotations: Sequence, index: int, sizes: Mapping[int, tuple[int, int] | None],
             category_ids: Container[int] | None, status: int | None = None) -> str:
    """``annotations[i] (id=N): why`` for the problem of one annotation, found again on its own
    (``status``: its code from the pass over the file; a duplicated id is then looked up among the
    earlier annotations, which a check of the annotation alone cannot see)."""
    ann = annotations[index]
    aid = ann.get("id") if isinstance(ann, dict) else None
    where = f"annotations[{index}]" + (f" (id={aid})" if aid is not None else "")
    if status == DUPLICATE_ANNOTATION_ID:
        earlier = next(j for j in range(index) if isinstance(annotations[j], dict) and annotations[j].get("id") == aid)
        return f"{where}: duplicate annotation id {aid} (also annotations[{earlier}])"
    c = AnnotationChecker(sizes, category_ids).check(annotations, index, index + 1, texts=True)
    return f"{where}: {c.texts.get(0, 'no problem found')}"


@dataclass
class CocoCheck:
    """The validation of a COCO dict: its images, categories and annotations."""

    images: ImageIndex
    categories: dict[int, dict]
    category_problems: list[FileProblem]
    annotations: AnnotationReport

    @property
    def file_problems(self) -> list[FileProblem]:
        return self.images.problems + self.category_problems

    def describe(self, annotations: Sequence, index: int) -> str:
        """``annotations[i] (id=N): why`` for annotation ``index`` of the checked list."""
        return describe(annotations, index, self.images.sizes, self.categories, int(self.annotations.status[index]))


def check_coco(data: Mapping, source: str = "<memory>", require_names: bool = False,
               chunk_size: int = DEFAULT_CHUNK) -> CocoCheck:
    """Validate a COCO dict. Raises DataError (naming ``source``) only when 'images', 'annotations'
    or 'categories' is not a list; every other problem is in the returned CocoCheck.
    ``require_names``: image entries need a 'file_name' and categories a 'name'. DataError (naming
    ``source``) too for an id or image size that does not fit int64."""
    if not isinstance(data, Mapping):
        raise DataError(f"{source}: expected a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing or malformed field '{key}' (expected a list)")
    try:
        images = index_images(data["images"], require_file_name=require_names)
        cats, cat_problems = index_categories(data["categories"], require_name=require_names)
        report = check_annotations(data["annotations"], images.sizes, cats, chunk_size)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None
    return CocoCheck(images, cats, cat_problems, report)
