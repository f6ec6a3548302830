"""Every strategy checks its parameters when it is built: a value of the wrong type, out of range,
not among the choices, or a key the strategy does not take is a one-line ConfigError naming the
config key (``strategy.<param>``, or ``al.initial_strategy.<param>`` for round 0's strategy)."""

import inspect
import math
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from alseg.cli import CONFIG_DIR
from alseg.config_check import ParamError
from alseg.errors import ConfigError
from alseg.instantiate import build
from alseg.strategies.base import Strategy

from conftest import make_cfg

STRATEGIES = sorted(p.stem for p in (Path(CONFIG_DIR) / "strategy").glob("*.yaml"))
WHERE = ["strategy", "al.initial_strategy"]


def _node(config: str, **changes):
    node = OmegaConf.load(Path(CONFIG_DIR) / "strategy" / f"{config}.yaml")
    for k, v in changes.items():
        node[k] = v
    return node


def _params(config: str) -> list[str]:
    target = get_object(_node(config)._target_)
    return [p for p in inspect.signature(target).parameters if p != "name"]


def test_every_strategy_family_has_a_config():
    targets = {str(_node(c)._target_) for c in STRATEGIES}
    assert {"alseg.strategies.random_sampling.RandomImages", "alseg.strategies.mask_entropy.MaskEntropyImages",
            "alseg.strategies.iou_guided.IoUGuidedImages", "alseg.strategies.taudis.UncertaintyImages",
            "alseg.strategies.taudis.Taudis", "alseg.strategies.taudis.TaudisImg",
            "alseg.strategies.taudis.CoreSetImages", "alseg.strategies.taudis.RoundRobinImages",
            "alseg.strategies.tfdp.ShapeComplexityImages", "alseg.strategies.apis.ApisPoints",
            "alseg.strategies.apis.ApisInitialPoints", "alseg.strategies.afis.AfisMasks",
            "alseg.strategies.afis.AfisInitial"} <= targets


@pytest.mark.parametrize("what", WHERE)
@pytest.mark.parametrize("config", STRATEGIES)
def test_every_strategy_config_builds(config, what):
    assert isinstance(build(_node(config), what), Strategy)


@pytest.mark.parametrize("config", STRATEGIES)
def test_every_parameter_of_every_strategy_is_checked(config):
    """A string that is no choice and a mapping are wrong for every parameter but the name; a
    number, an empty string and a mapping are wrong for the name."""
    cases = [(p, bad) for p in _params(config) for bad in ("abc", {"a": 1})]
    cases += [("name", bad) for bad in (5, "", {"a": 1})]
    for what in WHERE:
        for param, bad in cases:
            with pytest.raises(ConfigError) as err:
                build(_node(config, **{param: bad}), what)
            msg = str(err.value)
            assert msg.startswith(f"{what}.{param}: must be "), msg
            assert "\n" not in msg


