"""Paired differences between groups of runs and a baseline group (``alseg-compare --baseline``).

Every strategy of a comparison over seeds starts from the same round 0 per seed (``al.initial_run``),
so a strategy's run and the baseline's run of one seed share their round 0 and differ only by what
the strategy chose. Differencing them per seed removes the spread that round 0 and the seed put into
both, which the mean ± std of each group keeps. Per group, round and metric: the number of pairs n,
the mean and sample std (ddof=1) of the differences (group minus baseline) and the two-sided paired
t-test p (Student's t on n - 1 degrees of freedom, ``scipy.stats.ttest_rel``). With 3 seeds p < 0.05
needs |mean| > 2.48 std.

Pairs are matched on a key of config.yaml or the records (``--pair-by``, default ``seed``). A run
without it, or two runs of one group with the same value, is an error (one line): a pairing must not
be guessed. A round or metric that only some pairs have is differenced over those pairs (n says how
many); values missing on either side (null, NaN) leave that pair out.
"""

from __future__ import annotations

import argparse
import csv
import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from alseg.config_check import is_number
from alseg.errors import AlsegError
from alseg.files import printable
from alseg.spread import seed_std

if TYPE_CHECKING:  # the Run class of alseg.tools.compare, which imports this module
    from alseg.tools.compare import Run


@dataclass(frozen=True)
class Difference:
    """Paired difference of one metric at one round: ``n`` pairs, mean and sample std of
    (group - baseline) in the metric's units (AP: 0-1), two-sided paired t-test ``p``. ``std`` is
    None for one pair; ``p`` is None for one pair or when every difference is the same (std 0,
    e.g. round 0 from a shared initial run)."""

    n: int
    mean: float
    std: float | None
    p: float | None


@dataclass
class PairedRow:
    group: str
    round: int
    differences: dict[str, Difference | None]  # metric -> None where no pair has it


def add_arguments(parser: argparse.ArgumentParser, baseline_help: str) -> None:
    """``--baseline LABEL`` and ``--pair-by KEY`` (default ``seed``), as alseg-compare and
    pruning_curve take them."""
    parser.add_argument("--baseline", metavar="LABEL", help=baseline_help)
    parser.add_argument("--pair-by", default="seed", metavar="KEY",
                        help="key that pairs a run with the baseline's run (default: seed)")


def _number(v) -> float | None:
    """A record's value as a float; None where it is missing (null, NaN) or not a number."""
    return float(v) if is_number(v) and not np.isnan(v) else None


def difference(values: Sequence[float]) -> Difference:
    """``values``: the per-pair differences (group - baseline), at least one."""
    d = np.asarray(values, dtype=float)
    n = len(d)
    std = float(seed_std(d)) if n > 1 else None
    p = None
    # differences equal up to float rounding (0.3 - 0.2 against 0.2 - 0.1) are equal: no t-test
    if n > 1 and std is not None and std > 1e-12 * max(1.0, float(np.abs(d).max())):
        from scipy import stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_1samp(d, 0.0).pvalue)  # = ttest_rel(group, baseline)
    return Difference(n, float(d.mean()), std, p)


def by_pair_key(runs: list[Run], group: str, key: str, error: type[AlsegError]) -> dict[str, Run]:
    """The runs of one group keyed by their ``key`` value (shown as text: a seed may be any value).
    Raises ``error`` when a run lacks the key or two runs share a value."""
    keyed: dict[str, Run] = {}
    for run in runs:
        v = run.value(key)
        if v is None:
            raise error(f"{run.name}: no '{key}' in config.yaml or results.jsonl; --pair-by {key} "
                        "needs it in every run of the paired groups")
        k = printable(v)
        if k in keyed:
            raise error(f"group {group}: runs {keyed[k].name} and {run.name} both have {key}={k}; "
                        f"pairing needs one run per {key} in a group")
        keyed[k] = run
    return keyed


