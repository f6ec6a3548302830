"""alseg-compare: compare active-learning runs (strategies x seeds) round by round.

    alseg-compare runs/my_experiment [more run folders or parents ...]
                  [--metric mask_AP --metric box_AP50] [--group-by strategy,dataset.name] [--out DIR]
                  [--baseline random [--pair-by seed]]

Every folder holding a ``results.jsonl`` under the given paths is a run. Runs are grouped by
strategy (``strategy`` of the result records, else ``strategy.name`` of ``config.yaml``) or by the
``--group-by`` keys (dotted keys of ``config.yaml``, else of the records; a key a run lacks is left out
of its label, with a note). Per group and round the
table gives the mean labeled images and annotation hours and ``mean ± std`` of each metric over the
group's runs (seeds); std is the sample std (ddof=1, ``alseg.spread.seed_std``). A round is
aggregated only where every run of its group has it; incomplete runs are listed under the table,
and so is a group whose runs differ in a ``model`` or ``strategy`` setting that no ``--group-by``
key separates (APIS's entropy and variance runs are both ``apis``; a Mask R-CNN and a CondInst run).
Writes ``compare.csv``, ``runs.csv`` (every run's values per round, with its seed), ``compare.md``
and ``compare.png`` (AP against labeled images, or points or
steps, and hours: the mean over seeds, a band of ± 1 std, the number of seeds per group in the
legend, the experiment folder and the metrics in the title) to ``--out``. With ``--baseline LABEL``,
every other group is also differenced against that group run by run (runs paired on ``--pair-by``,
default ``seed``: the same round 0 per seed), per round: mean ± std of the differences and the paired
t-test p (``alseg.tools.paired``), in ``paired.csv``, a second table of ``compare.md`` and the terminal.

Input is checked before anything is written; a fault is one line naming the file, the line and the
key, and exit status 2. The labeled images, hours and compared metrics of a record must be numbers;
null or NaN (a metric that could not be computed) is missing, anything else must be finite and at
most ``MAX_ABS`` (1e12) in magnitude: no AP, image count, hour or second count comes near it, and
below it the mean and std over seeds (and the plot) cannot overflow. Group and folder names are
shown literally in the figure (mathtext off, ``alseg.plots``: a ``$`` is no mathtext). The outputs are
made first (the PNG in memory), then written to temporary files in ``--out`` and only then moved
over the previous ones: a fault leaves the previous outputs as they were.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alseg.config_check import is_number
from alseg.errors import AlsegError, json_value_problem
from alseg.files import StagedFiles, printable
from alseg.spread import seed_std
from alseg.tools import paired

PROG = "alseg-compare"
DEFAULT_METRICS = ("mask_AP", "mask_AP50", "box_AP")
X_KEYS = ("labeled_images", "hours")
MISSING = "?"
# config sections whose settings must agree within a group: runs of different models or strategy
# parameters (APIS entropy and variance both named ``apis``) averaged together get a note
SETTING_SECTIONS = ("model", "strategy")
MAX_ABS = 1e12  # largest magnitude of a compared value (see the module docstring)


class CompareError(AlsegError):
    """Bad input to alseg-compare."""


def _show(path: Path) -> str:
    """A path as the user would type it: relative to the working directory where possible."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def repeated(values: Sequence[Any]) -> list[str]:
    """The values (as ``alseg.files.printable`` shows them) that occur more than once, None left
    out; any type, a list or mapping from config.yaml included (compared as shown)."""
    shown = [printable(v) for v in values if v is not None]
    return sorted({v for v in shown if shown.count(v) > 1})