# (config, parameter, bad value, the message after "<what>.<parameter>: ")
BAD = [
    ("mask_entropy", "score_threshold", "abc", "must be a number in [0, 1], got 'abc' (str)"),
    ("mask_entropy", "score_threshold", 1.5, "must be a number in [0, 1], got 1.5"),
    ("mask_entropy", "score_threshold", -0.1, "must be a number in [0, 1], got -0.1"),
    ("mask_entropy", "score_threshold", None, "must be a number in [0, 1], got None"),
    ("mask_entropy", "score_threshold", True, "must be a number in [0, 1], got True"),
    ("mask_entropy", "score_threshold", math.nan, "must be a number in [0, 1], got nan"),
    ("entropy_reference", "model", "best", "must be one of previous, reference, got 'best' (str)"),
    ("iou_guided", "beta", 2, "must be a number in [0, 1], got 2"),
    ("iou_guided", "oracle", "true", "must be true or false, got 'true' (str)"),
    ("iou_guided_oracle", "oracle", 1, "must be true or false, got 1"),
    ("apis", "models", 2.5, "must be an integer >= 1, got 2.5"),
    ("apis", "models", 2.0, "must be an integer >= 1, got 2.0"),
    ("apis", "models", 0, "must be an integer >= 1, got 0"),
    ("apis", "models", "3", "must be an integer >= 1, got '3' (str)"),
    ("apis", "scales", [112, "a"], "must be a non-empty list of integers >= 16 or null, got [112, 'a']"),
    ("apis", "scales", [8], "must be a non-empty list of integers >= 16 or null, got [8]"),
    ("apis", "scales", [], "must be a non-empty list of integers >= 16 or null, got []"),
    ("apis", "scales", "112", "must be a non-empty list of integers >= 16 or null, got '112' (str)"),
    ("apis", "scales", [112.5], "must be a non-empty list of integers >= 16 or null, got [112.5]"),
    ("apis", "max_cells", 0, "must be an integer >= 1, got 0"),
    ("apis", "max_cells", None, "must be an integer >= 1, got None"),
    ("apis", "flip", "no", "must be true or false, got 'no' (str)"),
    ("apis", "match_iou", 1.5, "must be a number in (0, 1] or null, got 1.5"),
    ("apis", "match_iou", 0, "must be a number in (0, 1] or null, got 0"),
    ("apis", "metric", "entropyy", "must be one of entropy, variance, lowest_entropy, random, max_error, "
                                   "least_error, got 'entropyy' (str)"),
    ("apis_random", "metric", None, "must be one of entropy, variance, lowest_entropy, random, max_error, "
                                    "least_error, got None"),
    ("afis", "level", "pixel", "must be one of image, instance, got 'pixel' (str)"),
    ("afis", "metric", "loss", "must be one of mean_entropy, detection_loss, random, got 'loss' (str)"),
    ("afis", "max_cells", 6.5, "must be an integer >= 1, got 6.5"),
    ("taudis", "alpha", -1, "must be a number > 0, got -1"),
    ("taudis", "beta", 200, "must be a number in (0, 150], got 200"),  # beta <= alpha (150)
    ("taudis", "sigma", 2, "must be a number in [-1, 1], got 2"),
    ("taudis", "metric", "xx", "must be one of cm, ce, se, got 'xx' (str)"),
    ("taudis_img", "alpha", 0.5, "must be a number >= 1, got 0.5"),
    ("taudis_img", "sigma", math.inf, "must be a number in [-1, 1], got inf"),
    ("tfdp", "variant", "x", "must be one of scs, si_scs, cb_scs, si_cb_scs, got 'x' (str)"),
    ("tfdp", "workers", 0, "must be an integer >= 1 or null, got 0"),
    ("tfdp", "workers", 1.5, "must be an integer >= 1 or null, got 1.5"),
    ("tfdp", "contour", None, "must be one of largest, all, got None"),
    ("wse", "aggregation", "sum", "must be one of mean, weighted_sum, got 'sum' (str)"),
    ("avg_cm", "metric", "entropy", "must be one of cm, ce, se, got 'entropy' (str)"),
    ("random", "name", 5, "must be a non-empty string, got 5"),
    ("coreset", "name", "", "must be a non-empty string, got '' (str)"),
]


@pytest.mark.parametrize("what", WHERE)
@pytest.mark.parametrize("config, param, value, reason", BAD, ids=[f"{c}.{p}={v!r}" for c, p, v, _ in BAD])
def test_bad_parameter_is_one_line_naming_the_key(config, param, value, reason, what):
    with pytest.raises(ConfigError) as err:
        build(_node(config, **{param: value}), what)
    assert str(err.value) == f"{what}.{param}: {reason}"


