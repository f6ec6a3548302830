"""Run folder names: Hydra accepts them back as `al.initial_run=runs/<exp>/<name>`, keys that may
change on resume stay out (so raising al.rounds resumes the same folder), a key given twice counts
once, distinct configs get distinct names, and folders of the older naming are still found."""

import hashlib
import json
import re

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser

from alseg.cli import CONFIG_DIR, run_dir_of
from alseg.run_naming import LEGACY_EXCLUDE, MAX_LEN, RESUMABLE_CHANGES, legacy_run_name, previous_run_name, run_name

from conftest import FAST
from test_cli import _alseg

PARSER = OverridesParser.create()
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.@+\-]+$")

# Override lists of every kind a command may hold (FAST: the long list the CLI tests use).
COMMANDS = [
    [],
    ["seed=1"],
    ["seed=1", "strategy=mask_entropy", "al.budget=20"],
    ["strategy@al.initial_strategy=apis_initial", "strategy=apis", "strategy.metric=variance"],
    ["model.anchor_sizes=[8,16,32,64,128]", "strategy.scales=[112,128,144]"],
    ["al.initial_run=runs/apis_fig2a/seed-1", "strategy.metric=lowest_entropy"],
    ["dataset.train_ann=/data/coco/annotations/instances_train2017.json", "dataset=coco"],
    ["strategy.name='my run, v2'", "trainer.schedule.lr=1e-5", "seed=-1"],
    ["~model.mask_iou", "+strategy.extra={a: 1, b: [2, 3]}"],
    ["model.mask_iou=null", "strategy.oracle=true", "trainer.schedule.steps=[0.5,0.9]"],
    FAST,
    [*FAST, "dataset.num_train=30", "strategy=taudis", "strategy.alpha=2.5", "strategy.beta=1.5", "seed=7"],
]


def _hydra_reads(path: str):
    (o,) = PARSER.parse_overrides([f"al.initial_run={path}"])
    return o.value()


@pytest.mark.parametrize("overrides", COMMANDS, ids=range(len(COMMANDS)))
def test_name_is_accepted_by_hydra_as_initial_run(overrides, tmp_path):
    name = run_name(overrides)
    assert SAFE_NAME.match(name) and len(name) <= MAX_LEN, name
    path = f"runs/my_exp/{name}"
    assert _hydra_reads(path) == path
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"al.initial_run={path}", "seed=3"])
    assert cfg.al.initial_run == path


def test_names_read_as_key_value_pairs():
    assert run_name([]) == "default"
    assert run_name(["seed=1"]) == "seed-1"
    assert run_name(["strategy=mask_entropy", "seed=1", "al.budget=20"]) == "al.budget-20+seed-1+strategy-mask_entropy"
    assert run_name(["strategy@al.initial_strategy=apis_initial"]) == "strategy@al.initial_strategy-apis_initial"
    assert run_name(["seed=-1", "trainer.schedule.lr=1e-5", "strategy.oracle=true", "model.mask_iou=null"]) == (
        "model.mask_iou-null+seed--1+strategy.oracle-true+trainer.schedule.lr-1e-05")
    # Replaced characters: a hash of the exact overrides follows.
    assert re.fullmatch(r"model\.anchor_sizes-8_16\+[0-9a-f]{10}", run_name(["model.anchor_sizes=[8,16]"]))
    assert re.fullmatch(r"al\.initial_run-runs_x_seed-1\+strategy\.metric-variance\+[0-9a-f]{10}",
                        run_name(["al.initial_run=runs/x/seed-1", "strategy.metric=variance"]))


def test_keys_that_may_change_on_resume_stay_out():
    base = ["seed=1", "strategy=mask_entropy"]
    resumable = ["al.rounds=7", "device=cpu", "progress=false", "logger=files", "~logger.console",
                 "logger.wandb.project=x", "run_name=null", "trainer.schedule.num_workers=4", "paths.runs=/tmp/r",
                 "paths.cache_dir=/c", "paths.data_dir=/d", "experiment_name=other"]
    assert run_name([*base, *resumable]) == run_name(base) == "seed-1+strategy-mask_entropy"
    assert {"al.rounds", "device", "progress", "logger", "run_name", "trainer.schedule.num_workers",
            "paths"} <= set(RESUMABLE_CHANGES)
    # Other al.* and trainer.* keys change the run: they stay in.
    assert run_name([*base, "al.budget=4", "trainer.schedule.iters=6"]) != run_name(base)


