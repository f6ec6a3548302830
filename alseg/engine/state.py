"""The run state (state.json) and config comparisons.

state.json holds where the run is (``round``, ``phase``), the records of the evaluated rounds, the
config and seed it was made with, the fingerprint of its data (``alseg.data.fingerprint``) and the
results of the current round's finished phases (``phase_results``: "select", then "train"), so that
a round resumed after any phase ends exactly as an uninterrupted one.

File writes live in ``alseg.files``; they are re-exported here for existing imports.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alseg.config_check import is_int, is_number
from alseg.files import (DamagedFileError, atomic_torch_save, atomic_write_json,  # noqa: F401  (re-exported)
                         atomic_write_text, read_json)

STATE_VERSION = 3  # 1: the ledger inside state.json; 2: no phase results, no data fingerprint
PHASES = ("start", "selected", "trained", "evaluated")


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config as {"a.b.c": value}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def under(key: str, prefixes) -> bool:
    """Whether a flattened key is one of ``prefixes`` or inside one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def differing_keys(old: dict, new: dict) -> list[str]:
    """Flattened keys whose values differ between two nested configs, sorted."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _rounds_text(rounds: list[int]) -> str:
    """'none', '0', '0-2' or the list written out (at most 6 shown)."""
    if not rounds:
        return "none"
    if rounds == list(range(rounds[0], rounds[-1] + 1)):
        return str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
    return ", ".join(map(str, rounds[:6])) + (", ..." if len(rounds) > 6 else "")


def state_problem(state) -> str | None:
    """What makes a parsed state.json unusable (wrong types, missing fields, a phase without the
    results it implies), or None when it is well-formed. Versions 1 to STATE_VERSION."""
    if not isinstance(state, dict):
        return "not a run state (expected a JSON object)"
    version = state.get("version")
    if not is_int(version):
        return "not a run state (no version)"
    if not 1 <= version <= STATE_VERSION:
        return f"state version {version} is not supported (this alseg reads versions 1 to {STATE_VERSION})"
    checks = [
        (is_int(state.get("round")) and state["round"] >= 0, "'round' must be an integer >= 0"),
        (state.get("phase") in PHASES, f"'phase' must be one of {PHASES}"),
        (isinstance(state.get("config"), dict), "'config' must be an object"),
        (isinstance(state.get("records"), list)
         and all(isinstance(r, dict) and is_int(r.get("round")) for r in state["records"]),
         "'records' must be a list of round records"),
        (version != 1 or isinstance(state.get("ledger", []), list), "'ledger' must be a list"),
        ("fingerprint" not in state or isinstance(state["fingerprint"], dict), "'fingerprint' must be an object"),
    ]
    for ok, what in checks:
        if not ok:
            return f"damaged run state ({what})"
    if version >= 3:
        results = state.get("phase_results")
        if not isinstance(results, dict):
            return "damaged run state ('phase_results' must be an object)"
        phase = state["phase"]
        if phase in ("selected", "trained") and not isinstance(results.get("select"), dict):
            return f"damaged run state (phase {phase!r} without the select result)"
        # A null train result: unknown (the round was trained by a version-2 run).
        if phase == "trained" and not ("train" in results and isinstance(results["train"], (dict, type(None)))):
            return "damaged run state (phase 'trained' without the train result)"
        fields = {"select": {"queries": is_int, "seconds": is_number, "analysis": lambda v: isinstance(v, dict)},
                  "train": {"iters": is_int, "base_lr": is_number, "losses": lambda v: isinstance(v, dict)}}
        for name, kinds in fields.items():
            result = results.get(name)
            if isinstance(result, dict) and (set(result) != set(kinds) or not all(ok(result[k]) for k, ok in kinds.items())):
                return f"damaged run state (malformed {name} result)"
    # The loop records round k when it is evaluated and moves to round k + 1 after: the records are
    # rounds 0 .. done - 1, in order (a 'round' edited by hand, or records lost, do not match).
    done = state["round"] + (state["phase"] == "evaluated")
    rounds = [r["round"] for r in state["records"]]
    if len(rounds) != done or any(r != i for i, r in enumerate(rounds)):
        needed = "none" if done == 0 else "0" if done == 1 else f"0-{done - 1}"
        return (f"damaged run state ('round' {state['round']} at phase {state['phase']!r} needs the records of "
                f"rounds {needed}; 'records' hold {_rounds_text(rounds)})")
    return None


def read_state(path: Path) -> dict:
    """A run state read and checked (``state_problem``); DamagedFileError naming the file."""
    state = read_json(path)
    problem = state_problem(state)
    if problem:
        raise DamagedFileError(path, problem)
    return state


def _canonical(obj):
    """``obj`` as it reads back from state.json (JSON values, keys sorted), so that a phase result
    used at once and one read back on resume are equal, key order included."""
    return json.loads(json.dumps(obj, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


@dataclass
class SelectResult:
    """What a round's selection phase returns; kept in state.json until the round is recorded.

    queries: how many queries were answered; seconds: the annotation seconds they cost;
    analysis: the strategy's figures about them (``Strategy.analyze``), JSON values."""

    queries: int
    seconds: float
    analysis: dict = field(default_factory=dict)

    def __post_init__(self):
        self.analysis = _canonical(self.analysis)

    def to_dict(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """The round record's "selection/<figure>" keys (numbers only)."""
        return {f"selection/{k}": v for k, v in self.analysis.items() if isinstance(v, (int, float))}

    @classmethod
    def from_selection_file(cls, path: Path) -> "SelectResult":
        """From a round's selection.json (runs older than state version 3); DamagedFileError."""
        sel = read_json(path, dict)
        ok = (isinstance(sel.get("queries"), list) and isinstance(sel.get("seconds"), (int, float))
              and isinstance(sel.get("analysis", {}), dict))
        if not ok:
            raise DamagedFileError(path, "not a selection (needs 'queries', 'seconds' and 'analysis')")
        return cls(len(sel["queries"]), float(sel["seconds"]), sel.get("analysis", {}))


@dataclass
class TrainResult:
    """What a round's training phase returns; kept in state.json until the round is recorded.

    iters: the schedule's iterations; base_lr: its base learning rate; losses: "train/<term>" ->
    mean of that loss term over the last iterations (LossAverageHook), plus the mask-IoU head's
    "train/loss_mask_iou" when the model has one."""

    iters: int
    base_lr: float
    losses: dict = field(default_factory=dict)

    def __post_init__(self):
        self.losses = _canonical(self.losses)

    def to_dict(self) -> dict:
        return asdict(self)

    def record(self) -> dict:
        """The round record's train keys."""
        return {**self.losses, "train/iters": self.iters, "train/base_lr": self.base_lr}

    @classmethod
    def from_record(cls, record: dict) -> "TrainResult | None":
        """Back from a round record (None when it has no train keys: a run older than state
        version 3 resumed between training and evaluation)."""
        if "train/iters" not in record or "train/base_lr" not in record:
            return None
        losses = {k: v for k, v in record.items() if k.startswith("train/") and k not in ("train/iters", "train/base_lr")}
        return cls(record["train/iters"], record["train/base_lr"], losses)
