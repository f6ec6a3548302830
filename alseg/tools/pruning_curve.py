"""pruning_curve: a metric against the pruning rate, per initial-selection strategy (mean ± std over seeds).

    python tools/pruning_curve.py runs/tfdp_pruning [more run folders or parents ...]
                                  [--metric mask_AP] [--group-by KEY[,KEY...]] [--out DIR]

Every folder holding a ``results.jsonl`` under the given paths is a run (found and read as by
``alseg-compare``). A pruning run trains once on the kept subset (``al.rounds=0``); its last record
is used. Runs are grouped by strategy (``initial_strategy`` of the record, else
``al.initial_strategy.name`` of ``config.yaml``) and by pruning rate (``pruning_rate`` of the record,
else ``1 - labeled_images / pool_images``, rounded to 3 decimals); ``--group-by`` replaces the
strategy by config or record keys, as in alseg-compare (e.g. ``al.initial_strategy.name,
al.initial_strategy.variant`` to keep TFDP's variants apart; a key a run does not have is left out of its label,
as in alseg-compare: ``random``, not ``random / ?``). Per group: ``n`` runs, mean kept
images, mean annotation hours of the kept subsets (``hours`` of the record; rules that keep
instance-rich images cost more at the same rate), and mean ± std of the metric (std: sample std,
ddof=1, as alseg-compare). Writes ``pruning.csv``, ``pruning.md`` and ``pruning.png`` (the metric
against the pruning rate and against the hours, one line per strategy, a band of ± one std) to
``--out``. With ``--baseline STRATEGY`` (a curve's label, e.g. ``random``) every other point is
also differenced against the baseline's point at the same rate, run by run on ``--pair-by`` (default
``seed``): mean ± std of the differences and the two-sided paired t-test p (``alseg.tools.paired``),
a column of the tables and three of pruning.csv.

Input is checked before anything is written, as by alseg-compare (``alseg.tools.compare.number``):
the metric, ``pruning_rate``, ``labeled_images``, ``pool_images`` and ``hours`` must be finite numbers of
magnitude at most 1e12 where given (null or NaN: missing; a run whose metric is missing is left out,
with a note); ``pruning_rate`` in [0, 1]; without it, 0 <= ``labeled_images`` <= ``pool_images``,
``pool_images`` > 0, ``hours`` >= 0, and a fault names those fields. Strategy names and the metric are shown
literally in the figure (mathtext off, ``alseg.plots``). All outputs are made first (the PNG in memory)
and then moved over the previous ones: a fault leaves them as they were.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from alseg.config_check import is_number
from alseg.errors import AlsegError
from alseg.spread import seed_std
from alseg.files import printable
from alseg.tools import paired
from alseg.tools.compare import (MISSING, Run, group_runs, number, print_grouped_table,
                                 read_finished_runs, repeated, write_outputs)

PROG = "pruning_curve"
DEFAULT_METRIC = "mask_AP"
DECIMALS = 3


class PruningCurveError(AlsegError):
    """Bad input to pruning_curve."""


@dataclass
class Point:
    strategy: str
    rate: float  # pruning rate, rounded to DECIMALS
    runs: list[Run] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    kept: list[float] = field(default_factory=list)  # labeled_images of the runs that have it
    hours: list[float] = field(default_factory=list)  # annotation hours of the runs that have them

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(seed_std(self.values))

    @property
    def kept_mean(self) -> float | None:
        return float(np.mean(self.kept)) if self.kept else None

    @property
    def hours_mean(self) -> float | None:
        """Mean annotation hours of the kept subsets; None unless every run of the point has them."""
        return float(np.mean(self.hours)) if self.hours and len(self.hours) == self.n else None


def _where(run: Run) -> str:
    k = run.records[-1]["round"]
    return f"{run.results}, line {run.lines[k]}"


def strategy_of(run: Run) -> str | None:
    v = run.records[-1].get("initial_strategy")
    if v is None:
        v = run.record_value("initial_strategy")
    if v is None:
        v = run.config_value("al.initial_strategy.name")
    return None if v is None else printable(v)


def _number(run: Run, key: str) -> float | None:
    """The last record's ``key``: None where missing (absent, null, NaN); else a finite number."""
    return number(run.records[-1], key, _where(run), PruningCurveError)


