"""Run-state I/O of an APIS run at COCO scale: 860k instances, a box and a point each at P0, then one
point per instance per step (Sec. 4.1), through P3.

    python benchmarks/ledger_io.py                   # full scale
    python benchmarks/ledger_io.py --instances 100000

Prints, per round, the seconds to write that round's labels (``Ledger.save_round``, once per
round) and, for comparison, to write state.json with the whole ledger inside it (the version-1
layout, rewritten at every phase of every round), and the seconds to read the whole ledger back on
resume. Target: a round's label I/O well under a minute, whatever the ledger's size so far.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alseg.annotation.ledger import Ledger  # noqa: E402
from alseg.annotation.oracle import Label  # noqa: E402
from alseg.files import atomic_write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=860_000)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.instances
    image_ids = np.arange(n) // 7
    ledger = Ledger()
    print(f"{n} instances, P0 + {args.steps} steps")
    print("round  entries  round file (s)  MB   | v1 state.json (s)  MB   | read all rounds (s)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for k in range(args.steps + 1):
            xy = rng.random((n, 2)) * 600
            labels = [Label("point", int(image_ids[i]), i, x=float(xy[i, 0]), y=float(xy[i, 1]), value=int(i % 2), seconds=0.9)
                      for i in range(n)]
            if k == 0:
                labels += [Label("box", int(image_ids[i]), i, seconds=7.0) for i in range(n)]
            ledger.add(labels, k)
            path = tmp / f"labels_{k}.jsonl"
            t = time.perf_counter()
            ledger.save_round(k, path)
            t_round = time.perf_counter() - t
            t = time.perf_counter()
            atomic_write_json(tmp / "state.json", {"version": 1, "ledger": ledger.entries})
            t_v1 = time.perf_counter() - t
            t = time.perf_counter()
            back = Ledger()
            for r in range(k + 1):
                back.load_round(r, tmp / f"labels_{r}.jsonl")
            t_read = time.perf_counter() - t
            assert len(back.entries) == len(ledger.entries)
            print(f"{k:5d}  {len(ledger.entries):7d}  {t_round:14.2f}  {path.stat().st_size / 2**20:5.0f} | "
                  f"{t_v1:17.2f}  {(tmp / 'state.json').stat().st_size / 2**20:5.0f} | {t_read:19.2f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
