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
