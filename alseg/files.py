"""Files alseg reads and writes, with one kind of failure each way.

Writes are atomic (a temporary file in the target's folder, fsync, rename over the target), so a
run killed at any moment, a full disk or a read-only folder leaves whole files only, the old
content where the write failed. A failed write raises ``WriteError`` naming the file.

Reads of the files alseg writes itself (the run folder's state, labels, selections, checkpoints)
raise ``DamagedFileError`` naming the file and what is wrong with it; the caller, who knows what
the file is for, adds what to do (``DamagedFileError.advise``). Every message is one line.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from alseg import interrupts
from alseg.errors import AlsegError, DataError, json_value_problem


class WriteError(AlsegError):
    """A file or folder alseg must write cannot be written (permissions, read-only file system,
    disk full, a file where a folder should be)."""


class DamagedFileError(DataError):
    """A file alseg wrote earlier (or a run folder it reads) is missing, truncated or malformed.

    ``path`` is the file, ``problem`` what is wrong with it, ``advice`` what the user can do."""

    def __init__(self, path: str | os.PathLike, problem: str, advice: str = ""):
        self.path, self.problem, self.advice = Path(path), problem, advice
        super().__init__(f"{path}: {problem}" + (f"; {advice}" if advice else ""))

    def advise(self, advice: str) -> "DamagedFileError":
        """The same error with ``advice`` (what to do) appended to the message."""
        return DamagedFileError(self.path, self.problem, advice)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (the first non-empty one), at most ``limit`` characters:
    PyTorch's and pickle's messages run over several lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def printable(value: Any) -> str:
    """A value as one line of printable text, whatever it holds: a newline, a control character
    or a lone surrogate (which a terminal, a UTF-8 file or a figure's font cannot take) is escaped
    as in a Python string literal; a non-string is shown as ``str(value)``."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")


