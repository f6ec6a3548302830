"""APIS in the loop: boxes and P0 first, then one point per instance per step, point-supervised."""

import json

import pytest

from alseg.engine.loop import ActiveLearningLoop


@pytest.mark.slow
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
    assert "pruning_rate" not in r0  # no whole image is labeled: not a pruning run
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


@pytest.mark.slow
@pytest.mark.parametrize("level, metric", [("instance", "mean_entropy"), ("image", "detection_loss")])
def test_afis_spends_the_seconds_of_apis(cfg_factory, tmp_path, level, metric):
    apis = ActiveLearningLoop(cfg_factory("experiment=apis_synthetic", "strategy=apis_random", "al.rounds=0"),
                              tmp_path / "apis").run()
    n_inst = apis[0]["labeled_boxes"]
    # Per step 3 s per instance (the tiny pool would not afford one 79.2 s mask at 0.9 s per instance).
    afis = ActiveLearningLoop(cfg_factory("experiment=afis_synthetic", f"strategy.level={level}",
                                          f"strategy.metric={metric}", "al.rounds=1", "al.initial=7.9", "al.budget=3.0"),
                              tmp_path / "afis").run()
    # Round 0: every box plus random masks within the seconds of APIS's P0 (here the points' 0.9 s x 80
    # instances = 72 s buy no 79.2 s mask), never more, at most one mask less.
    assert afis[0]["labeled_boxes"] == n_inst and afis[0]["labeled_masks"] == int(0.9 * n_inst // 79.2)
    assert apis[0]["seconds"] - 79.2 < afis[0]["seconds"] <= apis[0]["seconds"] + 1e-6
    step = afis[1]["seconds"] - afis[0]["seconds"]
    assert 3.0 * n_inst - 79.2 < step <= 3.0 * n_inst + 1e-6 and afis[1]["labeled_masks"] > afis[0]["labeled_masks"]


@pytest.mark.slow
def test_apis_step_reports_the_papers_point_analyses(cfg_factory, tmp_path):
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg_factory("experiment=apis_synthetic", "strategy=apis", "al.rounds=1",
                                             "strategy.match_iou=0.3"), run).run()
    r1 = records[1]
    assert r1["selection/points"] == r1["labeled_points"] // 2
    assert r1["selection/boundary_distance"] >= 0 and r1["selection/boundary_distance_random"] >= 0
    analysis = json.loads((run / "round_001" / "selection.json").read_text())["analysis"]
    if "misclassified_fraction" in analysis:  # only when the untrained model matched a proposal
        assert 0.0 <= analysis["misclassified_fraction"] <= 1.0
        assert (run / "round_001" / "apis_points.png").is_file()


def test_distance_to_boundary_by_hand():
    import numpy as np

    from alseg.strategies.apis import _distance_to_boundary

    m = np.zeros((11, 11), np.uint8)
    m[3:8, 3:8] = 1  # a 5x5 square
    d = _distance_to_boundary(m)
    # The centre is 3 pixels from the nearest background pixel; a pixel 2 columns left of the
    # square is 2 pixels from the nearest foreground pixel.
    assert d[5, 5] == pytest.approx(3.0) and d[5, 1] == pytest.approx(2.0) and d[5, 3] == pytest.approx(1.0)


def test_flip_prediction_set_maps_back_to_the_original_frame():
    import torch

    from alseg.models.maskrcnn import build_maskrcnn
    from alseg.strategies.apis import ApisPoints

    torch.manual_seed(0)
    model = build_maskrcnn(2, min_size=64, max_size=64).eval()
    image = torch.rand(3, 64, 64)
    boxes = torch.tensor([[10.0, 12.0, 30.0, 40.0]])
    labels = torch.tensor([1])
    plain = ApisPoints(match_iou=0.1)._prediction_sets(model, image, boxes, labels)
    both = ApisPoints(match_iou=0.1, flip=True)._prediction_sets(model, image, boxes, labels)
    # The flipped run on its own: the mirrored image and the mirrored box (x -> 64 - x).
    probs_f, boxes_f = model.prediction_sets(image.flip(-1), torch.tensor([[34.0, 12.0, 54.0, 40.0]]), labels,
                                             match_iou=0.1)[0]
    k, kf = len(plain[0][0]), len(probs_f)
    assert k + kf > 0 and len(both[0][0]) == k + kf
    # The flipped run's maps and proposals come back mirrored into the original frame.
    torch.testing.assert_close(both[0][0][k:], probs_f.flip(-1))
    torch.testing.assert_close(both[0][1][k:, [0, 2]], 64 - boxes_f[:, [2, 0]])
    multi = ApisPoints(match_iou=0.1, scales=[48, 64])._prediction_sets(model, image, boxes, labels)
    assert len(multi[0][0]) >= k and model.transform.min_size == (64,)


@pytest.mark.slow
def test_multiple_models_set_trains_and_keeps_an_ensemble(cfg_factory, tmp_path):
    run = tmp_path / "run"
    records = ActiveLearningLoop(cfg_factory("experiment=apis_synthetic", "strategy=apis", "strategy.models=2",
                                             "strategy.metric=variance", "al.rounds=1"), run).run()
    assert records[1]["labeled_points"] == 2 * records[0]["labeled_points"]
    assert (run / "round_000" / "ensemble_1.pt").is_file()


@pytest.mark.slow
def test_a_points_budget_goes_to_the_most_uncertain_instances(cfg_factory, tmp_path):
    """The paper's alternative budget: a step's points go to the instances whose best point is most
    uncertain, so instances end with different point counts. Both runs start from one M0."""
    common = ("experiment=apis_synthetic", "strategy=apis", "al.rounds=1", "strategy.match_iou=0.3")
    ActiveLearningLoop(cfg_factory(*common), tmp_path / "all").run()
    records = ActiveLearningLoop(cfg_factory(*common, "al.budget_unit=points", "al.budget=5",
                                             f"al.initial_run={tmp_path / 'all'}"), tmp_path / "five").run()
    assert records[1]["labeled_points"] - records[0]["labeled_points"] == 5

    def selected(run):
        return json.loads((tmp_path / run / "round_001" / "selection.json").read_text())["queries"]

    every = sorted(selected("all"), key=lambda q: -q["score"] if q["score"] == q["score"] else float("inf"))
    assert [q["ann_id"] for q in selected("five")] == [q["ann_id"] for q in every[:5]]
    assert len({q["ann_id"] for q in selected("five")}) == 5
