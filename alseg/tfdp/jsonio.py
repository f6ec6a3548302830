"""Fast reading and writing of large COCO JSON files for ``alseg-prune``.

Parsing COCO train2017 (450 MB) with the standard ``json`` module takes ~20 s, most of it in the
cyclic garbage collector, which runs again and again over the millions of lists and dicts being
created. ``read_coco`` parses with msgspec (several times faster) with the collector paused, and
hashes the bytes for the score cache in a thread meanwhile (hashlib releases the GIL).

The result is the same Python object that ``alseg.data.coco.load_json`` (``json.load``) returns:
msgspec keeps integers of any size as ``int`` and floats correctly rounded, as ``json`` does; what
it refuses and ``json`` accepts (NaN / Infinity, out-of-range numbers such as 1e400, lone
surrogates, a byte order mark) goes through ``load_json``, which also gives every error message
(file not found, not valid JSON with line and column, not a JSON object). ``read_coco_lazy`` leaves
the annotations as JSON text for ``alseg.tfdp.scoring.score_raw``. ``dump_json`` writes
compact JSON with msgspec when the data came from msgspec (so no NaN or Infinity that msgspec would
write as null) and with ``json.dumps`` otherwise.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

import msgspec

from alseg.data.coco import load_json
from alseg.errors import DataError

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
# The top-level object with every array left as JSON text, one msgspec.Raw per element.
_lazy_decoder = msgspec.json.Decoder(dict[str, Union[list[msgspec.Raw], dict[str, Any], str, int, float, bool, None]])


@contextlib.contextmanager
def _hashed(raw: bytes, digest: bool) -> Iterator["hashlib._Hash"]:
    """The SHA-1 of ``raw``, computed in a thread while the block parses it (hashlib releases the
    GIL on large buffers); complete when the block ends. Without ``digest`` nothing is hashed."""
    sha1 = hashlib.sha1()
    hasher = threading.Thread(target=sha1.update, args=(raw,), daemon=True) if digest else None
    if hasher is not None:
        hasher.start()
    try:
        yield sha1
    finally:
        if hasher is not None:
            hasher.join()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (state restored after): building millions of
    containers otherwise triggers full collections over all of them again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass
class LoadedJson:
    data: Any  # the parsed document (a dict: anything else is a DataError)
    sha1: str  # hex digest of the file's bytes ("" when not asked for)
    strict: bool  # parsed by msgspec: no NaN / Infinity inside, msgspec can write it back
    size: int  # bytes
    lazy: bool = False  # read_coco_lazy: 'annotations' (and other top-level arrays) kept as msgspec.Raw


def decode_json(text: bytes) -> Any:
    """``json.loads`` of UTF-8 JSON text, by msgspec when it can (see the module doc)."""
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def read_coco(path: str | os.PathLike, digest: bool = True) -> LoadedJson:
    """Read and parse a COCO JSON file (a JSON object), with the sha1 of its bytes.

    Raises DataError (naming the file) when it is missing, unreadable, not valid JSON or not an
    object, with the messages of ``alseg.data.coco.load_json``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError:
        load_json(path)  # the same DataError as the training loader's
        raise DataError(f"{path}: cannot be read") from None
    with _hashed(raw, digest) as sha1:
        with gc_paused():
            try:
                data, strict = _decoder.decode(raw), True
            except (msgspec.DecodeError, RecursionError):  # load_json below gives the message
                data, strict = None, False
        if not strict:
            with gc_paused():
                data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    return LoadedJson(data, sha1.hexdigest() if digest else "", strict, len(raw))


def read_coco_lazy(path: str | os.PathLike, digest: bool = True) -> LoadedJson:
    """``read_coco``, but the annotations stay JSON text: ``data`` is the top-level object with
    'images' and 'categories' parsed (``decode_json``) and every other array, 'annotations'
    included, a list of ``msgspec.Raw`` (one per element, the file's bytes). ``lazy`` is False when
    the file needed ``read_coco`` (the same object, all parsed): msgspec refused it, or its
    top-level value is not an object."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError:
        return read_coco(path, digest)  # its DataError
    with _hashed(raw, digest) as sha1, gc_paused():
        try:
            top = _lazy_decoder.decode(raw)
            for key in ("images", "categories"):
                if isinstance(top.get(key), list):
                    top[key] = decode_json(b"[" + b",".join(top[key]) + b"]")
        except (msgspec.DecodeError, ValueError, RecursionError):
            top = None
    if top is None:
        return read_coco(path, digest)
    return LoadedJson(top, sha1.hexdigest() if digest else "", True, len(raw), lazy=True)


def dump_json(obj: Any, strict: bool) -> bytes:
    """Compact JSON (UTF-8 bytes) of a document read by ``read_coco`` (``strict``: its flag)."""
    if strict:
        try:
            return _encoder.encode(obj)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            pass
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")
