"""Where a run's wall time goes, phase by phase and round by round, read from its run.log (the
loop logs each phase's duration): setup (data, model, checks), selection (of which pool inference),
training, evaluation (predictions + Dice, COCOeval) and the rest (checkpoints, state, plots).

    python benchmarks/run_profile.py RUN_FOLDER              # a finished run
    python benchmarks/run_profile.py --run [OVERRIDES ...]   # run `alseg OVERRIDES` in a temporary folder first

With --run the setup time (process start to the first round) is measured too.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
PATTERNS = {
    "select": re.compile(r"^round (\d+): .* selected \d+ queries .* in ([\d.]+) s$"),
    "pool": re.compile(r"^round (\d+): pool inference on \d+ images in ([\d.]+) s$"),
    "train_start": re.compile(r"^round (\d+) train: \d+ iterations"),
    "train_done": re.compile(r"^round (\d+) train: iter (\d+)/\2 .* done$"),
    "evaluate": re.compile(r"^evaluate: predictions and Dice on \d+ images in ([\d.]+) s, COCOeval in ([\d.]+) s$"),
    "evaluated": re.compile(r"^round (\d+): (?:as )?evaluated (?:in al.initial_run )?on"),
    "taken": re.compile(r"^round 0 taken from "),  # al.initial_run: round 0 starts here, without selection
}
COLUMNS = ("select", "pool", "train", "predict", "cocoeval", "other", "total")


def _time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def profile(run_log: Path) -> tuple[dict[int, dict[str, float]], float | None]:
    """Seconds per phase per round (COLUMNS; "pool" is part of "select", "other" is the round's
    wall time less the phases), and the timestamp of the first round's start."""
    rounds: dict[int, dict[str, float]] = {}
    marks: dict[int, dict[str, float]] = {}
    pending_eval = None
    first = None
    for raw in run_log.read_text().splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        t, msg = _time(m.group(1)), m.group(2)
        if (p := PATTERNS["select"].match(msg)):
            k, s = int(p.group(1)), float(p.group(2))
            rounds.setdefault(k, {})["select"] = s
            marks.setdefault(k, {})["start"] = t - s
            first = t - s if first is None else first
        elif PATTERNS["taken"].match(msg):
            marks.setdefault(0, {})["start"] = t
            first = t if first is None else first
        elif (p := PATTERNS["pool"].match(msg)):
            rounds.setdefault(int(p.group(1)), {})["pool"] = float(p.group(2))
        elif (p := PATTERNS["train_start"].match(msg)):
            marks.setdefault(int(p.group(1)), {})["train_start"] = t
        elif (p := PATTERNS["train_done"].match(msg)):
            k = int(p.group(1))
            marks.setdefault(k, {})["train_done"] = t
            rounds.setdefault(k, {})["train"] = t - marks[k].get("train_start", t)
        elif (p := PATTERNS["evaluate"].match(msg)):
            pending_eval = (float(p.group(1)), float(p.group(2)))
        elif (p := PATTERNS["evaluated"].match(msg)):
            k = int(p.group(1))
            r = rounds.setdefault(k, {})
            if pending_eval:
                r["predict"], r["cocoeval"] = pending_eval
                pending_eval = None
            start = marks.get(k, {}).get("start", t)
            r["total"] = t - start
    for r in rounds.values():
        r.setdefault("pool", 0.0)
        r["other"] = r.get("total", 0.0) - sum(r.get(c, 0.0) for c in ("select", "train", "predict", "cocoeval"))
    return rounds, first


def print_profile(rounds: dict[int, dict[str, float]], setup: float | None, wall: float | None) -> None:
    print(f"{'round':>5}" + "".join(f"{c:>10}" for c in COLUMNS))
    totals = {c: 0.0 for c in COLUMNS}
    for k in sorted(rounds):
        r = rounds[k]
        print(f"{k:>5}" + "".join(f"{r.get(c, 0.0):10.1f}" for c in COLUMNS))
        for c in COLUMNS:
            totals[c] += r.get(c, 0.0)
    print(f"{'all':>5}" + "".join(f"{totals[c]:10.1f}" for c in COLUMNS))
    whole = wall or totals["total"] + (setup or 0.0)
    share = {c: totals[c] / whole for c in COLUMNS if c != "total"}
    if setup is not None:
        share["setup"] = setup / whole
        print(f"setup (process start to round 0's selection): {setup:.1f} s")
    if wall is not None:
        print(f"wall time {wall:.1f} s; after the last round {wall - (setup or 0) - totals['total']:.1f} s")
    print("shares of the wall time: " + ", ".join(f"{c} {v:.0%}" for c, v in share.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", type=Path, help="a run folder (holding run.log)")
    p.add_argument("--run", dest="overrides", nargs="*", metavar="OVERRIDE",
                   help="run `alseg OVERRIDES` in a temporary folder first")
    args = p.parse_args(argv)
    if args.overrides is None:
        if args.run is None or not (args.run / "run.log").is_file():
            p.error("give a run folder holding run.log, or --run [OVERRIDES]")
        rounds, _ = profile(args.run / "run.log")
        print_profile(rounds, None, None)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ALSEG_CACHE": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "alseg", "progress=false", "run_name=profile", *args.overrides],
                       cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        log = next((Path(tmp) / "runs").glob("*/profile/run.log"))
        rounds, first = profile(log)
        print(f"alseg {' '.join(args.overrides)}  (load average {os.getloadavg()[0]:.2f})")
        print_profile(rounds, first - t0 if first else None, wall)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
