"""Every config file composes, and every experiment file overrides what it says."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from alseg.cli import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
GROUPS = {g: sorted(p.stem for p in (Path(CONFIG_DIR) / g).glob("*.yaml")) for g in ("dataset", "model", "strategy", "trainer", "logger")}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"])
    assert cfg.experiment_name == name
    assert cfg.al.rounds >= 0 and cfg.trainer.schedule.iters >= 1


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_group_option_composes(group, option):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"{group}={option}"])
    assert cfg[group] is not None


def test_default_config_is_the_cpu_experiment():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config")
    assert cfg.dataset.name == "synthetic" and cfg.model.backbone == "resnet18" and cfg.strategy.name == "random"
    assert cfg.cost.mask == 79.2 and cfg.cost.box == 7.0 and cfg.cost.point == 0.9 and cfg.cost.class_check == 1.0


def _recipe_commands() -> list[str]:
    """Every ``alseg -m ...`` sweep written in an experiment file's header or in experiments/README.md."""
    import re

    texts = [p.read_text() for p in sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml"))]
    texts.append((Path(CONFIG_DIR).parent / "experiments" / "README.md").read_text())
    cmds = []
    for text in texts:
        text = re.sub(r"\\\n#?\s*", " ", text)  # continuation lines
        cmds += re.findall(r"alseg -m ((?:experiment=|[^`\n]*experiment=)[^`\n#]*)", text)
    return sorted(set(c.strip() for c in cmds))


def _expand(command: str) -> list[list[str]]:
    """The runs of a sweep command whose strategy differs: strategy / experiment sweeps expanded, every
    other sweep at its first value; keys a composed config cannot check (hydra/, paths) dropped."""
    import itertools
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    words = [w for w in shlex.split(command) if "=" in w and not w.startswith(("hydra", "paths.", "al.initial_run"))]
    options = []
    for o in OverridesParser.create().parse_overrides(words):
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if not key.startswith(("strategy", "experiment")):
            values = values[:1]
        options.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.product(*options)]


RECIPE_RUNS = [(c, run) for c in _recipe_commands() for run in _expand(c)]


def test_recipes_found():
    assert len(_recipe_commands()) >= 15 and any("taudis_synthetic" in c for c, _ in RECIPE_RUNS)


@pytest.mark.parametrize("command, overrides", RECIPE_RUNS, ids=[" ".join(r) for _, r in RECIPE_RUNS])
def test_recipe_builds_its_strategies(command, overrides):
    """A recipe's sweep composes and every strategy it names takes the parameters the experiment
    gives it (e.g. TAUDIS's alpha / beta must not reach random or WSE)."""
    from alseg.instantiate import build

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    build(cfg.strategy, "strategy")
    build(cfg.al.initial_strategy, "al.initial_strategy")


def test_taudis_alpha_beta_follow_the_dataset():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        syn = compose("config", overrides=["experiment=taudis_synthetic"])
        coco = compose("config", overrides=["experiment=taudis_coco"])
        mine = compose("config", overrides=["experiment=taudis_synthetic", "strategy.alpha=3"])
    assert (syn.strategy.alpha, syn.strategy.beta) == (8, 4)
    assert (coco.strategy.alpha, coco.strategy.beta) == (150, 40)
    assert mine.strategy.alpha == 3


def _report_commands(tool: str) -> list[str]:
    """Every ``alseg-compare ...`` (or pruning_curve) command line written in experiments/README.md."""
    import re

    text = (Path(CONFIG_DIR).parent / "experiments" / "README.md").read_text()
    return sorted(set(re.findall(rf"^{re.escape(tool)} (.*)$", text, flags=re.M)))


@pytest.mark.parametrize("args", _report_commands("alseg-compare"))
def test_readme_compare_commands_parse(args):
    """The comparison commands beside the tables take only options alseg-compare has (--baseline ...)."""
    import shlex

    from alseg.tools import compare

    ns = compare.build_parser().parse_args(shlex.split(args))
    assert ns.paths and str(ns.out).startswith("experiments/")


def test_readme_compare_commands_found():
    cmds = _report_commands("alseg-compare")
    assert len(cmds) >= 6 and any("--baseline" in c for c in cmds)


@pytest.mark.parametrize("args", _report_commands("python tools/pruning_curve.py"))
def test_readme_pruning_curve_commands_parse(args):
    import shlex

    from alseg.tools import pruning_curve

    ns = pruning_curve.build_parser().parse_args(shlex.split(args))
    assert ns.paths and ns.baseline == "random"
