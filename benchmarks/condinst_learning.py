"""Does a model learn the default experiment's data within its CPU schedule? The default
experiment's rounds with random selection, outside the loop: the synthetic dataset of
configs/dataset/synthetic.yaml, ``al.initial`` random images trained for
configs/trainer/cpu_small.yaml's ``schedule``, then ``al.rounds`` rounds adding ``al.budget``
random images each, fine-tuned on ``finetune``; mask and box AP on the val split
(``alseg.engine.evaluate.evaluate``) after each round, and the wall time of training.

    python benchmarks/condinst_learning.py [--model condinst_r18_small] [--rounds 3] [--seed 0]
    python benchmarks/condinst_learning.py --model maskrcnn_r18_small      # the reference
    python benchmarks/condinst_learning.py --set lr=0.01 --set model.sizes_of_interest=[24,48,96,192]

Target (issue 14): mask AP50 >= 0.5 in the last round, in no more wall time than Mask R-CNN.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from alseg.data.build import synthetic
from alseg.data.torch_dataset import ImageView, TrainingSet
from alseg.data.transforms import build_transforms
from alseg.engine.evaluate import evaluate
from alseg.engine.trainer import HookBase, Trainer, TrainerConfig

REPO = Path(__file__).resolve().parents[1]


class PrintHook(HookBase):
    """The losses every ``every`` iterations, with the elapsed time."""

    def __init__(self, every: int = 50):
        self.every, self.t0 = every, time.perf_counter()

    def after_step(self, trainer):
        if (trainer.iter + 1) % self.every == 0:
            losses = " ".join(f"{a.replace('loss_', '')}={b:.3f}" for a, b in trainer.last_losses.items())
            print(f"    iter {trainer.iter + 1} {time.perf_counter() - self.t0:.0f} s lr={trainer.current_lr:.3g} {losses}",
                  flush=True)


def main():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from condinst_speed import build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="condinst_r18_small")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--initial", type=int, default=40)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[],
                    help="KEY=VALUE: a schedule field (lr=0.01, iters=400) or model.KEY=VALUE")
    ap.add_argument("--out", default=None, help="folder for each round's checkpoint (round_K.pt), to resume from")
    ap.add_argument("--cache", default=os.environ.get("ALSEG_CACHE", str(Path(tempfile.gettempdir()) / "alseg-cache")))
    args = ap.parse_args()

    trainer_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "trainer" / "cpu_small.yaml"))
    data_cfg = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "dataset" / "synthetic.yaml"))
    schedule, finetune = trainer_cfg["schedule"], trainer_cfg["finetune"]
    model_over = {}
    for item in args.set:
        key, value = item.split("=", 1)
        value = yaml.safe_load(value)
        if key.startswith("model."):
            model_over[key[6:]] = value
        elif key.startswith("finetune."):
            finetune[key[9:]] = value
        else:
            schedule[key] = value
    spec = {k: data_cfg[k] for k in ("num_train", "num_val", "image_size", "num_classes", "min_objects",
                                     "max_objects", "min_radius", "max_radius")}
    data = synthetic(cache_dir=args.cache, seed=data_cfg["seed"], **spec)
    train_cfg = TrainerConfig.from_mapping(schedule, "trainer.schedule")
    ft_cfg = train_cfg.with_overrides(finetune, "trainer.finetune")
    transforms = build_transforms(trainer_cfg["transforms"])

    torch.manual_seed(args.seed)
    model = build(args.model, data.train.num_classes, **model_over)
    rng = np.random.default_rng(args.seed)
    order = [int(i) for i in rng.permutation(data.train.image_ids)]
    print(f"model={args.model} {model_over} schedule={schedule} finetune={finetune} threads={torch.get_num_threads()}")
    print(f"load at start: {os.getloadavg()}")
    print("round  images  iters  train_s  mask_AP  mask_AP50  box_AP  box_AP50  last_losses")
    total_train = 0.0
    out = Path(args.out) if args.out else None
    start = 0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        done = [k for k in range(args.rounds + 1) if (out / f"round_{k}.pt").is_file()]
        if done:  # resume: the selection is a function of the seed, the model is the last round's
            start = max(done) + 1
            model.load_state_dict(torch.load(out / f"round_{start - 1}.pt", weights_only=True))
            print(f"resumed after round {start - 1}")
    for k in range(start, args.rounds + 1):
        n = args.initial + k * args.budget
        views = {i: ImageView(full_image=True, mask_ann_ids={a.ann_id for a in data.train.by_id[i].instances})
                 for i in order[:n]}
        cfg = train_cfg if k == 0 else ft_cfg
        trainer = Trainer(model, TrainingSet(data.train, views, transforms, seed=args.seed * 1009 + k), cfg,
                          seed=args.seed * 1009 + k, hooks=[PrintHook()])
        t0 = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t0
        total_train += dt
        if out is not None:
            torch.save(model.state_dict(), out / f"round_{k}.pt")
        m = evaluate(model, data.val, progress=False)
        losses = " ".join(f"{a.replace('loss_', '')}={b:.3f}" for a, b in trainer.last_losses.items())
        print(f"{k:>5}  {n:>6}  {cfg.iters:>5}  {dt:>7.0f}  {m['mask_AP']:.3f}    {m['mask_AP50']:.3f}      "
              f"{m['box_AP']:.3f}   {m['box_AP50']:.3f}     {losses}", flush=True)
    print(f"training wall time {total_train:.0f} s; load at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
