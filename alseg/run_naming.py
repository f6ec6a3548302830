"""Run folder names, made from the command-line overrides, and the config keys that may change
when a run is resumed: one list for both, so that running a command again with one of those keys
changed (a larger ``al.rounds``, another device) finds the same folder and the loop accepts it.

A name is the overrides, sorted by key, as ``key-value`` joined by ``+``: ``alseg seed=1
strategy=mask_entropy`` runs in ``seed-1+strategy-mask_entropy``. Left out: the keys of
``RESUMABLE_CHANGES``, ``experiment_name`` and ``experiment`` (they name the folder above: an
experiment file sets ``experiment_name``; while it is "default", ``experiment`` stays). A key given twice counts once, with its last value (as
Hydra applies it); ``+key=v`` and ``++key=v`` name the same folder as ``key=v``; ``~key`` gives
``key-deleted``.

Every name is a valid unquoted value in Hydra's override grammar, so ``al.initial_run=runs/<exp>/<name>``
can be typed as is: letters, digits and ``_ . - + @`` only (Hydra refuses ``=``, ``,``, brackets,
quotes and ``~`` unquoted; ``:`` and ``|``, ``*``, ``?``, ``%``, ``$`` are avoided for file systems
and shells). Values with other characters (paths, lists, ...) are written readably (``/`` and
``,`` as ``_``, brackets dropped) and the name ends in ``+`` and 10 hex digits of a SHA-1 of the
exact overrides, which keeps names distinct; so does a name longer than 120 characters, cut to fit:
its longest item shortened when that is enough (``al.initial_run=runs/<exp>/<a long name>`` beside
``strategy=`` and ``seed=``: those stay readable), else whole items from the first (the first item
cut when even it does not fit). Folders named by the earlier rule (every over-long name cut at an
item boundary) are found by ``previous_run_name``.
Without a hash, a name reads back to its overrides (keys hold no ``-``, and nothing holds ``+``).

Run folders made by alseg before this naming (``key=value`` joined by ``,``) are found by
``legacy_run_name``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

# Config keys (and key prefixes) that may change between a run and its resumption. Kept out of
# run folder names; the loop refuses any other change of config in an existing run folder.
# The synthetic data's cache may move (dataset.cache_dir): the run state's data fingerprint refuses other data.
RESUMABLE_CHANGES = ("al.rounds", "device", "progress", "logger", "run_name", "trainer.schedule.num_workers", "paths",
                     "dataset.cache_dir", "trainer.log_every", "distributed")
# Keys that name the folder above the run's: runs/<experiment_name>/<run name>.
PARENT_KEYS = ("experiment_name", "experiment")

KV_SEP, ITEM_SEP = "-", "+"
MAX_LEN = 120  # file systems allow 255 bytes; a name stays readable in a listing
HASH_LEN = 10
MIN_ITEM = 24  # an over-long name's longest item is cut to no less than this (then whole items are dropped)
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.@]")
_VALUE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
_DROPPED = re.compile(r"[\[\]{}()'\"]")
# Hydra's exclude list of the names alseg made before (hydra.job.override_dirname with "=" and ",").
LEGACY_EXCLUDE = ("run_name", "device", "progress", "logger", "experiment", "trainer.schedule.num_workers",
                  "paths.runs", "paths.cache_dir", "paths.data_dir")

_parser = OverridesParser.create()


def under(key: str, prefixes: Sequence[str]) -> bool:
    """Whether a dotted key is one of ``prefixes`` or inside one (``logger.console`` under ``logger``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _value_text(value) -> str:
    """A parsed override value written as Hydra would read it back (lists and dicts compact)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_value_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _reads_back_as(text: str, value) -> bool:
    """Whether ``key=<text>`` parses to ``value`` again (a string '1' or 'true' does not)."""
    try:
        parsed = _parser.parse_override(f"k={text}")
    except Exception:  # noqa: BLE001 - any parse failure means "no"
        return False
    return not parsed.is_sweep_override() and type(parsed.value()) is type(value) and parsed.value() == value


def _key_of(o: Override) -> str:
    return o.key_or_group if o.package is None else f"{o.key_or_group}@{o.package}"


def _last_per_key(overrides: Sequence[str]) -> dict[str, Override]:
    """The overrides by key (``group@package`` for a package override), the last one of each key."""
    out: dict[str, Override] = {}
    for o in _parser.parse_overrides(list(overrides)):
        out[_key_of(o)] = o
    return out


def _fit(items: list[str], room: int, longest_first: bool) -> str:
    """``items`` joined within ``room`` characters. ``longest_first``: when shortening the longest
    item alone (to no less than MIN_ITEM characters) is enough, only it is cut, so that e.g. the
    strategy and seed beside a long ``al.initial_run`` path stay whole; otherwise whole items from
    the first (the first one cut when even it does not fit)."""
    name = ITEM_SEP.join(items)
    excess = len(name) - room
    if excess <= 0:
        return name
    if longest_first:
        i = max(range(len(items)), key=lambda j: len(items[j]))
        if len(items[i]) - excess >= MIN_ITEM:
            return ITEM_SEP.join(items[:i] + [items[i][:len(items[i]) - excess]] + items[i + 1:])
    cut = name.rfind(ITEM_SEP, 0, room + 1)
    return name[:cut] if cut > 0 else name[:room]


def previous_run_name(overrides: Sequence[str], experiment_names_folder: bool = True) -> str:
    """The name alseg gave a command before long items were cut first (``run_name`` cut every
    over-long name at an item boundary): it differs only for names over MAX_LEN characters."""
    return run_name(overrides, experiment_names_folder, _longest_first=False)


def run_name(overrides: Sequence[str], experiment_names_folder: bool = True, _longest_first: bool = True) -> str:
    """The run folder's name for a command's overrides (Hydra's ``overrides.task`` list: strings as
    typed, one value each). ``experiment_names_folder``: whether the experiment chose the folder
    above (experiment_name not "default"); if not, ``experiment=X`` stays in the name so that two
    experiments without their own name never share a folder. Returns "default" when no override
    is left. Raises hydra's OverrideParseException on a string Hydra would not parse."""
    left_out = RESUMABLE_CHANGES + (PARENT_KEYS if experiment_names_folder else ("experiment_name",))
    items, exact, hashed = [], [], False
    for key, o in sorted(_last_per_key(overrides).items()):
        if under(o.key_or_group, left_out):
            continue
        if o.is_delete():
            value, text, hashed = None, "deleted", True
        else:
            value = o.value()
            text = _value_text(value)
            if isinstance(value, str) and not _reads_back_as(text, value):
                hashed = True
        safe_key = _KEY_CHARS.sub("_", key)
        safe_text = _VALUE_CHARS.sub("_", _DROPPED.sub("", text))
        hashed |= safe_key != key or safe_text != text
        items.append(f"{safe_key}{KV_SEP}{safe_text}")
        exact.append(f"{'~' if o.is_delete() else ''}{key}={type(value).__name__}:{text}")
    if not items:
        return "default"
    name = ITEM_SEP.join(items)
    if hashed or len(name) > MAX_LEN:
        digest = hashlib.sha1("\n".join(exact).encode()).hexdigest()[:HASH_LEN]
        name = _fit(items, MAX_LEN - HASH_LEN - 1, _longest_first) + ITEM_SEP + digest
    return name


def legacy_run_name(overrides: Sequence[str]) -> str:
    """The name alseg gave the same command before this naming: Hydra's override_dirname
    (``key=value`` as typed, sorted, joined by ``,``) less LEGACY_EXCLUDE, ``/`` as ``_``, names
    over 120 characters cut to 100 plus ``-`` and 10 hex digits of their SHA-1."""
    lines = sorted(o.input_line for o in _parser.parse_overrides(list(overrides))
                   if o.key_or_group not in LEGACY_EXCLUDE)
    name = ",".join(lines) or "default"
    name = name.replace("/", "_")
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name