@pytest.mark.parametrize("what", WHERE)
def test_unknown_parameter_is_one_line_naming_the_key(what):
    with pytest.raises(ConfigError) as err:
        build(_node("iou_guided", betta=0.2), what)
    assert str(err.value) == (f"{what}.betta: not a parameter of alseg.strategies.iou_guided.IoUGuidedImages; "
                              f"its parameters: name, beta, oracle, score_threshold")
    with pytest.raises(ConfigError, match=rf"^{what}\.models: not a parameter of .*RandomImages; its parameters: name$"):
        build(_node("random", models=2), what)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["strategy=mask_entropy", "strategy.score_threshold=abc"], "strategy.score_threshold"),
        (["strategy=mask_entropy", "strategy.score_threshold=null"], "strategy.score_threshold"),
        (["strategy=apis", "strategy.models=2.5"], "strategy.models"),
        (["strategy=apis", "strategy.flip=yes"], "strategy.flip"),
        (["strategy=apis", "strategy.scales=[112,abc]"], "strategy.scales"),
        (["strategy=iou_guided", "strategy.oracle='true'"], "strategy.oracle"),
        (["strategy@al.initial_strategy=tfdp", "al.initial_strategy.workers=-2"], "al.initial_strategy.workers"),
    ],
)
def test_values_as_hydra_parses_them(tmp_path, overrides, key):
    """Through Hydra's override parser: `abc` and `yes` are strings, `2.5` a float, `'true'` a string."""
    cfg = make_cfg(tmp_path, *overrides)
    node, what = (cfg.al.initial_strategy, "al.initial_strategy") if key.startswith("al.") else (cfg.strategy, "strategy")
    with pytest.raises(ConfigError) as err:
        build(node, what)
    assert str(err.value).startswith(f"{key}: must be ")


def test_valid_values_at_the_bounds_are_kept_in_their_type():
    s = build(_node("mask_entropy", score_threshold=0), "strategy")
    assert s.score_threshold == 0.0 and isinstance(s.score_threshold, float)
    s = build(_node("iou_guided", beta=1, oracle=True), "strategy")
    assert (s.beta, s.oracle) == (1.0, True)
    s = build(_node("apis", scales=[16, 128], match_iou=1, models=3, flip=True, max_cells=1), "strategy")
    assert (s.scales, s.match_iou, s.ensemble_size, s.flip, s.max_cells) == ([16, 128], 1.0, 3, True, 1)
    assert build(_node("apis"), "strategy").scales is None
    s = build(_node("taudis", alpha=2, beta=2, sigma=-1), "strategy")
    assert (s.alpha, s.beta, s.sigma) == (2.0, 2.0, -1.0)
    assert build(_node("taudis_img", alpha=1), "strategy").alpha == 1.0
    assert build(_node("tfdp", workers=None), "strategy").workers is None
    assert build(_node("random", name="mine"), "strategy").name == "mine"


def test_param_error_is_a_config_error_renamed_by_build():
    e = ParamError("beta", "must be a number in [0, 1], got 2")
    assert isinstance(e, ConfigError) and str(e) == "strategy.beta: must be a number in [0, 1], got 2"
    assert str(e.at("al.initial_strategy")) == "al.initial_strategy.beta: must be a number in [0, 1], got 2"


def test_number_checks_shared_by_every_validator():
    """One is_number / is_int (alseg.config_check) serves the strategy checks, the ledger's and run
    state's readers, the trainer's schedule and alseg-compare: NumPy scalars count, bools do not."""
    import numpy as np

    from alseg.annotation.ledger import label_problem
    from alseg.config_check import is_int, is_number

    assert [is_number(v) for v in (1, 0.5, np.float32(0.5), np.int64(2), float("nan"))] == [True] * 5
    assert [is_number(v) for v in (True, None, "1", [1])] == [False] * 4
    assert [is_int(v) for v in (3, np.int64(3), 3.0, False)] == [True, True, False, False]
    point = {"kind": "point", "image_id": np.int64(7), "ann_id": 3, "x": np.float32(1.5), "y": 2,
             "value": 1, "seconds": 0.9}
    assert label_problem(point) is None
    assert label_problem({**point, "image_id": True}) == "'image_id' must be an integer"
    assert label_problem({**point, "seconds": "0.9"}) == "'seconds' must be a number"
