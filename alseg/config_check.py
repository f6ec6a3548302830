"""Checks of the parameters a config node passes to a component (a strategy, ...), made when the
component is built, so that a wrong value stops the command before any work instead of failing
rounds later inside numpy.

Each check returns the value in its Python type (a number as float, an integer as int) or raises
``ParamError``, a ConfigError that names the parameter. The component does not know where its
config node sits; ``alseg.instantiate.build`` puts the node's path in front (``strategy.beta``,
``al.initial_strategy.beta``). Values come as Hydra parses them: ``abc`` is a string, ``2.5`` a
float, ``true`` a bool, ``'true'`` a string, ``null`` None, ``[1,2]`` a list.

Type rules (those of the trainer's schedule fields): a bool is not a number; a float is not an
integer, even 2.0; a string is never a number or a bool; None only where ``none=True``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

from alseg.errors import ConfigError


class ParamError(ConfigError):
    """A bad value of one parameter. ``str()`` is ``<node>.<param>: <reason>``; ``node`` is
    ``strategy`` until ``build`` re-raises it under the real config path with ``at``."""

    def __init__(self, param: str, reason: str, node: str = "strategy"):
        self.param, self.reason, self.node = param, reason, node
        super().__init__(f"{node}.{param}: {reason}")

    def at(self, node: str) -> "ParamError":
        return ParamError(self.param, self.reason, node)


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})" if isinstance(value, str) else f"got {value!r}"


def is_number(v: Any) -> bool:
    """A real number (Python or NumPy int / float, NaN included), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_int(v: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _range_words(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_num(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_num(high)}"
    return ""


def _in_range(v, low, high, low_open: bool, high_open: bool) -> bool:
    # Written so that NaN is out of every range.
    ok_low = low is None or (v > low if low_open else v >= low)
    ok_high = high is None or (v < high if high_open else v <= high)
    return bool(ok_low and ok_high)


def number(param: str, value: Any, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False, none: bool = False) -> float | None:
    """A finite real number (int or float, not bool) in the range given (closed unless ``*_open``).
    Returns a float."""
    words = "a number" + _range_words(low, high, low_open, high_open) + (" or null" if none else "")
    if value is None and none:
        return None
    if not is_number(value) or not math.isfinite(value) or not _in_range(value, low, high, low_open, high_open):
        raise ParamError(param, f"must be {words}, {_got(value)}")
    return float(value)


def integer(param: str, value: Any, low: int | None = None, high: int | None = None, *,
            none: bool = False) -> int | None:
    """An integer (not a bool, not a float such as 2.0) in [low, high]. Returns an int."""
    words = "an integer" + _range_words(low, high, False, False) + (" or null" if none else "")
    if value is None and none:
        return None
    if not is_int(value) or not _in_range(value, low, high, False, False):
        raise ParamError(param, f"must be {words}, {_got(value)}")
    return int(value)


def boolean(param: str, value: Any) -> bool:
    """true or false (a string such as 'true' or an integer 1 is refused)."""
    if not isinstance(value, bool):
        raise ParamError(param, f"must be true or false, {_got(value)}")
    return value


def choice(param: str, value: Any, choices: Iterable[str]) -> str:
    """One of ``choices`` (strings)."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ParamError(param, f"must be one of {', '.join(choices)}, {_got(value)}")
    return value


def text(param: str, value: Any, *, none: bool = False) -> str | None:
    """A non-empty string (a name)."""
    if value is None and none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ParamError(param, f"must be a non-empty string{' or null' if none else ''}, {_got(value)}")
    return value


def integer_list(param: str, value: Any, low: int | None = None, *, none: bool = False) -> list[int] | None:
    """A non-empty list of integers, each >= low. Returns a list of ints."""
    words = "a non-empty list of integers" + (f" >= {low}" if low is not None else "") + (" or null" if none else "")
    if value is None and none:
        return None
    if (not isinstance(value, (list, tuple)) or not value
            or not all(is_int(v) and _in_range(v, low, None, False, False) for v in value)):
        raise ParamError(param, f"must be {words}, {_got(value)}")
    return [int(v) for v in value]


def config_value(check, key: str, value: Any, *args, **kwargs):
    """``check(param, value, *args, **kwargs)`` (one of the checks above) for a key of the run's
    config such as ``seed`` or ``al.rounds``: the ConfigError names the whole dotted key."""
    try:
        return check(key, value, *args, **kwargs)
    except ParamError as e:
        raise ConfigError(f"{key}: {e.reason}") from None