def test_experiment_stays_out_when_it_names_the_folder_above():
    assert run_name(["experiment=apis_fig2a", "seed=1"]) == "seed-1"
    assert run_name(["experiment=mine", "seed=1"], experiment_names_folder=False) == "experiment-mine+seed-1"


def test_a_key_given_twice_counts_once_with_its_last_value():
    assert run_name(["seed=1", "al.budget=4", "seed=2"]) == run_name(["al.budget=4", "seed=2"]) == "al.budget-4+seed-2"
    assert run_name(["strategy=mask_entropy", "strategy=random"]) == "strategy-random"
    assert run_name([*FAST, "al.initial=8", "al.initial=4"]) == run_name(FAST)
    # +key / ++key set the same value as key=: the same folder.
    assert run_name(["+strategy.foo=1"]) == run_name(["++strategy.foo=1"]) == run_name(["strategy.foo=1"])
    # A group and the same group at another package are two keys.
    assert run_name(["strategy=apis", "strategy@al.initial_strategy=apis_initial"]).count("+") == 1


def test_distinct_overrides_give_distinct_names():
    variants = [
        ["model.anchor_sizes=[8,16]"], ["model.anchor_sizes=[816]"], ["model.anchor_sizes=[8,16,32]"],
        ["model.anchor_sizes=8_16"], ["model.anchor_sizes='[8,16]'"], ["model.anchor_sizes=[[8,16]]"],
        ["strategy.name=1"], ["strategy.name='1'"], ["strategy.name=1.0"], ["strategy.name=true"],
        ["strategy.name='true'"], ["strategy.name=null"], ["strategy.name='null'"], ["strategy.name=a_b"],
        ["strategy.name='a b'"], ["strategy.name=a/b"], ["strategy.name='a,b'"], ["strategy.name=a+b"],
        ["~model.mask_iou"], ["model.mask_iou=deleted"], ["al.initial_run=runs/a/b"], ["al.initial_run=runs/a_b"],
        [*FAST, "seed=1"], [*FAST, "seed=2"], [*FAST, "strategy.name=" + "x" * 90],
        [*FAST, "strategy.name=" + "x" * 91],
    ]
    names = [run_name(v) for v in variants]
    assert len(set(names)) == len(names), [n for n in names if names.count(n) > 1]


def test_long_names_are_cut_at_an_item_and_hashed():
    name = run_name(FAST)
    assert len(name) <= MAX_LEN and re.search(r"\+[0-9a-f]{10}$", name)
    readable = name[: -11]
    assert "+".join(sorted(readable.split("+"))) == readable  # whole items, in key order
    assert readable.startswith("al.budget-4+al.initial-4+dataset.image_size-64")


SHARED_M0 = ["experiment=taudis_synthetic", "al.policy=finetune", "seed=0",
             "al.initial_run=runs/taudis_synthetic/al.policy-finetune+seed-0+strategy-random+long_round0_name"]


def test_a_long_item_is_cut_first_and_the_others_stay_whole():
    """A sweep from a shared round 0: the long al.initial_run path is shortened, the strategy and
    the seed stay in every name (the earlier rule cut them off: previous_run_name)."""
    names = {st: run_name([*SHARED_M0, f"strategy={st}"]) for st in ("taudis", "wse", "round_robin")}
    for st, name in names.items():
        assert len(name) <= MAX_LEN and SAFE_NAME.match(name), name
        assert f"+strategy-{st}+" in name and "+seed-0+" in name and "+al.policy-finetune+" in name
        assert name.startswith("al.initial_run-runs_taudis_synthetic_")
        old = previous_run_name([*SHARED_M0, f"strategy={st}"])
        assert "strategy-" + st not in old and old.endswith(name[-10:])
    assert run_name(FAST) == previous_run_name(FAST)  # many short items: whole items, as before
    assert run_name(["seed=1"]) == previous_run_name(["seed=1"]) == "seed-1"