def paired_differences(groups: dict[str, list[Run]], baseline: str, metrics: Sequence[str], key: str,
                       notes: list[str], error: type[AlsegError]) -> list[PairedRow]:
    """Every group but ``baseline`` differenced against it, run by run on ``key``, per round that
    both runs of a pair have. Raises ``error`` when ``baseline`` is no group's label, or (see
    ``by_pair_key``) when a pairing is missing or ambiguous. Unpaired runs become notes."""
    check_baseline(baseline, list(groups), error)
    rows: list[PairedRow] = []
    for label, runs in groups.items():
        if label == baseline:
            continue
        pairs = pair_runs(runs, groups[baseline], label, baseline, key, notes, error)
        rounds = sorted({r for a, b in pairs for r in set(a.rounds) & set(b.rounds)})
        for r in rounds:
            diffs: dict[str, Difference | None] = {}
            for m in metrics:
                values = []
                for a, b in pairs:
                    if r in a.rounds and r in b.rounds:
                        va, vb = _number(a.record(r).get(m)), _number(b.record(r).get(m))
                        if va is not None and vb is not None:
                            values.append(va - vb)
                diffs[m] = difference(values) if values else None
            rows.append(PairedRow(label, r, diffs))
    return rows


def check_baseline(baseline: str, labels: Sequence[str], error: type[AlsegError]) -> None:
    """Raises ``error`` (one line listing the labels) when ``baseline`` is not among ``labels``."""
    if baseline not in labels:
        raise error(f"--baseline {baseline!r}: no group has this label; the groups are "
                    + ", ".join(repr(g) for g in dict.fromkeys(labels)))


def pair_runs(runs: list[Run], base_runs: list[Run], label: str, baseline: str, key: str, notes: list[str],
              error: type[AlsegError]) -> list[tuple[Run, Run]]:
    """(run, baseline run) with the same ``key`` value; a run without a baseline partner becomes a
    note. Raises ``error`` as ``by_pair_key``."""
    keyed = by_pair_key(runs, label, key, error)
    base = by_pair_key(base_runs, baseline, key, error)
    alone = [k for k in keyed if k not in base]
    if alone:
        notes.append(f"group {label}: {key} {', '.join(alone)} without a {baseline} run; "
                     "left out of the paired differences")
    return [(keyed[k], base[k]) for k in keyed if k in base]


def fmt_difference(d: Difference | None, n_expected: int | None = None, digits: int = 3) -> str:
    """``+0.020 ± 0.008 (p 0.05)``; ``(n=2)`` added when fewer pairs than ``n_expected``."""
    if d is None:
        return "-"
    s = f"{d.mean:+.{digits}f}"
    if d.std is not None:
        s += f" ± {d.std:.{digits}f}"
    if d.p is not None:
        s += " (p <0.01)" if d.p < 0.01 else f" (p {d.p:.2f})"
    if n_expected is not None and d.n < n_expected:
        s += f" (n={d.n})"
    return s


def table_rows(rows: list[PairedRow], metrics: Sequence[str]) -> list[list[str]]:
    """One row per group and round: group, round, pairs, then one cell per metric."""
    out = []
    for row in rows:
        n = max((d.n for d in row.differences.values() if d is not None), default=0)
        out.append([row.group, str(row.round), str(n),
                    *(fmt_difference(row.differences[m], n) for m in metrics)])
    return out


def to_csv(rows: list[PairedRow], metrics: Sequence[str], group_header: str, baseline: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([group_header, "baseline", "round",
                *(c for m in metrics for c in (f"{m}_n_pairs", f"{m}_diff_mean", f"{m}_diff_std", f"{m}_p"))])
    for row in rows:
        cells = []
        for m in metrics:
            d = row.differences[m]
            if d is None:
                cells += ["0", "", "", ""]
            else:
                cells += [str(d.n), f"{d.mean:.10g}", "" if d.std is None else f"{d.std:.10g}",
                          "" if d.p is None else f"{d.p:.6g}"]
        w.writerow([row.group, baseline, row.round, *cells])
    return buf.getvalue()
