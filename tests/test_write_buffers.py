"""alseg.files.write_buffers: pieces written in order with os.writev, short writes and no writev."""

from __future__ import annotations

import os

import msgspec
import pytest

from alseg import files


def _pieces():
    raw = msgspec.json.decode(b'[{"a": 1}, [2, 3], "x"]', type=list[msgspec.Raw])
    return [b"[", raw[0], b",", memoryview(b"[2,3]"), b"", b",", raw[2], b"]"] * 7


@pytest.mark.parametrize("batch", [1, 2, 3, 1024])
def test_write_buffers_writes_every_piece_in_order(tmp_path, batch):
    pieces = _pieces()
    path = tmp_path / "out.json"
    with open(path, "wb") as f:
        f.write(b"head:")  # buffered bytes before the pieces go first
        files.write_buffers(f, pieces, batch=batch)
        f.write(b":tail")
    assert path.read_bytes() == b"head:" + b"".join(bytes(p) for p in pieces) + b":tail"


def test_write_buffers_finishes_a_short_write(tmp_path, monkeypatch):
    real = os.writev
    calls = []

    def short(fd, bufs):  # writes 3 bytes of each call only, as a signal or a nearly full disk can
        calls.append(len(bufs))
        data = b"".join(bytes(b) for b in bufs)
        return real(fd, [data[:3]])

    monkeypatch.setattr(os, "writev", short)
    pieces = _pieces()
    path = tmp_path / "out.json"
    with open(path, "wb") as f:
        files.write_buffers(f, pieces, batch=5)
    assert path.read_bytes() == b"".join(bytes(p) for p in pieces)
    assert calls == [5] * (len(pieces) // 5) + ([len(pieces) % 5] if len(pieces) % 5 else [])


def test_write_buffers_without_writev(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "writev")
    pieces = _pieces()
    path = tmp_path / "out.json"
    with open(path, "wb") as f:
        files.write_buffers(f, pieces, batch=4)
    assert path.read_bytes() == b"".join(bytes(p) for p in pieces)


def test_write_buffers_raises_the_os_error(tmp_path):
    path = tmp_path / "out.json"
    path.write_bytes(b"")
    with open(path, "rb") as f, pytest.raises(OSError):
        files.write_buffers(f, [b"x"])