def test_legacy_names_are_those_hydra_made():
    # hydra.job.override_dirname as configured before: excluded keys, "=", ",", sorted, "/" as "_".
    assert legacy_run_name(["seed=1", "al.rounds=5", "device=cpu"]) == "al.rounds=5,seed=1"
    assert legacy_run_name(["strategy.scales=[112,128]", "al.initial_run=runs/a/b"]) == (
        "al.initial_run=runs_a_b,strategy.scales=[112,128]")
    kept = ",".join(sorted(o for o in FAST if o.split("=")[0] not in ("device", "progress", "logger")))
    assert legacy_run_name(FAST) == kept[:100] + "-" + hashlib.sha1(kept.encode()).hexdigest()[:10]
    # ... as Hydra itself computes it under the old settings.
    old = "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(LEGACY_EXCLUDE) + "]"
    overrides = ["seed=1", "al.rounds=5", "device=cpu", "strategy.scales=[112,128]", "~logger.console",
                 "al.initial_run=runs/a/b", "experiment=apis_fig2a", "seed=2"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[old, *overrides], return_hydra_config=True)
    assert legacy_run_name(overrides) == cfg.hydra.job.override_dirname.replace("/", "_")


def _run_dir(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.runs={tmp_path / 'runs'}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return run_dir_of(cfg)


def test_run_dir_of_uses_a_legacy_folder_only_when_it_holds_a_run(tmp_path):
    overrides = ["seed=1", "al.rounds=5", "experiment=apis_fig2a"]
    exp = tmp_path / "runs" / "apis_fig2a"
    assert _run_dir(tmp_path, *overrides) == exp / "seed-1"
    (exp / "al.rounds=5,seed=1").mkdir(parents=True)
    assert _run_dir(tmp_path, *overrides) == exp / "seed-1"  # an empty old folder is not a run
    (exp / "al.rounds=5,seed=1" / "state.json").write_text("{}")
    assert _run_dir(tmp_path, *overrides) == exp / "al.rounds=5,seed=1"
    (exp / "seed-1").mkdir()
    (exp / "seed-1" / "state.json").write_text("{}")
    assert _run_dir(tmp_path, *overrides) == exp / "seed-1"  # the new name's run wins
    assert _run_dir(tmp_path, *overrides, "run_name=a/b") == exp / "a_b"


def test_run_dir_of_finds_a_folder_named_by_the_previous_rule(tmp_path):
    overrides = [*SHARED_M0, "strategy=wse"]
    exp = tmp_path / "runs" / "taudis_synthetic"
    new, old = exp / run_name(overrides), exp / previous_run_name(overrides)
    assert new != old and _run_dir(tmp_path, *overrides) == new
    old.mkdir(parents=True)
    (old / "state.json").write_text("{}")
    assert _run_dir(tmp_path, *overrides) == old
    new.mkdir()
    (new / "state.json").write_text("{}")
    assert _run_dir(tmp_path, *overrides) == new


def _digest(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _only_run(parent):
    runs = [p for p in parent.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_raising_rounds_resumes_the_folder_and_initial_run_takes_its_name(tmp_path):
    """README: raising al.rounds extends a finished run by running the command again; and a second
    run takes round 0 from the first with al.initial_run=runs/<exp>/<the folder alseg made>."""
    res = _alseg(tmp_path, "al.rounds=0")  # FAST holds al.rounds=2 too: the key is given twice
    assert res.returncode == 0, res.stderr[-3000:]
    run = _only_run(tmp_path / "runs" / "default")
    assert run.name == run_name([*FAST, "al.rounds=0"]) and "al.rounds" not in run.name
    model0, labels0 = _digest(run / "round_000" / "model.pt"), _digest(run / "round_000" / "labels.jsonl")
    assert not (run / "round_001").exists()

    res = _alseg(tmp_path, "al.rounds=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _only_run(tmp_path / "runs" / "default") == run
    assert _digest(run / "round_000" / "model.pt") == model0  # round 0 not retrained
    assert sorted(p.name for p in run.glob("round_*")) == ["round_000", "round_001"]
    assert [json.loads(line)["round"] for line in (run / "results.jsonl").read_text().splitlines()] == [0, 1]

    # The documented workflow: the M0 folder's name typed after al.initial_run= (relative to the cwd).
    again = ["al.rounds=0", f"al.initial_run=runs/default/{run.name}", "seed=0"]
    res = _alseg(tmp_path, *again)
    assert res.returncode == 0, res.stderr[-3000:]
    second = [p for p in (tmp_path / "runs" / "default").iterdir() if p.is_dir() and p != run]
    assert [p.name for p in second] == [run_name([*FAST, *again])]
    assert _digest(second[0] / "round_000" / "model.pt") == model0
    assert _digest(second[0] / "round_000" / "labels.jsonl") == labels0
    first_record = [json.loads(f.read_text().splitlines()[0]) for f in (run / "results.jsonl", second[0] / "results.jsonl")]
    assert first_record[0]["mask_AP"] == first_record[1]["mask_AP"]  # the same M0 on the same val set