def pruning_rate_of(run: Run) -> float:
    """``pruning_rate`` of the last record, else 1 - labeled_images / pool_images; a fault names the
    fields the record has."""
    rec = run.records[-1]
    rate = _number(run, "pruning_rate")
    labeled, pool = _number(run, "labeled_images"), _number(run, "pool_images")
    if labeled is not None and labeled < 0:
        raise PruningCurveError(f"{_where(run)}: 'labeled_images' must be >= 0, got {labeled:g}")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise PruningCurveError(f"{_where(run)}: 'pruning_rate' must be in [0, 1], got {rate:g}")
    else:
        if labeled is None or pool is None:
            lacks = " and ".join(f"'{k}'" + ("" if k not in rec else f" ({rec[k]!r})")
                                 for k, v in (("labeled_images", labeled), ("pool_images", pool)) if v is None)
            raise PruningCurveError(f"{_where(run)}: no 'pruning_rate', and no {lacks} to compute it from")
        if pool <= 0:
            raise PruningCurveError(f"{_where(run)}: 'pool_images' must be > 0, got {pool:g}")
        if labeled > pool:
            raise PruningCurveError(f"{_where(run)}: 'labeled_images' ({labeled:g}) exceeds 'pool_images' "
                                    f"({pool:g}); no pruning rate (1 - labeled / pool) in [0, 1]")
        rate = 1.0 - labeled / pool
    return round(float(rate), DECIMALS) + 0.0  # + 0.0: no '-0.0'


def collect(paths: Sequence[str | os.PathLike], metric: str, notes: list[str],
            group_by: Sequence[str] | None = None) -> list[Point]:
    """Runs under ``paths`` -> one Point per (strategy, pruning rate), sorted by strategy then rate.
    ``group_by``: config / record keys whose values (joined by " / ") stand for the strategy."""
    runs = read_finished_runs(paths, notes)
    if not any(metric in r.records[-1] for r in runs):
        available = sorted({k for r in runs for k, v in r.records[-1].items() if is_number(v)})
        raise PruningCurveError(f"--metric {metric}: in no run's last record; available: {', '.join(available)}")
    label_of = {}
    if group_by:
        label_of = {id(r): label for label, rs in group_runs(runs, group_by, notes).items() for r in rs}

    points: dict[tuple[str, float], Point] = {}
    for run in runs:
        if len(run.records) > 1:
            notes.append(f"{run.name}: {len(run.records)} rounds (not a pruning run?); the last, round "
                         f"{run.records[-1]['round']}, is used")
        rec = run.records[-1]
        rate = pruning_rate_of(run)
        strategy = label_of[id(run)] if group_by else strategy_of(run)
        if strategy is None:
            strategy = MISSING
            notes.append(f"{run.name}: no 'initial_strategy' in results.jsonl nor 'al.initial_strategy.name' "
                         f"in config.yaml; grouped under '{MISSING}'")
        v = _number(run, metric)
        if v is None:
            what = "no" if metric not in rec else "a missing (null or NaN)"
            notes.append(f"{run.name}: {what} '{metric}' in its last record; left out")
            continue
        p = points.setdefault((strategy, rate), Point(strategy, rate))
        p.runs.append(run)
        p.values.append(v)
        kept = _number(run, "labeled_images")
        if kept is not None:
            p.kept.append(kept)
        hours = _number(run, "hours")
        if hours is not None:
            if hours < 0:
                raise PruningCurveError(f"{_where(run)}: 'hours' must be >= 0, got {hours:g}")
            p.hours.append(hours)
    for p in points.values():
        dup = repeated([r.value("seed") for r in p.runs])
        if dup:
            notes.append(f"{p.strategy} at pruning rate {p.rate:g}: seed(s) {', '.join(map(str, dup))} "
                         f"appear in more than one run")
    return [points[k] for k in sorted(points)]


# --------------------------------------------------------------------------- output
def _fmt_rate(rate: float) -> str:
    return f"{rate:.{DECIMALS}f}"


def _fmt_kept(p: Point) -> str:
    k = p.kept_mean
    if k is None:
        return "-"
    return str(int(k)) if float(k).is_integer() else f"{k:.1f}"


def _fmt_hours(p: Point) -> str:
    h = p.hours_mean
    return "-" if h is None else f"{h:.2f}"


def _fmt_value(p: Point, digits: int = 3) -> str:
    return f"{p.mean:.{digits}f}" if p.n == 1 else f"{p.mean:.{digits}f} ± {p.std:.{digits}f}"


Diffs = dict[tuple[str, float], paired.Difference | None]  # (strategy, rate) -> vs the baseline


