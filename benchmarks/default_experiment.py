"""Wall time and AP of the default experiment (`alseg` with no arguments), from a fresh data cache.

    python benchmarks/default_experiment.py
Target: at most 10 minutes on 2 CPU cores; mask AP50 of the last round >= 0.5 and rising.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ALSEG_CACHE": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "alseg.cli", "progress=false"], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        results = Path(tmp) / "runs" / "default" / "default" / "results.jsonl"
        records = [json.loads(l) for l in results.read_text().splitlines()]
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min; target <= 10 min)")
    print("round  labeled  hours  mask_AP  mask_AP50  box_AP")
    for r in records:
        print(f"{r['round']:>5}  {r['labeled_images']:>7}  {r['hours']:>5.2f}  {r['mask_AP']:.3f}    {r['mask_AP50']:.3f}      {r['box_AP']:.3f}")
    ap50 = [r["mask_AP50"] for r in records]
    print(f"last mask AP50 {ap50[-1]:.3f} (target >= 0.5); rising: {all(b >= a for a, b in zip(ap50, ap50[1:]))}")


if __name__ == "__main__":
    main()
