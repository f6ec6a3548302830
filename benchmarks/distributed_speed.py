"""Pool inference and training on 1 process against N processes (alseg.distributed), in the same
run: images per second of ``infer_pool`` and iterations per second of the ``Trainer``, and their
ratios. Goal (issue 15): pool inference >= 1.6x on 2 processes on 2 free CPU cores.

The single-process reference uses every core (torch threads = --threads-per-run, default all CPUs);
each of the N processes gets threads / N (gloo on CPU, one GPU each on CUDA), so both use the same
machine. The data are the synthetic default (128-pixel images), the model is built from its config.

    python benchmarks/distributed_speed.py [--procs 2] [--images 96] [--iters 30] [--model maskrcnn_r18_small]
    python benchmarks/distributed_speed.py --device cuda --procs 8 --model maskrcnn_r50   # on a GPU machine
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def setup(args, cache: str):
    from alseg.cli import CONFIG_DIR
    from alseg.data.torch_dataset import ImageView, TrainingSet
    from alseg.instantiate import build

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir={cache}", f"model={args.model}",
                                           f"dataset.num_train={args.images}"])
    data = build(cfg.dataset, "dataset")
    torch.manual_seed(0)
    model = build(cfg.model, "model", num_classes=data.train.num_classes)
    views = {r.image_id: ImageView(full_image=True, mask_ann_ids={i.ann_id for i in r.instances})
             for r in data.train.images}
    return cfg, data, model, TrainingSet(data.train, views, None, seed=0)


def measure(args, cache: str, device: str) -> dict:
    from alseg.engine.trainer import Trainer, TrainerConfig
    from alseg.predictions import infer_pool

    cfg, data, model, train_set = setup(args, cache)
    model.to(device)
    schedule = TrainerConfig(iters=args.iters + 3, batch_size=args.batch, warmup_iters=0, amp=False)
    trainer = Trainer(model, train_set, schedule, device, seed=0)
    trainer.model.train()
    it = iter(trainer.loader)
    for _ in range(3):  # warm-up steps
        trainer.run_step(*next(it))
    dist.barrier() if dist.is_initialized() else None
    t0 = time.perf_counter()
    for _ in range(args.iters):
        trainer.run_step(*next(it))
    dist.barrier() if dist.is_initialized() else None
    train_s = time.perf_counter() - t0
    model.eval()
    ids = data.train.image_ids
    infer_pool(model, data.train, ids[:8], device=device, batch_size=4, progress=False)  # warm-up (not sharded out)
    dist.barrier() if dist.is_initialized() else None
    t0 = time.perf_counter()
    infer_pool(model, data.train, ids, device=device, batch_size=4, progress=False,
               shard_dir=Path(cache) / f"shards_{os.getpid() if not dist.is_initialized() else 'n'}")
    dist.barrier() if dist.is_initialized() else None
    infer_s = time.perf_counter() - t0
    return {"train_it_s": args.iters / train_s, "infer_img_s": len(ids) / infer_s}


def worker(rank: int, world: int, port: int, args, cache: str, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        result = measure(args, cache, f"cuda:{rank}" if cuda else "cpu")
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_bytes(pickle.dumps(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--images", type=int, default=96, help="pool images inferred")
    p.add_argument("--iters", type=int, default=30, help="timed training iterations")
    p.add_argument("--batch", type=int, default=4, help="total batch (split across the processes)")
    p.add_argument("--model", default="maskrcnn_r18_small")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads in all (CPU runs)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        torch.set_num_threads(args.threads)
        setup(args, tmp)  # fills the data cache, outside the timings
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; model {args.model}, "
              f"{args.images} pool images, batch {args.batch}, device {args.device}", flush=True)
        one = measure(args, tmp, "cuda" if args.device == "cuda" else "cpu")
        single_thread = None
        if args.device == "cpu" and args.threads > 1:  # the per-process share, for scale
            torch.set_num_threads(max(1, args.threads // args.procs))
            single_thread = measure(args, tmp, "cpu")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = Path(tmp) / "n.pkl"
        mp.start_processes(worker, args=(args.procs, port, args, tmp, max(1, args.threads // args.procs), str(out)),
                           nprocs=args.procs, start_method="spawn")
        many = pickle.loads(out.read_bytes())
    share = max(1, args.threads // args.procs)
    print(f"threads: 1 process {args.threads}; {args.procs} processes {share} each")
    print(f"{'':24}{'1 process':>12}{f'{args.procs} processes':>14}{'ratio':>8}"
          + (f"{f'(1 process, {share} thread(s))':>30}" if single_thread else ""))
    for key, what in (("infer_img_s", "pool inference img/s"), ("train_it_s", "training it/s")):
        extra = f"{single_thread[key]:17.2f} -> {many[key] / single_thread[key]:.2f}x" if single_thread else ""
        print(f"{what:24}{one[key]:12.2f}{many[key]:14.2f}{many[key] / one[key]:7.2f}x{extra}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
