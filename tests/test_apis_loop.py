"""APIS in the loop: boxes and P0 first, then one point per instance per step, point-supervised."""

import json

import pytest

from alseg.engine.loop import ActiveLearningLoop


@pytest.mark.parametrize("strategy", ["apis", "apis_random"])
def test_apis_run_labels_one_point_per_instance_per_step(cfg_factory, tmp_path, strategy):
    cfg = cfg_factory("experiment=apis_synthetic", f"strategy={strategy}", "al.rounds=1",
                      "al.initial_unit=all", "al.budget_unit=all")
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg, run).run()
    r0, r1 = records
    n_inst = r0["labeled_boxes"]
    assert n_inst > 0 and r0["labeled_points"] == n_inst and r0["labeled_masks"] == 0
    assert r1["labeled_points"] == 2 * n_inst
    # Cost: a box (7 s) and a point (0.9 s) per instance, then a point per instance.
    assert r0["seconds"] == pytest.approx(n_inst * (7.0 + 0.9))
    assert r1["seconds"] == pytest.approx(n_inst * (7.0 + 0.9 + 0.9))
    sel = json.loads((run / "round_001" / "selection.json").read_text())["queries"]
    assert {q["kind"] for q in sel} == {"point"} and len({q["ann_id"] for q in sel}) == n_inst


def test_point_labels_need_a_point_supervised_model(cfg_factory, tmp_path):
    from alseg.errors import ConfigError

    cfg = cfg_factory("experiment=apis_synthetic", "model=maskrcnn_r18_small", "al.rounds=0")
    with pytest.raises(ConfigError, match="point_supervision"):
        ActiveLearningLoop(cfg, tmp_path / "run").run()
