"""Start a run from another run's round 0: its labels and its trained model (M0).

Strategies compared in one table should start from the same initial model, as the papers' do
(APIS Sec. 4.1 fine-tunes every strategy from one M0): ``al.initial_run=runs/<experiment>/<run>``
takes round 0 from that folder instead of labelling and training it again. The two configs must
agree on everything round 0 depends on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from alseg.annotation.ledger import Ledger
from alseg.errors import ConfigError
from alseg.engine.state import differing_keys, flatten, read_json, under

# What round 0's labels and model depend on (config key prefixes).
ROUND0_KEYS = ("seed", "dataset", "model", "cost", "al.initial", "al.initial_unit", "al.initial_strategy",
               "trainer.schedule", "trainer.transforms")
IGNORED = ("trainer.schedule.num_workers",)
COPIED = ("model.pt", "selection.json", "metrics.json")


def _round0_part(config: dict) -> dict:
    return {k: v for k, v in flatten(config).items() if under(k, ROUND0_KEYS) and k not in IGNORED}


def check_initial_run(source: str | Path, config: dict) -> dict:
    """The source run's state, after checking it has a trained round 0 made with the same round-0
    config as ``config``; ConfigError otherwise. Reads only."""
    src = Path(source)
    try:
        state = read_json(src / "state.json")
    except (OSError, ValueError) as e:
        raise ConfigError(f"al.initial_run: {src / 'state.json'}: not a readable run state ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise ConfigError(f"al.initial_run: {src / 'state.json'}: not an alseg run state")
    if state.get("round", 0) < 1 and state.get("phase") not in ("trained", "evaluated"):
        raise ConfigError(f"al.initial_run: {src}: round 0 is not trained yet")
    if not (src / "round_000" / "model.pt").is_file():
        raise ConfigError(f"al.initial_run: {src / 'round_000' / 'model.pt'}: missing")
    diffs = differing_keys(_round0_part(config), _round0_part(state["config"]))
    if diffs:
        raise ConfigError(f"al.initial_run: {src} made its round 0 with another config "
                          f"(differs at: {', '.join(diffs[:5])})")
    return state


def copy_initial_round(source: str | Path, source_state: dict, round_dir: Path) -> None:
    """Copy round 0's model, selection, metrics and labels into ``round_dir`` (a version-1 source
    keeps its labels in state.json)."""
    src = Path(source) / "round_000"
    round_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, round_dir / name)
    if (src / "labels.jsonl").is_file():
        shutil.copy2(src / "labels.jsonl", round_dir / "labels.jsonl")
    else:
        Ledger(source_state.get("ledger", [])).save_round(0, round_dir / "labels.jsonl")
