"""Wall time and AP of the default experiment (`alseg` with no arguments), from a fresh data cache;
optionally of the same experiment with other models, one after the other on the same machine.

    python benchmarks/default_experiment.py                                 # Mask R-CNN (the default)
    python benchmarks/default_experiment.py --models maskrcnn_r18_small condinst_r18_small
    python benchmarks/default_experiment.py seed=1                          # extra overrides for every run

Targets: at most 10 minutes on 2 CPU cores; mask AP50 of the last round >= 0.5 and rising; a
CondInst run in no more wall time than the Mask R-CNN run beside it (issue 14).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(overrides: list[str], keep: Path | None = None) -> tuple[float, list[dict]]:
    """Wall seconds and the round records of one `alseg` run in a fresh folder and data cache
    (its results.jsonl copied to ``keep`` when given)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ALSEG_CACHE": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "alseg.cli", "progress=false", "run_name=bench", *overrides], cwd=tmp,
                       env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        results = next((Path(tmp) / "runs").glob("*/bench/results.jsonl"))
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(results.read_bytes())
        return wall, [json.loads(line) for line in results.read_text().splitlines()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=[None], help="model configs to run in turn (default: the default)")
    p.add_argument("--keep", type=Path, help="folder to copy each run's results.jsonl to (<model>.jsonl)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = p.parse_args(argv)
    walls = {}
    for model in args.models:
        name = model or "default model"
        print(f"== {name} (load average at start {os.getloadavg()[0]:.2f})", flush=True)
        keep = args.keep / f"{model or 'default'}.jsonl" if args.keep else None
        wall, records = run_once(([f"model={model}"] if model else []) + args.overrides, keep)
        walls[name] = wall
        print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min; target <= 10 min)")
        print("round  labeled  hours  mask_AP  mask_AP50  box_AP")
        for r in records:
            print(f"{r['round']:>5}  {r['labeled_images']:>7}  {r['hours']:>5.2f}  {r['mask_AP']:.3f}    "
                  f"{r['mask_AP50']:.3f}      {r['box_AP']:.3f}")
        ap50 = [r["mask_AP50"] for r in records]
        print(f"last mask AP50 {ap50[-1]:.3f} (target >= 0.5); rising: {all(b >= a for a, b in zip(ap50, ap50[1:]))}",
              flush=True)
    if len(walls) > 1:
        (a, wa), *rest = walls.items()
        for b, wb in rest:
            print(f"wall time {b} / {a}: {wb / wa:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