def _intervals(rounds: Sequence[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    out: list[tuple[int, int]] = []
    for k in sorted(set(rounds)):
        if out and k == out[-1][1] + 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out


def _gaps(rounds: Sequence[int], stop: int) -> list[tuple[int, int]]:
    """The intervals of 0 .. stop - 1 not in ``rounds``, without listing them one by one (a round
    number or al.rounds may be huge): ([1, 2, 5], 8) -> [(0, 0), (3, 4), (6, 7)]."""
    out, nxt = [], 0
    for lo, hi in _intervals(rounds):
        if lo >= stop:
            break
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt < stop:
        out.append((nxt, stop - 1))
    return out


def _fmt_intervals(intervals: Sequence[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in intervals) or "none"


def _ranges(rounds: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    return _fmt_intervals(_intervals(rounds))


def number(rec: dict, key: str, where: str, error: type[AlsegError] | None = None) -> float | None:
    """``rec[key]`` as a float, None where missing (absent, null or NaN). Raises ``error`` (default
    CompareError) naming ``where`` and the key unless it is a finite number of magnitude at most
    ``MAX_ABS``."""
    error = error or CompareError
    v = rec.get(key)
    if _missing(v):
        return None
    if not is_number(v):
        raise error(f"{where}: '{key}' must be a number, got {v!r}")
    if not abs(v) <= MAX_ABS:  # also inf; a huge int is compared exactly
        raise error(f"{where}: '{key}' must be a finite number of magnitude at most {MAX_ABS:g}, got {v!r}")
    return float(v)


# --------------------------------------------------------------------------- reading runs
@dataclass
class Run:
    path: Path  # the run folder
    results: Path
    records: list[dict]  # sorted by round, one per round
    lines: dict[int, int]  # round -> line number in results.jsonl
    notes: list[str] = field(default_factory=list)
    _config: dict | None = None
    _config_read: bool = False

    @property
    def name(self) -> str:
        return _show(self.path)

    @property
    def rounds(self) -> list[int]:
        return [r["round"] for r in self.records]

    def record(self, k: int) -> dict:
        return next(r for r in self.records if r["round"] == k)

    def config(self) -> dict | None:
        """config.yaml as a plain dict (None where the run has none)."""
        if not self._config_read:
            self._config_read = True
            path = self.path / "config.yaml"
            if path.is_file():
                from omegaconf import OmegaConf

                try:
                    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
                except Exception as e:  # yaml / omegaconf parse errors
                    msg = " ".join(str(e).split())
                    raise CompareError(f"{path}: not a valid config.yaml ({msg})") from None
                self._config = cfg if isinstance(cfg, dict) else None
        return self._config

    def _config_lookup(self, key: str) -> tuple[bool, Any]:
        """(whether config.yaml holds the dotted ``key``, its value or None)."""
        node: Any = self.config()
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def config_value(self, key: str) -> Any:
        return self._config_lookup(key)[1]

    def has_key(self, key: str) -> bool:
        """Whether config.yaml holds ``key`` (even set to null) or a record has it."""
        return self._config_lookup(key)[0] or any(key in r for r in self.records)

    def record_value(self, key: str) -> Any:
        values = [r[key] for r in self.records if key in r]
        return values[0] if values else None

    def value(self, key: str) -> Any:
        """A grouping key: for 'strategy' the records first, else config.yaml first."""
        if key == "strategy":
            v = self.record_value("strategy")
            return v if v is not None else self.config_value("strategy.name")
        v = self.config_value(key)
        return v if v is not None else self.record_value(key)

    def expected_rounds(self) -> int | None:
        """al.rounds + 1 (the initial round) from config.yaml, when known."""
        r = self.config_value("al.rounds")
        return r + 1 if isinstance(r, int) and not isinstance(r, bool) else None


def find_results(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Every results.jsonl under the given run folders / parents (or given directly)."""
    found: dict[Path, Path] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise CompareError(f"{p}: no such file or directory")
        if p.is_file():
            if p.name != "results.jsonl":
                raise CompareError(f"{p}: not a run folder (expected a folder holding results.jsonl)")
            hits = [p]
        else:
            try:
                hits = sorted(q for q in p.rglob("results.jsonl") if q.is_file())
            except OSError as e:
                raise CompareError(f"{p}: cannot be searched ({e})") from None
            if not hits:
                raise CompareError(f"{p}: no run folder (no results.jsonl) found under it")
        for h in hits:
            found.setdefault(h.resolve(), h)
    return sorted(found.values())


def read_results(path: Path) -> Run:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CompareError(f"{path}: cannot be read ({e})") from None
    by_round: dict[int, dict] = {}
    lines: dict[int, int] = {}
    notes = []
    # "\n" only: str.splitlines also splits at U+2028, U+0085, form feeds ..., which JSON strings
    # may hold as they are (a valid record would be cut in two, and line numbers would be off)
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CompareError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except (RecursionError, ValueError) as e:  # deep nesting, an integer of thousands of digits
            raise CompareError(f"{where}: {json_value_problem(e)}") from None
        if not isinstance(rec, dict):
            raise CompareError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        k = rec.get("round")
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise CompareError(f"{where}: needs an integer 'round' >= 0, got {k!r}")
        for key in X_KEYS:
            number(rec, key, where)
        if k in by_round:
            notes.append(f"{_show(path)}: round {k} appears on lines {lines[k]} and {n}; line {n} is used")
        by_round[k] = rec
        lines[k] = n
    records = [by_round[k] for k in sorted(by_round)]
    return Run(path.parent, path, records, lines, notes)



def read_finished_runs(paths: Sequence[str | os.PathLike], notes: list[str]) -> list[Run]:
    """Every run under ``paths`` with at least one finished round; the others become notes.
    Raises CompareError when none has any."""
    runs = []
    for res in find_results(paths):
        run = read_results(res)
        notes += run.notes
        if not run.records:
            notes.append(f"{run.name}: results.jsonl has no rounds yet; skipped")
            continue
        runs.append(run)
    if not runs:
        raise CompareError(f"{', '.join(map(str, paths))}: no run with any finished round (results.jsonl all empty)")
    return runs


# --------------------------------------------------------------------------- aggregation
@dataclass
class Row:
    group: str
    round: int
    n: int
    labeled_images: tuple[float, float] | None  # mean, std
    hours: tuple[float, float] | None
    metrics: dict[str, tuple[float, float] | None]


@dataclass
class Group:
    label: str
    runs: list[Run]
    rows: list[Row] = field(default_factory=list)
    plot_rounds: list[int] = field(default_factory=list)


def _missing(v: Any) -> bool:
    """A value a run does not have: null in results.jsonl (a metric that could not be computed,
    e.g. APl without any large object) or NaN."""
    return v is None or (isinstance(v, float) and np.isnan(v))


def _has(rec: dict, key: str) -> bool:
    return key in rec and not _missing(rec[key])


def _mean_std(runs: list[Run], k: int, key: str) -> tuple[float, float] | None:
    """Mean and sample std (``seed_std``) over runs of one round's value; None unless every run has it
    (absent, null and NaN are missing)."""
    vals = []
    for run in runs:
        v = number(run.record(k), key, f"{run.results}, line {run.lines[k]}")
        if v is None:
            return None
        vals.append(v)
    a = np.asarray(vals, dtype=float)  # |values| <= MAX_ABS: no overflow
    return float(a.mean()), float(seed_std(a))


def check_values(runs: list[Run], keys: Sequence[str], error: type[AlsegError] | None = None) -> None:
    """Every used record's ``keys``: missing, or a finite number (``number``); up front, before any
    output."""
    for run in runs:
        for rec in run.records:
            for key in keys:
                number(rec, key, f"{run.results}, line {run.lines[rec['round']]}", error)


def _flatten(node: Any, prefix: str, out: dict[str, str]) -> dict[str, str]:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = json.dumps(node, sort_keys=True, default=str)
    return out


def differing_settings(configs: Sequence[Any], section: str) -> list[str]:
    """The dotted keys (``model.point_supervision``) whose values differ between the ``section``
    dicts of several runs' config.yaml (a key one run lacks differs); runs without the section
    (None) are left out. Sorted; empty when the runs agree."""
    flat = [_flatten(c, section, {}) for c in configs if isinstance(c, dict)]
    if len(flat) < 2:
        return []
    keys = set().union(*flat)
    return sorted(k for k in keys if len({f.get(k, "<absent>") for f in flat}) > 1)


def group_runs(runs: list[Run], keys: Sequence[str], notes: list[str]) -> dict[str, list[Run]]:
    """Runs grouped by the values of ``keys`` (config or record keys), labelled ``"v1 / v2"``. A key a
    run does not have is left out of its label (a random baseline has no TFDP variant: ``random``,
    not ``random / ?``), with a note; a run with none of the keys is labelled ``?``.

    A key every run has but leaves unset (null, e.g. ``strategy.scales`` in a sweep without the
    S set) is left out of the labels, with a note. Raises CompareError when a key is found in no run
    at all (a typo)."""
    full: dict[int, str] = {}  # id(run) -> label with MISSING in place of each missing value
    short: dict[int, str] = {}  # id(run) -> label without the missing values
    found_any = {k: False for k in keys}
    without: dict[str, list[str]] = {}  # key -> names of the runs without it
    for run in runs:
        parts = []
        for key in keys:
            v = run.value(key)
            if v is None:
                without.setdefault(key, []).append(run.name)
                parts.append(None)
            else:
                found_any[key] = True
                parts.append(printable(v))
        full[id(run)] = " / ".join(MISSING if p is None else p for p in parts)
        short[id(run)] = " / ".join(p for p in parts if p is not None) or MISSING
    owners: dict[str, set[str]] = {}  # short label -> the full labels it stands for
    for i, label in short.items():
        owners.setdefault(label, set()).add(full[i])
    # where leaving values out would merge different groups, those runs keep the '?' form
    labels = {i: label if len(owners[label]) == 1 else full[i] for i, label in short.items()}
    missing = [k for k, ok in found_any.items() if not ok]
    unknown = [k for k in missing if not any(run.has_key(k) for run in runs)]
    if unknown:
        raise CompareError(f"--group-by {unknown[0]}: not found in any run's config.yaml or results.jsonl")
    for key in missing:
        notes.append(f"'{key}' is unset (null) in every run; left out of the labels")
    for key in (k for k in keys if k in without and k not in missing):
        names = without[key]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        how = "grouped under '?'" if len(keys) == 1 else "left out of their labels"
        notes.append(f"no '{key}' in config.yaml or results.jsonl of {len(names)} run(s) ({shown}); {how}")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(labels[id(run)], []).append(run)
    return dict(sorted(groups.items()))


def aggregate(label: str, runs: list[Run], metrics: Sequence[str], keys: Sequence[str], notes: list[str]) -> Group:
    g = Group(label, runs)
    sets = [set(r.rounds) for r in runs]
    common = sorted(set.intersection(*sets))
    union = set.union(*sets)
    expected = [r.expected_rounds() for r in runs]
    target = max([max(union) + 1] + [e for e in expected if e])
    for run in runs:
        missing = _gaps(run.rounds, target)  # intervals: target may be huge (al.rounds: 1e12)
        if missing:
            notes.append(f"incomplete run {run.name} ({label}): has rounds {_ranges(run.rounds)}, "
                         f"lacks {_fmt_intervals(missing)}")
    dropped = sorted(union - set(common))
    if dropped:
        notes.append(f"group {label}: round(s) {_ranges(dropped)} not aggregated (not in all {len(runs)} runs)")
    # Seeds: a seed counted twice usually means the same run was found twice (e.g. copied folders).
    dup = repeated([r.value("seed") for r in runs])
    if dup:
        notes.append(f"group {label}: seed(s) {', '.join(map(str, dup))} appear in more than one run")
    for key in ("experiment_name", "dataset.name"):
        if key in keys:
            continue
        vals = sorted({printable(v) for v in (r.value(key) for r in runs) if v is not None})
        if len(vals) > 1:
            notes.append(f"group {label} mixes {key} values {', '.join(vals)} "
                         f"(add --group-by {','.join([*keys, key])} to separate them)")
    grouped = ["strategy.name" if g == "strategy" else g for g in keys]
    differing = [k for section in SETTING_SECTIONS
                 for k in differing_settings([r.config_value(section) for r in runs], section)
                 if not any(k == g or k.startswith(g + ".") or g.startswith(k + ".") for g in grouped)]
    if differing:
        shown = ", ".join(differing[:3]) + (f" and {len(differing) - 3} more" if len(differing) > 3 else "")
        notes.append(f"group {label} mixes runs whose {shown} differ "
                     f"(add --group-by {','.join([*keys, differing[0]])} to separate them)")
    for k in common:
        row = Row(label, k, len(runs), _mean_std(runs, k, "labeled_images"), _mean_std(runs, k, "hours"),
                  {m: _mean_std(runs, k, m) for m in metrics})
        g.rows.append(row)
        partial = [m for m in metrics if row.metrics[m] is None and any(_has(r.record(k), m) for r in runs)]
        if partial:
            notes.append(f"group {label}, round {k}: {', '.join(partial)} missing in some runs; not aggregated")
        present = [m for m in metrics if any(_has(r.record(k), m) for r in runs)]
        if row.labeled_images and row.hours and not partial and present:
            g.plot_rounds.append(k)
    return g


# --------------------------------------------------------------------------- output
def _fmt_ms(ms: tuple[float, float] | None, n: int, digits: int = 3) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fmt_count(ms: tuple[float, float] | None) -> str:
    if ms is None:
        return "-"
    mean, std = ms
    if std == 0 and float(mean).is_integer():
        return str(int(mean))
    return f"{mean:.1f} ± {std:.1f}"


def table_rows(groups: list[Group], metrics: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["round", "labeled images", "hours", *metrics, "n seeds"]
    rows = []
    for g in groups:
        for r in g.rows:
            rows.append([g.label, str(r.round), _fmt_count(r.labeled_images),
                         "-" if r.hours is None else f"{r.hours[0]:.2f}",
                         *(_fmt_ms(r.metrics[m], r.n) for m in metrics), str(r.n)])
    return header, rows


def to_csv(groups: list[Group], metrics: Sequence[str], group_header: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([group_header, "round", "n_seeds", "labeled_images", "labeled_images_std", "hours", "hours_std",
                *(c for m in metrics for c in (f"{m}_mean", f"{m}_std"))])

    def cells(ms, n):
        if ms is None:
            return ["", ""]
        return [f"{ms[0]:.10g}", f"{ms[1]:.10g}" if n > 1 else ""]

    for g in groups:
        for r in g.rows:
            w.writerow([g.label, r.round, r.n, *cells(r.labeled_images, r.n), *cells(r.hours, r.n),
                        *(c for m in metrics for c in cells(r.metrics[m], r.n))])
    return buf.getvalue()


def runs_csv(groups: list[Group], metrics: Sequence[str], group_header: str) -> str:
    """One row per run and round: the values the means were taken over (and the paired differences
    can be taken from), so that a comparison can be audited or re-paired without the run folders."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([group_header, "run", "seed", "round", *X_KEYS, *metrics])

    def cell(v):
        return f"{v:.10g}" if is_number(v) and not _missing(v) else ""

    for g in groups:
        for run in g.runs:
            seed = run.value("seed")
            for rec in run.records:
                w.writerow([g.label, run.name, "" if seed is None else printable(seed), rec["round"],
                            *(cell(rec.get(k)) for k in (*X_KEYS, *metrics))])
    return buf.getvalue()


def to_markdown(groups: list[Group], metrics: Sequence[str], group_header: str, notes: list[str]) -> str:
    header, rows = table_rows(groups, metrics)
    header = [group_header, *header]

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(header), "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    out += [line(r) for r in rows]
    out.append("")
    out.append("Metrics: mean ± std over the runs (seeds) of each group; std is the sample std (ddof=1). "
               "Labeled images and hours: mean.")
    if notes:
        out.append("")
        out.append("Notes:")
        out.append("")
        out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def paired_markdown(pairs: list[paired.PairedRow], metrics: Sequence[str], group_header: str,
                    baseline: str, pair_by: str) -> str:
    """compare.md's second table: the paired differences to the baseline group."""
    header = [group_header, "round", "pairs", *(f"Δ {m}" for m in metrics)]

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = ["", f"Paired differences to {printable(baseline)}: per {pair_by}, the group's run minus the baseline's "
           "run; mean ± std (sample, ddof=1) over the pairs, two-sided paired t-test p.", "",
           line(header), "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    out += [line(r) for r in paired.table_rows(pairs, metrics)]
    return "\n".join(out) + "\n"


def print_grouped_table(title: str, columns: Sequence[str], rows: list[list[str]], notes: list[str],
                        no_wrap: Sequence[str] = ()) -> None:
    """A rich table whose first column names a group, shown once per group with a rule between groups."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, h in enumerate(columns):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=h in no_wrap)
    prev = None
    for g_label, *cells in rows:
        if prev is not None and g_label != prev:
            table.add_section()
        table.add_row(g_label if g_label != prev else "", *cells)
        prev = g_label
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
    for n in notes:
        console.print(f"note: {n}", highlight=False, markup=False)


def print_table(groups: list[Group], metrics: Sequence[str], group_header: str, notes: list[str]) -> None:
    header, rows = table_rows(groups, metrics)
    print_grouped_table("alseg-compare (mean ± std over seeds)", [group_header, *header], rows, notes, metrics)


def plot_title(groups: list[Group], metrics: Sequence[str], group_header: str) -> str:
    """compare.png's title: the experiment folder(s) (the runs' parent folders), the metrics and the
    grouping, then what the line and the band show."""
    exps = sorted({r.path.parent.name for g in groups for r in g.runs})
    where = ", ".join(exps[:3]) + (f" and {len(exps) - 3} more" if len(exps) > 3 else "")
    return (f"{where}: {', '.join(metrics)} per {group_header}\n"
            "line: mean over seeds, band: ± 1 std (sample, ddof=1) where a group has 2 or more; "
            "seeds per group in the legend")


def write_outputs(out: Path, files: dict[str, str | bytes], error: type[AlsegError] | None = None) -> None:
    """Write ``files`` (name -> text or bytes) into the folder ``out``, all or none: the destinations
    are checked first, every file is written to a temporary file beside it, and only when all are
    written are they moved over the previous outputs. A fault raises ``error`` (default CompareError)
    naming the file and leaves the previous outputs as they were."""
    error = error or CompareError
    for name in files:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            raise error(f"{path}: is a folder, not a file; cannot write the {name} output there")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"{out}: cannot create output folder ({e})") from None
    staged = StagedFiles(error)
    try:
        for name, content in files.items():
            binary = isinstance(content, bytes)
            staged.write(out / name, lambda f, c=content: f.write(c), binary=binary)
        staged.commit()
    finally:
        staged.discard()


def _split(values: list[str] | None, default: Sequence[str]) -> list[str]:
    out = [v.strip() for item in (values or []) for v in item.split(",") if v.strip()]
    return list(dict.fromkeys(out)) or list(default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: alseg-compare runs/coco4 --metric mask_AP --out reports/coco4")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_PARENT",
                   help="run folders, or folders searched recursively for run folders (results.jsonl)")
    p.add_argument("--metric", action="append", metavar="KEY",
                   help=f"result key(s) to compare; repeat or comma-separate (default: {','.join(DEFAULT_METRICS)})")
    p.add_argument("--group-by", action="append", metavar="KEY",
                   help="group runs by these keys (config.yaml dotted keys, e.g. dataset.name); repeat or "
                        "comma-separate (default: strategy)")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder for compare.csv/.md/.png and runs.csv (default: .)")
    paired.add_arguments(p, "a group label (as the table shows it, e.g. random): difference every other group "
                            "against it run by run per round, mean ± std and paired t-test p; writes paired.csv")
    return p


def compare(paths: Sequence[str | os.PathLike], metrics: Sequence[str] = DEFAULT_METRICS,
            group_by: Sequence[str] = ("strategy",), out: str | os.PathLike = ".", show: bool = True,
            baseline: str | None = None, pair_by: str = "seed") -> list[Group]:
    """Read, group, aggregate; write compare.csv, compare.md, compare.png to ``out``, and with a
    ``baseline`` group label paired.csv (``alseg.tools.paired``). Raises CompareError (one line)
    on a bad input, before anything is written."""
    out = Path(out)
    notes: list[str] = []
    runs = read_finished_runs(paths, notes)
    available = sorted({k for r in runs for rec in r.records for k, v in rec.items() if is_number(v)})
    unknown = [m for m in metrics if not any(m in rec for r in runs for rec in r.records)]
    if unknown:
        raise CompareError(f"--metric {unknown[0]}: in no results.jsonl; available: {', '.join(available)}")
    check_values(runs, [*X_KEYS, *metrics])
    group_header = " / ".join(group_by)
    grouped = group_runs(runs, group_by, notes)
    groups = [aggregate(label, rs, metrics, group_by, notes) for label, rs in grouped.items()]
    pairs = None
    if baseline is not None:
        pairs = paired.paired_differences(grouped, baseline, metrics, pair_by, notes, CompareError)

    import alseg.plots as plots

    plot_groups = {}
    for g in groups:
        keep = set(g.plot_rounds)
        if keep:
            plot_groups[g.label] = [[r for r in run.records if r["round"] in keep] for run in g.runs]
    # Everything is made before anything is written (the PNG in memory): a fault leaves the
    # previous outputs as they were.
    fig = plots.ap_vs_cost_figure(plot_groups, tuple(metrics), plot_title(groups, metrics, group_header), True)
    png = plots.figure_png(fig, out / "compare.png")
    files: dict[str, str | bytes] = {"compare.csv": to_csv(groups, metrics, group_header),
                                     "runs.csv": runs_csv(groups, metrics, group_header),
                                     "compare.md": to_markdown(groups, metrics, group_header, notes),
                                     "compare.png": png}
    if pairs is not None:
        files["compare.md"] += paired_markdown(pairs, metrics, group_header, baseline, pair_by)
        files["paired.csv"] = paired.to_csv(pairs, metrics, group_header, baseline)
    write_outputs(out, files)

    if show:
        print_table(groups, metrics, group_header, notes)
        if pairs is not None:
            print_grouped_table(f"paired differences to {printable(baseline)} (per {pair_by}: mean ± std, "
                                "paired t-test p)", [group_header, "round", "pairs", *metrics],
                                paired.table_rows(pairs, metrics), [], metrics)
        n_runs = sum(len(g.runs) for g in groups)
        print(f"{n_runs} run(s) in {len(groups)} group(s); wrote " + ", ".join(str(out / f) for f in files))
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    metrics = _split(args.metric, DEFAULT_METRICS)
    group_by = _split(args.group_by, ("strategy",))
    try:
        compare(args.paths, metrics, group_by, args.out, baseline=args.baseline, pair_by=args.pair_by)
    except AlsegError as e:
        msg = " ".join(str(e).split())  # one line, always
        parser.exit(2, f"{PROG}: error: {msg}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
