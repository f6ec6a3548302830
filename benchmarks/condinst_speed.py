"""CondInst against Mask R-CNN at the same backbone and image size: training iteration time,
per-image inference time and peak memory. Goal: CondInst's time ratios <= 1.0.

Both models are built from their config files (configs/model/condinst_r18_small.yaml and
configs/model/maskrcnn_r18_small.yaml by default: ResNet-18 FPN, 64 channels, 128-pixel images)
and trained by the same bare loop (SGD) on the same synthetic batches. Each measurement runs in a
fresh subprocess so that its peak memory is its own (CPU: the process's peak resident set, which
includes the ~same Python/torch baseline for both; CUDA: ``torch.cuda.max_memory_allocated``).
Repeats alternate the two models, so that drifts in machine load hit both; the best time counts.

    python benchmarks/condinst_speed.py [--iters 30] [--infer-images 40] [--repeats 2] [--device cpu]
    python benchmarks/condinst_speed.py --condinst condinst_r50 --maskrcnn maskrcnn_r50 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


def model_config(name: str, **overrides) -> dict:
    """A configs/model/<name>.yaml as a dict, its ``defaults`` resolved (one level, as ours use)."""
    cfg = OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml")
    out = OmegaConf.create({})
    for d in cfg.pop("defaults", []):
        out = OmegaConf.merge(out, OmegaConf.create(model_config(d)))
    out = OmegaConf.merge(out, cfg, overrides)
    return OmegaConf.to_container(out)


def build(name: str, num_classes: int, **overrides):
    from hydra.utils import get_object

    cfg = model_config(name, **overrides)
    return get_object(cfg.pop("_target_"))(num_classes=num_classes, **cfg)


def child(args) -> dict:
    """One model's measurement (in its own process)."""
    from torch.utils.data import DataLoader

    from alseg.data.build import synthetic
    from alseg.data.torch_dataset import ImageSet, ImageView, TrainingSet, collate
    from alseg.data.transforms import build_transforms

    torch.set_num_threads(args.threads) if args.threads else None
    dev = torch.device(args.device)
    data = synthetic(cache_dir=args.cache, num_train=120, num_val=args.infer_images)
    views = {r.image_id: ImageView(full_image=True, mask_ann_ids={i.ann_id for i in r.instances}) for r in data.train.images}
    dataset = TrainingSet(data.train, views, build_transforms({"hflip": 0.5}), seed=0)
    overrides = {}
    if args.size:
        overrides = {"min_size": args.size, "max_size": args.size}
    torch.manual_seed(0)
    model = build(args.child, data.train.num_classes, **overrides).to(dev)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    batches = []
    for images, targets in loader:  # the same batches for every model, read once, before timing
        batches.append(([im.to(dev) for im in images],
                        [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]))
        if len(batches) == args.warmup + args.iters:
            break

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    times = []
    for k, (images, targets) in enumerate(batches):
        sync()
        t0 = time.perf_counter()
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
    train_peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.eval()
    infer = []
    with torch.no_grad():
        for k in range(len(ImageSet(data.val)) + 2):
            image, _ = ImageSet(data.val)[k % len(ImageSet(data.val))]
            sync()
            t0 = time.perf_counter()
            model([image.to(dev)])
            sync()
            if k >= 2:  # warm-up
                infer.append(time.perf_counter() - t0)
    out = {
        "train_s_per_iter": sorted(times)[len(times) // 2],
        "infer_s_per_image": sorted(infer)[len(infer) // 2],
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": float(loss.detach()),
    }
    if dev.type == "cuda":
        out["train_peak_mib"] = train_peak / 2**20
        out["infer_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--condinst", default="condinst_r18_small", help="configs/model name")
    ap.add_argument("--maskrcnn", default="maskrcnn_r18_small", help="configs/model name")
    ap.add_argument("--iters", type=int, default=30, help="timed training iterations")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--infer-images", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="min_size = max_size for both (default: the configs')")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results: dict[str, list[dict]] = {args.condinst: [], args.maskrcnn: []}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(args.repeats):
            for name in (args.maskrcnn, args.condinst):
                cmd = [sys.executable, __file__, "--child", name, "--cache", cache, "--iters", str(args.iters),
                       "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--infer-images",
                       str(args.infer_images), "--threads", str(args.threads), "--device", args.device]
                if args.size:
                    cmd += ["--size", str(args.size)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if res.returncode:
                    sys.exit(f"{name} failed:\n{res.stderr[-3000:]}")
                results[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    best = {n: {k: min(r[k] for r in rs) for k in rs[0] if k != "final_loss"} for n, rs in results.items()}
    c, m = best[args.condinst], best[args.maskrcnn]
    print(f"device={args.device} threads={args.threads or torch.get_num_threads()} batch={args.batch_size} "
          f"iters={args.iters} images={args.infer_images} (median per run, best of {args.repeats} runs)")
    print(f"load: {os.getloadavg()}")
    for n, b in best.items():
        mem = (f"peak RSS {b['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in b
               else f"peak train {b['train_peak_mib']:.0f} MiB, infer {b['infer_peak_mib']:.0f} MiB")
        print(f"{n:24s} train {b['train_s_per_iter'] * 1000:7.1f} ms/iter  infer {b['infer_s_per_image'] * 1000:6.1f} "
              f"ms/image  params {b['params'] / 1e6:.2f} M  {mem}")
    print(f"ratio CondInst / Mask R-CNN: train {c['train_s_per_iter'] / m['train_s_per_iter']:.2f}  "
          f"inference {c['infer_s_per_image'] / m['infer_s_per_image']:.2f}  (goal <= 1.0)")


if __name__ == "__main__":
    main()
