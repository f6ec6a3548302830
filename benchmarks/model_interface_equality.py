"""The numbers of Mask R-CNN before and after it moved behind the model interface (issue 14): the
same seeded models, inputs and runs through an old checkout and this one, compared bitwise.

    # an old checkout (any commit before the interface), e.g.:
    mkdir -p /tmp/alseg_base && git archive 4a94076 | tar -x -C /tmp/alseg_base
    python benchmarks/model_interface_equality.py --before /tmp/alseg_base              # quick checks + FAST loops
    python benchmarks/model_interface_equality.py --before /tmp/alseg_base --full       # + default and apis_fig2a

Checks, each run once per checkout in a subprocess (``PYTHONPATH`` = that checkout):

(a) per-instance inference of seeded models (plain, with a mask-IoU head, point-supervised) on
    random images: boxes, scores, labels, class_probs, mask_probs, embeddings, image_embedding,
    pasted masks, RoI features, pred_iou; ``infer_pool`` arrays on synthetic images;
    one training step's loss dict (plain and point-supervised targets); state_dict names/shapes;
(b) APIS prediction sets: anchors at the default and at a given match IoU, the scales set
    ([48, 64]) and flips, through ``ApisPoints._prediction_sets``;
(c) short loop runs (tests/conftest.py FAST: 64-pixel images, 6 iterations) for random,
    mask_entropy, taudis, iou_guided, apis (anchors; scales + flip) and afis: the round records;
(--full) the default experiment (`alseg`) and `alseg experiment=apis_fig2a` (seed 0): results.jsonl.

Equal means: tensors/arrays with the same dtype, shape and bytes; records equal as JSON text (NaN
included), except APIS's boundary-distance analysis keys (NONDETERMINISTIC: cv2's precise distance
transform is not deterministic), equal to a relative 1e-5 and listed. Prints one line per check and exits 1 when any differs. On 2 CPU cores (c) takes a few
minutes per checkout; --full adds the default experiment (~10 min) and apis_fig2a (longer) twice.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

FAST = [
    "dataset.num_train=24", "dataset.num_val=8", "dataset.image_size=64", "dataset.max_radius=20",
    "model.min_size=64", "model.max_size=64", "model.anchor_sizes=[8,16,32,64,128]",
    "trainer.schedule.iters=6", "trainer.schedule.warmup_iters=2", "trainer.schedule.batch_size=2",
    "trainer.finetune.iters=4", "al.initial=4", "al.budget=4", "al.rounds=2",
    "logger=files", "~logger.console", "progress=false", "device=cpu",
]
# Record keys computed with cv2.distanceTransform(DIST_MASK_PRECISE) (ApisPoints.analyze), which
# differs between identical calls by up to ~5e-7 (even with cv2.setNumThreads(1)): two runs of the
# same code may differ there in the 7th-8th digit. Compared to a relative 1e-5, and named.
NONDETERMINISTIC = {"selection/boundary_distance", "selection/boundary_distance_random"}
POOL_FIELDS = ("image_ids", "image_index", "boxes", "scores", "labels", "class_probs", "mask_probs", "embeddings",
               "image_embeddings", "pred_iou")
LOOPS = {
    "random": [],
    "mask_entropy": ["strategy=mask_entropy", "al.rounds=1"],
    "taudis": ["strategy=taudis", "strategy.alpha=4", "strategy.beta=2", "al.rounds=1"],
    "taudis_cm": ["strategy=avg_cm", "al.rounds=1"],
    "iou_guided": ["experiment=iou_guided_synthetic", "al.initial=4", "al.budget=4", "al.rounds=1",
                   "model.mask_iou.iters=5"],
    "apis": ["experiment=apis_synthetic", "strategy=apis", "al.rounds=1", "strategy.match_iou=0.3"],
    "apis_scales_flip": ["experiment=apis_synthetic", "strategy=apis", "al.rounds=1", "strategy.match_iou=0.3",
                         "strategy.scales=[48,64]", "strategy.flip=true"],
    "afis": ["experiment=afis_synthetic", "al.rounds=1", "al.initial=7.9", "al.budget=3.0"],
}


# ------------------------------------------------------------------ run inside one checkout
def _np(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _np(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_np(v) for v in x]
    return x


def _predict_instances(model, images, **kw):
    if hasattr(model, "predict_instances"):  # the interface
        return model.predict_instances(images, **kw)
    from alseg.models.instance_inference import predict_instances

    return predict_instances(model, images, **kw)


def _anchors(model, image, boxes, labels, iou):
    if hasattr(model, "prediction_sets"):
        return model.prediction_sets(image, boxes, labels, match_iou=iou)
    from alseg.models.instance_inference import anchor_predictions

    return anchor_predictions(model, image, boxes, labels, iou)


def quick(out: Path) -> None:
    import torch

    from alseg.data.build import synthetic
    from alseg.models.maskrcnn import build_maskrcnn
    from alseg.predictions import infer_pool
    from alseg.strategies.apis import ApisPoints

    res = {}
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 48, 64, generator=g), torch.rand(3, 80, 60, generator=g)]
    variants = {"plain": {}, "iou": {"mask_iou": {"iters": 5}}, "points": {"point_supervision": True}}
    for name, kw in variants.items():
        torch.manual_seed(0)
        model = build_maskrcnn(3, min_size=64, max_size=64, box_score_thresh=0.0, box_detections_per_img=30, **kw)
        res[f"state/{name}"] = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        model.eval()
        with torch.no_grad():
            res[f"forward/{name}"] = _np(model(images))
        res[f"instances/{name}"] = _np(_predict_instances(model, images, paste_masks=True, roi_features=True))
        image = images[0]
        boxes = torch.tensor([[8.0, 8.0, 40.0, 40.0], [10.0, 12.0, 30.0, 40.0], [0.0, 0.0, 2.0, 2.0]])
        labels = torch.tensor([1, 2, 1])
        for iou in (None, 0.3):
            res[f"anchors/{name}/{iou}"] = _np(_anchors(model, image, boxes, labels, iou))
        for tag, kw2 in (("plain", {}), ("flip", {"flip": True}), ("scales", {"scales": [48, 64]}),
                         ("scales_flip", {"scales": [48, 96], "flip": True})):
            res[f"apis_sets/{name}/{tag}"] = _np(ApisPoints(match_iou=0.1, **kw2)._prediction_sets(model, image, boxes,
                                                                                                    labels))
        # One training step's losses, with a mask instance, a point-only one and a box-only one.
        torch.manual_seed(0)
        model.train()
        masks = torch.zeros(3, 48, 64, dtype=torch.uint8)
        masks[0, 8:40, 8:40] = 1
        target = {"boxes": boxes, "labels": labels, "masks": masks,
                  "has_mask": torch.tensor([True, False, False] if name == "points" else [True, True, True]),
                  "points": torch.tensor([[1, 20.0, 25.0, 1.0], [1, 11.0, 13.0, 0.0]])}
        losses = model([images[0]], [target])
        res[f"losses/{name}"] = {k: float(v.detach()) for k, v in losses.items()}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic(cache_dir=tmp, num_train=5, num_val=1, image_size=64, max_radius=20)
        torch.manual_seed(0)
        model = build_maskrcnn(data.train.num_classes, min_size=64, max_size=64, box_score_thresh=0.0,
                               box_detections_per_img=7, mask_iou={"iters": 5})
        pp = infer_pool(model, data.train, data.train.image_ids[:4], batch_size=3, progress=False)
        res["infer_pool"] = {k: getattr(pp, k) for k in POOL_FIELDS}
    with open(out, "wb") as f:
        pickle.dump(res, f)


def loops(out: Path, names: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from alseg.cli import CONFIG_DIR
    from alseg.engine.loop import ActiveLearningLoop

    res = {}
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
                cfg = compose("config", overrides=[f"paths.cache_dir={tmp}/cache", *FAST, *LOOPS[name]])
            res[name] = ActiveLearningLoop(cfg, Path(tmp) / "run").run()
        print(f"  {name}: done", file=sys.stderr, flush=True)
    out.write_text(json.dumps(res, sort_keys=True))


def full(out: Path) -> None:
    res = {}
    for name, args in (("default", []), ("apis_fig2a", ["experiment=apis_fig2a", "seed=0"])):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "ALSEG_CACHE": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
            subprocess.run([sys.executable, "-m", "alseg.cli", "progress=false", *args], cwd=tmp, env=env,
                           check=True, stdout=subprocess.DEVNULL)
            (results,) = Path(tmp, "runs").glob("*/*/results.jsonl")
            res[name] = [json.loads(line) for line in results.read_text().splitlines()]
    out.write_text(json.dumps(res, sort_keys=True))


# ------------------------------------------------------------------ compare two checkouts
def _records_equal(a: list[dict], b: list[dict]) -> tuple[bool, list[str]]:
    """Round records equal as JSON text, but for NONDETERMINISTIC keys, equal to a relative 1e-5;
    with the names of those that differed within it."""
    if len(a) != len(b):
        return False, []
    loose = []
    for x, y in zip(a, b):
        for key in sorted(set(x) | set(y)):
            if json.dumps(x.get(key)) == json.dumps(y.get(key)):
                continue
            if key in NONDETERMINISTIC and isinstance(x.get(key), float) and isinstance(y.get(key), float) \
                    and abs(x[key] - y[key]) <= 1e-5 * max(abs(x[key]), abs(y[key])):
                loose.append(f"round {x['round']} {key}: {x[key]!r} vs {y[key]!r}")
                continue
            return False, [f"round {x.get('round')} {key}: {x.get(key)!r} vs {y.get(key)!r}"]
    return True, loose


def _equal(a, b) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _run(checkout: Path, what: str, out: Path, extra: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(checkout), "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--inner", what, str(out), *extra], env=env,
                   cwd=checkout, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="an alseg checkout from before the model interface")
    p.add_argument("--after", type=Path, default=HERE, help="the checkout to compare (default: this one)")
    p.add_argument("--full", action="store_true", help="also the default experiment and apis_fig2a (seed 0)")
    p.add_argument("--loops", default=",".join(LOOPS), help=f"FAST loop runs to compare (default: {','.join(LOOPS)})")
    p.add_argument("--inner", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        what, out, *rest = args.inner
        {"quick": lambda: quick(Path(out)), "loops": lambda: loops(Path(out), rest[0].split(",") if rest and rest[0] else []),
         "full": lambda: full(Path(out))}[what]()
        return 0
    if args.before is None:
        p.error("--before CHECKOUT is required")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        kinds = [("quick", []), ("loops", [args.loops])] + ([("full", [])] if args.full else [])
        for what, extra in kinds:
            outs = []
            for tag, checkout in (("before", args.before), ("after", args.after)):
                out = Path(tmp) / f"{what}_{tag}"
                print(f"{what}: running {tag} ({checkout})", flush=True)
                _run(checkout.resolve(), what, out, extra)
                outs.append(pickle.loads(out.read_bytes()) if what == "quick" else json.loads(out.read_text()))
            before, after = outs
            for key in sorted(set(before) | set(after)):
                notes = []
                if what == "quick":
                    ok = key in before and key in after and _equal(before[key], after[key])
                else:
                    ok, notes = _records_equal(before[key], after[key]) if key in before and key in after else (False, [])
                failed += not ok
                extra_info = ""
                if what == "full" and ok:
                    last = after[key][-1]
                    extra_info = (f"  (last round {last['round']}: mask AP {last['mask_AP']:.4f}, "
                                  f"mask AP50 {last['mask_AP50']:.4f}, box AP {last['box_AP']:.4f})")
                print(f"{'EQUAL' if ok else 'DIFFERENT':>9}  {what}/{key}{extra_info}", flush=True)
                for note in notes:
                    print(f"{'':>11}{'within 1e-5 (cv2 nondeterminism)' if ok else 'first difference'}: {note}")
    print("all equal" if not failed else f"{failed} check(s) differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
