"""Start a run from another run's round 0: its labels and its trained model (M0).

Strategies compared in one table should start from the same initial model, as the papers' do
(APIS Sec. 4.1 fine-tunes every strategy from one M0): ``al.initial_run=runs/<experiment>/<run>``
takes round 0 from that folder instead of labelling and training it again. The two configs must
agree on everything round 0 depends on. Every file taken from the source is read and checked
before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alseg.annotation.ledger import Ledger, label_problem
from alseg.engine.state import (SelectResult, TrainResult, differing_keys, flatten, read_json, read_state,
                                under)
from alseg.errors import ConfigError
from alseg.files import DamagedFileError, atomic_write_bytes, check_zip, read_bytes

# What round 0's labels and model depend on (config key prefixes).
ROUND0_KEYS = ("seed", "dataset", "model", "cost", "al.initial", "al.initial_unit", "al.initial_strategy",
               "trainer.schedule", "trainer.transforms")
IGNORED = ("trainer.schedule.num_workers", "dataset.cache_dir")  # where the data cache is does not change it
EVAL_FILE = "eval.json"  # a round's metrics on the val split alone (the loop reuses round 0's from al.initial_run)
COPIED = ("model.pt", "selection.json", "metrics.json", EVAL_FILE)
_ADVICE = "the source run's round 0 is damaged: redo it there, or choose another al.initial_run"


@dataclass
class InitialRound:
    """Round 0 of a source run, read and checked: its folder, state, labels (ledger entries of
    round 0), the selection's result and the training's (None when the source does not have it)."""

    source: Path
    state: dict
    entries: list[dict]
    select: SelectResult
    train: TrainResult | None

    @property
    def model_path(self) -> Path:
        return self.source / "round_000" / "model.pt"


def _part(config: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in flatten(config).items() if under(k, keys) and k not in IGNORED}


def round0_differences(config: dict, source_config: dict, keys: tuple[str, ...] = ROUND0_KEYS) -> list[str]:
    """Round-0 keys (``keys``, less IGNORED) whose values differ between ``config`` and the
    source run's; a key the source's config lacks (added by a later alseg, with its default) is not
    a difference, as on resume (``alseg.engine.loop.config_differences``)."""
    known = set(flatten(source_config))
    return [k for k in differing_keys(_part(config, keys), _part(source_config, keys)) if k in known]


# What a reference model (trained on the whole pool, alseg.engine.loop) depends on.
REFERENCE_KEYS = ("seed", "dataset", "model", "trainer.schedule", "trainer.transforms")


def check_reference_run(source: str | Path, config: dict) -> Path:
    """The reference model (``reference/model.pt``) of another run, after checking that run
    trained it as ``config`` would (REFERENCE_KEYS: seed, data, model, schedule): one per seed
    serves every pruning rate of TFDP's model-based baseline. ConfigError (one line naming the
    folder or file) otherwise. Reads only."""
    src = Path(source)
    try:
        state = read_state(src / "state.json")
    except DamagedFileError as e:
        raise ConfigError(f"al.reference_run: {e.path}: not a readable run state ({e.problem})") from None
    path = src / "reference" / "model.pt"
    if not path.is_file():
        raise ConfigError(f"al.reference_run: {src}: no reference model (reference/model.pt) yet; run that run "
                          f"first (a strategy that needs one, e.g. entropy_reference)")
    diffs = round0_differences(config, state["config"], REFERENCE_KEYS)
    if diffs:
        raise ConfigError(f"al.reference_run: {src} trained its reference model with another config "
                          f"(differs at: {', '.join(diffs[:5])})")
    try:
        check_zip(path)
    except DamagedFileError as e:
        raise ConfigError(f"al.reference_run: {e.path}: {e.problem}; train it again there, or choose another run") from None
    return path


def _damaged(e: DamagedFileError) -> ConfigError:
    return ConfigError(f"al.initial_run: {e.path}: {e.problem}; {_ADVICE}")


def check_initial_run(source: str | Path, config: dict) -> InitialRound:
    """The source run's round 0, after checking it is trained, made with the same round-0 config
    as ``config``, and that each of its files reads back whole. ConfigError otherwise (one line
    naming the file). Reads only."""
    src = Path(source)
    try:
        state = read_state(src / "state.json")
    except DamagedFileError as e:
        raise ConfigError(f"al.initial_run: {e.path}: not a readable run state ({e.problem})") from None
    if state["round"] < 1 and state["phase"] not in ("trained", "evaluated"):
        raise ConfigError(f"al.initial_run: {src}: round 0 is not trained yet")
    diffs = round0_differences(config, state["config"])
    if diffs:
        raise ConfigError(f"al.initial_run: {src} made its round 0 with another config "
                          f"(differs at: {', '.join(diffs[:5])})")
    r0 = src / "round_000"
    try:
        check_zip(r0 / "model.pt")
        if (r0 / "labels.jsonl").is_file() or state["version"] >= 2:
            ledger = Ledger()
            ledger.load_round(0, r0 / "labels.jsonl")
            entries = ledger.entries
        else:  # a version-1 source keeps its labels in state.json
            entries = [e for e in state.get("ledger", []) if isinstance(e, dict) and e.get("round") == 0]
            bad = next((p for p in map(label_problem, entries) if p), None)
            if bad:
                raise DamagedFileError(src / "state.json", f"a round-0 label: {bad}")
        select = SelectResult.from_selection_file(r0 / "selection.json")
        for name in ("metrics.json", EVAL_FILE):
            if (r0 / name).exists():
                read_json(r0 / name, dict)
    except DamagedFileError as e:
        raise _damaged(e) from None
    record = next((r for r in state["records"] if r["round"] == 0), None)
    if record is not None:
        train = TrainResult.from_record(record)
    else:  # round 0 trained, not yet evaluated: its train result is still in the state
        result = (state.get("phase_results") or {}).get("train") if state["round"] == 0 else None
        train = TrainResult(**result) if isinstance(result, dict) else None
    return InitialRound(src, state, entries, select, train)


def copy_initial_round(initial: InitialRound, round_dir: Path) -> None:
    """Copy round 0's model, selection, metrics and labels into ``round_dir`` (atomically, file by
    file; a version-1 source's labels are written from its state)."""
    src = initial.source / "round_000"
    for name in (*COPIED, "labels.jsonl"):
        if (src / name).is_file():
            try:
                data = read_bytes(src / name)
            except DamagedFileError as e:
                raise _damaged(e) from None
            atomic_write_bytes(round_dir / name, data)
    if not (src / "labels.jsonl").is_file():
        Ledger(initial.entries).save_round(0, round_dir / "labels.jsonl")
