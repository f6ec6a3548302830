"""Ctrl-C and SIGTERM alike.

Schedulers, ``timeout`` and ``kill`` stop a process with SIGTERM, whose default action ends Python
at once, silently, with no ``finally`` run. Inside ``handled()`` both SIGINT and SIGTERM raise
``Interrupted`` (a ``KeyboardInterrupt``) in the main thread, so that the code below unwinds as it
does on Ctrl-C: the loop logs the interruption to run.log, the CLI says how to resume and exits
with 128 + the signal number (130, 143).

A signal that arrives inside ``deferred()`` (an atomic write: temporary file, fsync, rename) is
raised when the block ends, so the write in progress completes instead of being abandoned.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number."""
        return 128 + self.signum


_depth = 0
_pending: int | None = None


def _handler(signum: int, frame) -> None:
    global _pending
    if _depth:
        _pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM (when ``handled()`` is active) until the block ends, then raise
    ``Interrupted``. An exception raised by the block itself wins over a pending signal's."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    except BaseException:
        _depth -= 1
        if _depth == 0:
            _pending = None  # the block's own error stops the run anyway
        raise
    _depth -= 1
    if _depth == 0 and _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


def exit_code_of(e: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (a plain KeyboardInterrupt), 128 + the signal number for ``Interrupted``."""
    return e.exit_code if isinstance(e, Interrupted) else 128 + signal.SIGINT


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` within the block; the previous handlers come back
    after it. Outside the main thread (where Python cannot set handlers) nothing changes."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in HANDLED}
    _pending = None
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
