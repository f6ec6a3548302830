"""A run on N processes (alseg.distributed): shards, the sampler's split of the global batch,
collectives and their errors, and pool inference and evaluation on 2 gloo processes equal to one."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alseg import distributed
from alseg.engine.trainer import InfiniteSampler, TrainerConfig, check_processes
from alseg.errors import ConfigError, DataError
from alseg.predictions import PoolPredictions

from conftest import as_json, make_cfg


# ------------------------------------------------------------------ single process

@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 17])
@pytest.mark.parametrize("chunk", [1, 2, 4])
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_shards_cover_the_items_once_in_whole_chunks(n, chunk, ranks):
    bounds = [distributed.shard_bounds(n, chunk, ranks, r) for r in range(ranks)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, disjoint, in rank order
    for start, stop in bounds:
        assert start % chunk == 0 or start == stop == n  # a share starts at a batch boundary: its batches are single-process ones
    sizes = [-(-(stop - start) // chunk) for start, stop in bounds]  # chunks per rank
    assert max(sizes) - min(sizes) <= 1


def test_shard_bounds_hand_computed():
    # 10 items in chunks of 4 -> chunks [0,4) [4,8) [8,10); rank 0 takes two chunks, rank 1 one.
    assert distributed.shard_bounds(10, 4, 2, 0) == (0, 8)
    assert distributed.shard_bounds(10, 4, 2, 1) == (8, 10)
    assert distributed.shard_bounds(3, 4, 2, 1) == (3, 3)  # fewer chunks than ranks: an empty share
    assert distributed.shard(list("abcdefg")) == list("abcdefg")  # one process: everything


def test_sampler_ranks_split_each_global_batch_of_the_single_process_stream():
    single = InfiniteSampler(7, seed=3)
    it = iter(single)
    stream = [next(it) for _ in range(24)]
    parts = []
    for r in range(2):
        it = iter(InfiniteSampler(7, seed=3, rank=r, ranks=2, batch_size=4))
        parts.append([next(it) for _ in range(12)])
    for b in range(6):  # global batch b = rank 0's two draws, then rank 1's two
        assert parts[0][2 * b:2 * b + 2] + parts[1][2 * b:2 * b + 2] == stream[4 * b:4 * b + 4]


def test_sampler_refuses_a_batch_the_processes_do_not_divide():
    with pytest.raises(ValueError, match=r"batch_size \(3\) must be a multiple of the number of processes \(2\)"):
        InfiniteSampler(7, seed=0, rank=0, ranks=2, batch_size=3)
    with pytest.raises(ConfigError, match=r"^trainer.schedule.batch_size \(3\) must be a multiple of the number of "
                                          r"processes \(2\)"):
        check_processes(TrainerConfig(batch_size=3), 2, "cpu")
    with pytest.raises(ConfigError, match=r"^trainer.finetune.sync_bn: SyncBatchNorm needs CUDA"):
        check_processes(TrainerConfig(batch_size=4, sync_bn=True), 2, "cpu", "trainer.finetune")
    check_processes(TrainerConfig(batch_size=3, sync_bn=True), 1, "cpu")  # one process: nothing asked


def test_world_size_from_the_environment():
    assert distributed.requested_world_size({}) == 1
    assert distributed.requested_world_size({"WORLD_SIZE": "1"}) == 1
    with pytest.raises(ConfigError, match=r"^WORLD_SIZE: must be a positive integer .* got 'two'"):
        distributed.requested_world_size({"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set; "
                                          r"start a multi-process run with torchrun --nproc_per_node=2"):
        distributed.requested_world_size({"WORLD_SIZE": "2"})


def test_one_process_helpers_are_the_identity():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.on_main(lambda: 5) == 5 and distributed.main_only(lambda: 6) == 6
    assert distributed.gather_objects("x") == ["x"] and distributed.all_reduce_sum(2.5) == 2.5
    with distributed.process_group("cpu", environ={}) as device:
        assert device == "cpu" and not dist.is_initialized()


def _predictions(rng, image_ids, per_image, pred_iou=True):
    n = sum(per_image)
    return PoolPredictions(
        image_ids=list(image_ids), image_index=np.repeat(np.arange(len(image_ids)), per_image),
        boxes=rng.random((n, 4), dtype=np.float32), scores=rng.random(n, dtype=np.float32),
        labels=rng.integers(1, 4, n), class_probs=rng.random((n, 4), dtype=np.float32),
        mask_probs=rng.random((n, 3, 3)).astype(np.float16), embeddings=rng.random((n, 5), dtype=np.float32),
        image_embeddings=rng.random((len(image_ids), 6), dtype=np.float32),
        pred_iou=rng.random(n, dtype=np.float32) if pred_iou else None)


def _equal(a: PoolPredictions, b: PoolPredictions) -> bool:
    return a.image_ids == b.image_ids and a.class_prob_layout == b.class_prob_layout and all(
        (x is None and y is None) or (x is not None and y is not None and x.dtype == y.dtype and np.array_equal(x, y))
        for x, y in ((getattr(a, k), getattr(b, k)) for k in ("image_index", "boxes", "scores", "labels", "class_probs",
                                                            "mask_probs", "embeddings", "image_embeddings", "pred_iou")))


@pytest.mark.parametrize("pred_iou", [True, False])
def test_pool_predictions_concatenate_and_round_trip(tmp_path, pred_iou):
    rng = np.random.default_rng(0)
    whole = _predictions(rng, [5, 9, 2, 7], [2, 0, 3, 1], pred_iou)
    # The same rows split after image 9 (rows 0-1) and image 2 (rows 2-4).
    rows = [slice(0, 2), slice(2, 5), slice(5, 6)]
    images = [slice(0, 2), slice(2, 3), slice(3, 4)]
    parts = []
    for r, i in zip(rows, images):
        parts.append(PoolPredictions(
            image_ids=whole.image_ids[i], image_index=whole.image_index[r] - i.start,
            **{k: getattr(whole, k)[r] for k in ("boxes", "scores", "labels", "class_probs", "mask_probs", "embeddings")},
            image_embeddings=whole.image_embeddings[i], pred_iou=whole.pred_iou[r] if pred_iou else None))
    empty = _predictions(rng, [], [], pred_iou)
    parts[1].save(tmp_path / "p")
    assert _equal(PoolPredictions.load(tmp_path / "p"), parts[1])
    # Joined on disk, array by array (what rank 0 does with the ranks' shares), memory-mapped.
    folders = []
    for i, part in enumerate([parts[0], empty, parts[1], parts[2]]):
        part.save(tmp_path / f"s{i}")
        folders.append(tmp_path / f"s{i}")
    merged = PoolPredictions.merge_saved(folders, tmp_path / "merged")
    assert _equal(merged, whole) and isinstance(merged.mask_probs, np.memmap)


# ------------------------------------------------------------------ 2 gloo processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn_name: str, args: tuple, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = globals()[fn_name](*args)
    except Exception as e:  # the test reads what each rank raised
        result = ("raised", type(e).__name__, str(e), distributed.is_shared(e))
    finally:
        dist.destroy_process_group()
    Path(out, f"rank_{rank}.pkl").write_bytes(pickle.dumps(result))


def run_on_two(tmp_path: Path, fn_name: str, *args) -> list:
    """``fn_name(*args)`` of this module on 2 gloo processes; each rank's result (or what it raised)."""
    out = tmp_path / f"out_{fn_name}"
    out.mkdir()
    mp.start_processes(_worker, args=(2, _free_port(), fn_name, args, str(out)), nprocs=2, start_method="spawn")
    return [pickle.loads((out / f"rank_{r}.pkl").read_bytes()) for r in range(2)]