def paired_points(points: list[Point], baseline: str, key: str, notes: list[str]) -> Diffs:
    """Each non-baseline point's paired difference to the baseline's point at the same rate (runs
    matched on ``key``); None where the baseline has no run at that rate or no run pairs. Raises
    PruningCurveError when ``baseline`` is no curve's label or a pairing is missing or ambiguous."""
    paired.check_baseline(baseline, [p.strategy for p in points], PruningCurveError)
    base = {p.rate: p for p in points if p.strategy == baseline}
    diffs: Diffs = {}
    for p in points:
        if p.strategy == baseline:
            continue
        b = base.get(p.rate)
        if b is None:
            notes.append(f"{p.strategy} at pruning rate {p.rate:g}: no {baseline} run at this rate; no paired difference")
            diffs[(p.strategy, p.rate)] = None
            continue
        value = {id(r): v for pt in (p, b) for r, v in zip(pt.runs, pt.values)}
        pairs = paired.pair_runs(p.runs, b.runs, f"{p.strategy} at pruning rate {p.rate:g}", baseline, key,
                                 notes, PruningCurveError)
        d = [value[id(r)] - value[id(s)] for r, s in pairs]
        diffs[(p.strategy, p.rate)] = paired.difference(d) if d else None
    return diffs


def table_rows(points: list[Point], metric: str, group: str = "strategy",
               diffs: Diffs | None = None, baseline: str = "") -> tuple[list[str], list[list[str]]]:
    header = [group, "pruning rate", "kept images", "hours", metric, "n"]
    if diffs is not None:
        header.append(f"Δ vs {printable(baseline)}")
    rows = []
    for p in points:
        row = [p.strategy, _fmt_rate(p.rate), _fmt_kept(p), _fmt_hours(p), _fmt_value(p), str(p.n)]
        if diffs is not None:
            row.append(paired.fmt_difference(diffs.get((p.strategy, p.rate)), p.n) if p.strategy != baseline else "-")
        rows.append(row)
    return header, rows