def os_error_reason(e: OSError) -> str:
    """What an OSError says, in words (mkdir -p through a file says "File exists")."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        return "a file is where a folder should be"
    return e.strerror or one_line(e)


def write_error(path: Path, e: OSError) -> WriteError:
    # mkstemp's own name (state.json.abc123.tmp) means nothing to the user: name the target, or the
    # folder that failed when that is what the error names.
    where = Path(e.filename) if e.filename and not str(e.filename).endswith(".tmp") else path
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        return WriteError(f"{where}: cannot write ({os_error_reason(e)}); move it away or choose another path")
    return WriteError(f"{where}: cannot write ({os_error_reason(e)}); "
                      f"check that the folder is writable and the disk has free space")


def missing_as_none(value: Any) -> Any:
    """A record (or value) with every non-finite float (NaN: not computable) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: missing_as_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [missing_as_none(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------- writes
def _umask() -> int:
    """The process's umask. os.umask has no read-only form (setting it to read it races with other
    threads), so Linux's /proc/self/status is read; elsewhere it is set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file(path: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``path``'s folder (open fd, name), with the permissions ``path``
    gets when it replaces the destination: the destination's own mode where it exists, else what
    ``open()`` would give (0o666 less the umask). mkstemp alone makes 0600 files, which other
    users of a shared run folder or dataset cannot read. OSError as mkstemp raises it; a file system
    that refuses chmod keeps its own mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        os.fchmod(fd, mode)
    except OSError:  # a file system without permissions (FAT, some network mounts): its own mode
        pass
    return fd, tmp


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p``; WriteError naming the folder when it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    return path


def write_buffers(f: IO[bytes], buffers: Iterable, batch: int = 1024) -> None:
    """Write ``buffers`` (bytes-like objects of bytes: bytes, memoryview, ``msgspec.Raw``) to the
    binary file ``f`` in order, ``batch`` (at most IOV_MAX, 1024 on Linux and macOS) at a time with
    one ``os.writev`` call each, so the data are never joined into one copy (a 400 MB pruned COCO
    file from ~1.5 million pieces: 0.28 s, against 0.43-0.93 s for joining blocks then writing, in
    a fresh process). Where ``os.writev`` is missing (Windows) each batch is joined and written.
    Raises OSError as the writes do."""
    f.flush()
    writev = getattr(os, "writev", None)
    it = iter(buffers)
    while chunk := list(itertools.islice(it, max(1, batch))):
        if writev is None:
            f.write(b"".join(chunk))
            continue
        done = writev(f.fileno(), chunk)
        if done < sum(map(len, chunk)):  # a short write (a signal, a nearly full disk): the rest
            rest = memoryview(b"".join(chunk))[done:]
            while rest:
                rest = rest[os.write(f.fileno(), rest):]
    f.flush()


class StagedFiles:
    """Outputs written to temporary files next to their destinations, moved into place together
    (``commit``) once every output is made; on failure (``discard``) the temporary files are
    removed and every destination is left as it was. A fault raises ``error`` (an AlsegError class)
    naming the destination."""

    def __init__(self, error: type | None = None) -> None:
        self.error = error or AlsegError
        self.files: list[tuple[Path, Path]] = []  # (temporary file, destination)

    def temp(self, path: Path) -> Path:
        """A new empty temporary file for ``path`` (same folder, same suffix: matplotlib reads the
        format from it)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = temp_file(path, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
            os.close(fd)
        except OSError as e:
            raise self.error(f"{path}: cannot write ({e.strerror or e})") from None
        self.files.append((Path(tmp), path))
        return Path(tmp)

    def write(self, path: Path, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
        """Write a file (text, or bytes with ``binary``) to its temporary file."""
        tmp = self.temp(path)
        try:
            with open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8") as f:
                write(f)
        except OSError as e:
            raise self.error(f"{path}: cannot write ({e.strerror or e})") from None

    def commit(self) -> None:
        for i, (tmp, path) in enumerate(self.files):
            try:
                os.replace(tmp, path)
            except OSError as e:
                self.files = self.files[i:]
                raise self.error(f"{path}: cannot write ({e.strerror or e})") from None
        self.files = []

    def discard(self) -> None:
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)
        self.files = []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by ``data`` at once (parents made as needed). On any failure the old file
    (if any) is left as it was and no temporary file remains; OSError becomes WriteError."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = temp_file(path, prefix=path.name + ".", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with interrupts.deferred():  # Ctrl-C / SIGTERM: the write completes, then the run stops
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = True) -> None:
    """JSON indented by one space, newline-terminated, keys sorted unless ``sort_keys`` is false
    (then in insertion order, which reading back keeps). Floats round-trip exactly."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then ``atomic_write_bytes``: torch.save's own failures on a bad
    folder are RuntimeErrors without the path."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------- reads
def _open_problem(path: Path, e: OSError) -> DamagedFileError:
    if isinstance(e, FileNotFoundError):
        return DamagedFileError(path, "missing")
    return DamagedFileError(path, f"cannot be read ({e.strerror or one_line(e)})")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's bytes; DamagedFileError when it is missing or unreadable."""
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise _open_problem(path, e) from None


def read_json(path: str | os.PathLike, kind: type | None = None) -> Any:
    """A JSON file's value (of type ``kind`` when given); DamagedFileError when it is missing,
    unreadable, truncated, not UTF-8, not JSON, or of another type."""
    path = Path(path)
    data = read_bytes(path)
    if not data.strip():
        raise DamagedFileError(path, "empty file (truncated?)")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DamagedFileError(path, f"not text (byte {e.start} is not UTF-8)") from None
    except json.JSONDecodeError as e:
        raise DamagedFileError(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); truncated or damaged?") from None
    except (RecursionError, ValueError) as e:  # deep nesting, an integer of thousands of digits
        raise DamagedFileError(path, json_value_problem(e)) from None
    if kind is not None and not isinstance(value, kind):
        raise DamagedFileError(path, f"expected a JSON {_json_name(kind)}, found a {_json_name(type(value))}")
    return value


def _json_name(t: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(t, t.__name__)


def read_jsonl(path: str | os.PathLike, check=None) -> list[dict]:
    """The objects of a JSON-lines file, one a line (blank lines skipped). DamagedFileError naming
    the line when one is not a JSON object, when ``check(obj)`` returns a problem (a string), or
    when the last line is cut short (no end of line: a truncated file)."""
    path = Path(path)
    data = read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DamagedFileError(path, f"line {line}: not text (byte {e.start} is not UTF-8)") from None
    lines = text.split("\n")
    if lines[-1].strip():
        raise DamagedFileError(path, f"line {len(lines)}: cut short (no end of line); truncated?")
    loads = json.loads
    try:  # the files alseg writes: no blank line inside, every line an object
        values = [loads(line) for line in lines[:-1]]
        numbers = None  # line n holds values[n - 1]
    except (ValueError, RecursionError):
        values, numbers = [], []
        for n, line in enumerate(lines[:-1], 1):
            if not line.strip():
                continue
            try:
                values.append(loads(line))
            except json.JSONDecodeError as e:
                raise DamagedFileError(path, f"line {n}: not valid JSON ({one_line(e)})") from None
            except (RecursionError, ValueError) as e:  # deep nesting, an integer of thousands of digits
                raise DamagedFileError(path, f"line {n}: {json_value_problem(e)}") from None
            numbers.append(n)
    for i, value in enumerate(values):
        problem = (f"expected a JSON object, found a {_json_name(type(value))}" if type(value) is not dict
                   else check(value) if check is not None else None)
        if problem:
            raise DamagedFileError(path, f"line {numbers[i] if numbers else i + 1}: {problem}")
    return values


def check_zip(path: str | os.PathLike) -> None:
    """Check a PyTorch checkpoint (a zip archive) end to end by its members' CRCs, without
    unpickling anything; DamagedFileError when it is missing, truncated or corrupted."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except OSError as e:
        raise _open_problem(path, e) from None
    except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as e:
        raise DamagedFileError(path, f"not a readable checkpoint ({one_line(e)}); truncated or damaged?") from None
    if bad is not None:
        raise DamagedFileError(path, f"not a readable checkpoint (member {bad} fails its CRC check); damaged?")


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """A checkpoint written by ``atomic_torch_save`` (tensors only: ``weights_only``), as a dict
    with a "model" state dict; DamagedFileError when it cannot be read or has no "model"."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DamagedFileError(path, "missing")
    check_zip(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise _open_problem(path, e) from None
    except Exception as e:  # torch.load fails in many ways on a damaged file (pickle, zip, EOF, ...)
        raise DamagedFileError(path, f"not a readable checkpoint ({one_line(e)})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise DamagedFileError(path, "not an alseg checkpoint (no 'model' state dict)")
    return blob


def load_model_state(model, path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load a checkpoint's "model" state dict into ``model`` (all keys, same shapes); returns the
    checkpoint. DamagedFileError when it cannot be read or does not fit the model."""
    blob = load_checkpoint(path, map_location)
    try:
        model.load_state_dict(blob["model"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise DamagedFileError(path, f"does not fit the model ({one_line(e)})") from None
    return blob


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB chunks); DataError when it cannot be read."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or one_line(e)})") from None
    return h.hexdigest()