def _errors_case(where: str):
    if where == "main_only":
        distributed.main_only(lambda: (_ for _ in ()).throw(DataError("a.json: image 3: no file")))
    elif where == "agree":
        def check():
            if distributed.rank() == 1:
                raise ConfigError("dataset.root: not found on this node")
            return "fine"
        distributed.agree(check)
    return "no error"


@pytest.mark.parametrize("where, message", [("main_only", "a.json: image 3: no file"),
                                            ("agree", "dataset.root: not found on this node")])
def test_an_error_on_one_rank_stops_every_rank_with_the_same_line(tmp_path, where, message):
    results = run_on_two(tmp_path, "_errors_case", where)
    kind = "DataError" if where == "main_only" else "ConfigError"
    assert results == [("raised", kind, message, True)] * 2


def _collectives_case():
    got = {"on_main": distributed.on_main(lambda: f"from rank {distributed.rank()}"),
           "main_only": distributed.main_only(lambda: "only 0"),
           "sum": distributed.all_reduce_sum(distributed.rank() + 1.5),
           "gather": distributed.gather_objects(distributed.rank() * 10)}
    # Collectives inside main_only run on rank 0 alone: they must not wait for the others.
    got["nested"] = distributed.on_main(lambda: distributed.on_main(lambda: distributed.all_reduce_sum(1.0)))
    return got


def test_collectives_on_two_processes(tmp_path):
    r0, r1 = run_on_two(tmp_path, "_collectives_case")
    assert r0 == {"on_main": "from rank 0", "main_only": "only 0", "sum": 4.0, "gather": [0, 10], "nested": 1.0}
    assert r1 == {"on_main": "from rank 0", "main_only": None, "sum": 4.0, "gather": None, "nested": 1.0}


def _inference_case(cfg, shard_dir):
    from alseg.engine.evaluate import evaluate
    from alseg.instantiate import build
    from alseg.predictions import infer_pool

    data = build(cfg.dataset, "dataset")
    torch.manual_seed(0)
    model = build(cfg.model, "model", num_classes=data.train.num_classes).eval()
    ids = data.train.image_ids[:11]  # 11 images in batches of 2: 6 batches, rank 0 takes 3, rank 1 three
    pp = infer_pool(model, data.train, ids, batch_size=2, progress=False, shard_dir=shard_dir)
    if pp is not None:  # memory-mapped arrays, copied to send them back
        pp = PoolPredictions(**{f: (np.array(v) if isinstance(v, np.ndarray) else v) for f, v in vars(pp).items()})
    return pp, evaluate(model, data.val, batch_size=2, progress=False)


@pytest.mark.parametrize("model", ["maskrcnn_r18_small_iou", "condinst_r18_small"])
def test_pool_inference_and_evaluation_on_two_processes_equal_one(tmp_path, model):
    from conftest import CONDINST

    extra = [*CONDINST, "model.score_thresh=0.01"] if model.startswith("condinst") else [f"model={model}"]
    cfg = make_cfg(tmp_path, *extra)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: the thread count changes float summation order
    try:
        single = _inference_case(cfg, None)  # also fills the data cache the workers read
    finally:
        torch.set_num_threads(threads)
    shard_dir = tmp_path / "shards"
    r0, r1 = run_on_two(tmp_path, "_inference_case", cfg, shard_dir)
    assert r1[0] is None and as_json(r0[1]) == as_json(r1[1])  # predictions on rank 0 only; metrics on both
    assert len(single[0]) > 0 and _equal(r0[0], single[0])
    assert single[1]["num_detections"] > 0 and as_json(r0[1]) == as_json(single[1])
    assert sorted(p.name for p in shard_dir.iterdir()) == ["merged"]  # the per-rank shares merged and removed