def to_csv(points: list[Point], metric: str, group: str = "strategy", diffs: Diffs | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = [f"{metric}_diff_mean", f"{metric}_diff_std", f"{metric}_p", "n_pairs"] if diffs is not None else []
    w.writerow([group, "pruning_rate", "n", "kept_images", "hours", f"{metric}_mean", f"{metric}_std", *extra])
    for p in points:
        k, h = p.kept_mean, p.hours_mean
        row = [p.strategy, _fmt_rate(p.rate), p.n, "" if k is None else f"{k:.10g}",
               "" if h is None else f"{h:.10g}", f"{p.mean:.10g}", f"{p.std:.10g}" if p.n > 1 else ""]
        if diffs is not None:
            d = diffs.get((p.strategy, p.rate))
            row += (["", "", "", "0"] if d is None else
                    [f"{d.mean:.10g}", "" if d.std is None else f"{d.std:.10g}", "" if d.p is None else f"{d.p:.6g}",
                     str(d.n)])
        w.writerow(row)
    return buf.getvalue()


def to_markdown(points: list[Point], metric: str, notes: list[str], group: str = "strategy",
                diffs: Diffs | None = None, baseline: str = "") -> str:
    header, rows = table_rows(points, metric, group, diffs, baseline)

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    out += [line(r) for r in rows]
    out.append("")
    out.append(f"{metric}: mean ± std over the n runs (seeds) of each strategy and pruning rate; std is the "
               "sample std (ddof=1). Kept images, hours (annotation hours of the kept subset): mean. "
               "Pruning rate = 1 - kept images / pool images.")
    if diffs is not None:
        out.append(f"Δ vs {printable(baseline)}: per seed, the run minus the baseline's run at the same rate; "
                   "mean ± std over the pairs, two-sided paired t-test p.")
    if notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def print_table(points: list[Point], metric: str, notes: list[str], group: str = "strategy",
                diffs: Diffs | None = None, baseline: str = "") -> None:
    header, rows = table_rows(points, metric, group, diffs, baseline)
    print_grouped_table(f"{PROG}: {metric} (mean ± std over seeds)", header, rows, notes, [metric])


def curve_figure(points: list[Point], metric: str):
    """The metric against the pruning rate (left) and against the kept subset's annotation hours
    (right: pruning rules that keep instance-rich images cost more to annotate at the same rate),
    one line per strategy (mean), a band of ± one std (matplotlib Figure, open; laid out when drawn).
    Points without hours are left out of the right panel. Strategy names and the metric are shown
    literally."""
    from alseg.plots import plt

    fig, (ax, ax_h) = plt.subplots(1, 2, figsize=(12, 4.5), layout="tight", sharey=True)
    by_strategy: dict[str, list[Point]] = {}
    for p in points:
        by_strategy.setdefault(p.strategy, []).append(p)
    for strategy, ps in by_strategy.items():
        ps = sorted(ps, key=lambda p: p.rate)
        ns = sorted({p.n for p in ps})
        n = f" (n={ns[0]})" if len(ns) == 1 else f" (n={ns[0]}-{ns[-1]})"
        color = None
        for axis, xs in ((ax, [p.rate for p in ps]), (ax_h, [p.hours_mean for p in ps])):
            keep = [i for i, x in enumerate(xs) if x is not None]
            if not keep:
                continue
            x = np.array([xs[i] for i in keep])
            y = np.array([ps[i].mean for i in keep])
            s = np.array([ps[i].std for i in keep])
            order = np.argsort(x, kind="stable")
            x, y, s = x[order], y[order], s[order]
            (line,) = axis.plot(x, y, marker="o", color=color, label=strategy + n if axis is ax else None)
            color = line.get_color()
            if max(ns) > 1:
                axis.fill_between(x, y - s, y + s, alpha=0.2, color=color)
    ax.set_xlabel("pruning rate (1 - kept / pool images)")
    ax_h.set_xlabel("annotation hours of the kept subset")
    ax.set_ylabel(metric)
    for axis in (ax, ax_h):
        axis.grid(alpha=0.3)
    if by_strategy:
        ax.legend(fontsize=8)
    ax.set_title(f"{metric} against pruning rate (mean ± std over seeds)", fontsize=10)
    ax_h.set_title(f"{metric} against annotation hours", fontsize=10)
    return fig


def plot_curve(points: list[Point], metric: str, path: str | Path) -> Path:
    """Write ``curve_figure(points, metric)`` to ``path`` (PNG, atomically); returns the path."""
    from alseg.plots import save_figure

    return save_figure(curve_figure(points, metric), path)


def pruning_curve(paths: Sequence[str | os.PathLike], metric: str = DEFAULT_METRIC,
                  out: str | os.PathLike = ".", show: bool = True, group_by: Sequence[str] | None = None,
                  baseline: str | None = None, pair_by: str = "seed") -> list[Point]:
    """Read and group the runs (by strategy, or by the ``group_by`` keys); write pruning.csv,
    pruning.md and pruning.png to ``out``, with the paired differences to ``baseline`` where given.
    Raises PruningCurveError (one line) before anything is written."""
    out = Path(out)
    notes: list[str] = []
    points = collect(paths, metric, notes, group_by)
    group = " / ".join(group_by) if group_by else "strategy"
    diffs = paired_points(points, baseline, pair_by, notes) if baseline is not None else None
    from alseg.plots import figure_png

    # Everything is made before anything is written (the PNG in memory): a fault leaves the
    # previous outputs as they were.
    png = figure_png(curve_figure(points, metric), out / "pruning.png")
    write_outputs(out, {"pruning.csv": to_csv(points, metric, group, diffs),
                        "pruning.md": to_markdown(points, metric, notes, group, diffs, baseline or ""),
                        "pruning.png": png}, PruningCurveError)
    if show:
        print_table(points, metric, notes, group, diffs, baseline or "")
        n_runs = sum(p.n for p in points)
        n_strat = len({p.strategy for p in points})
        print(f"{n_runs} run(s), {n_strat} group(s), {len(points)} point(s); wrote "
              f"{out / 'pruning.csv'}, {out / 'pruning.md'}, {out / 'pruning.png'}")
    return points


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python tools/pruning_curve.py runs/tfdp_pruning --out reports/tfdp")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_PARENT",
                   help="run folders, or folders searched recursively for run folders (results.jsonl)")
    p.add_argument("--metric", default=DEFAULT_METRIC, metavar="KEY",
                   help="result key to plot (default: %(default)s)")
    p.add_argument("--group-by", default=None, metavar="KEY[,KEY...]",
                   help="config or record keys that name a curve (default: the initial-selection strategy), "
                        "e.g. al.initial_strategy.name,al.initial_strategy.variant")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder for pruning.csv/.md/.png (default: .)")
    paired.add_arguments(p, "a curve's label (e.g. random): difference every other point against its point at "
                            "the same rate, run by run (mean ± std, paired t-test p)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        group_by = [k.strip() for k in args.group_by.split(",") if k.strip()] if args.group_by is not None else None
        if group_by is not None and not group_by:
            raise PruningCurveError("--group-by: give one or more keys separated by commas")
        pruning_curve(args.paths, args.metric.strip(), args.out, group_by=group_by, baseline=args.baseline,
                      pair_by=args.pair_by)
    except AlsegError as e:
        msg = " ".join(str(e).split())  # one line, always
        parser.exit(2, f"{PROG}: error: {msg}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
