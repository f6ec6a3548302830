"""Trainer overhead: alseg's Trainer (hooks, scheduler, clipping, progress bar) against a bare
torchvision training loop, on the same model, data and batch size. Target: at most 5 % slower.

    python benchmarks/trainer_overhead.py [--iters 60] [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from alseg.data.build import synthetic
from alseg.data.torch_dataset import ImageView, TrainingSet, collate
from alseg.data.transforms import build_transforms
from alseg.engine.trainer import LossAverageHook, ProgressHook, Trainer, TrainerConfig
from alseg.models.maskrcnn import build_maskrcnn


def bare_loop(model, dataset, iters: int, batch_size: int) -> float:
    """The loop of torchvision's detection reference, with nothing else."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    model.train()
    it, t0 = 0, time.perf_counter()
    while it < iters:
        for images, targets in loader:
            losses = model(list(images), list(targets))
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            it += 1
            if it == iters:
                break
    return time.perf_counter() - t0


def alseg_trainer(model, dataset, iters: int, batch_size: int) -> float:
    cfg = TrainerConfig(iters=iters, batch_size=batch_size, lr=0.01, warmup_iters=10)
    t = Trainer(model, dataset, cfg, hooks=[ProgressHook(enabled=True), LossAverageHook()])
    t0 = time.perf_counter()
    t.train()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        data = synthetic(cache_dir=cache, num_train=120, num_val=4)
        views = {r.image_id: ImageView(full_image=True, mask_ann_ids={i.ann_id for i in r.instances}) for r in data.train.images}
        dataset = TrainingSet(data.train, views, build_transforms({"hflip": 0.5}), seed=0)
        torch.manual_seed(0)
        base = build_maskrcnn(data.train.num_classes)
        # Warm-up (allocator, thread pools) outside the timings.
        bare_loop(copy.deepcopy(base), dataset, 5, args.batch_size)
        times = {"bare": [], "alseg": []}
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both
            times["bare"].append(bare_loop(copy.deepcopy(base), dataset, args.iters, args.batch_size))
            times["alseg"].append(alseg_trainer(copy.deepcopy(base), dataset, args.iters, args.batch_size))
    bare, ours = min(times["bare"]), min(times["alseg"])
    print(f"threads={torch.get_num_threads()} iters={args.iters} batch={args.batch_size} (best of {args.repeats})")
    print(f"bare torchvision loop: {args.iters / bare:.2f} it/s ({bare / args.iters:.3f} s/it)")
    print(f"alseg Trainer:         {args.iters / ours:.2f} it/s ({ours / args.iters:.3f} s/it)")
    print(f"overhead: {100 * (ours / bare - 1):+.1f} % (target <= 5 %)")


if __name__ == "__main__":
    main()
