"""Speed of TFDP scoring at COCO scale (118k images, ~860k instances) on 2 worker processes.

    python benchmarks/tfdp_speed.py                 # full scale (target: scoring <= 30 s on 2 cores)
    python benchmarks/tfdp_speed.py --images 5000   # smaller

The annotation file is built by replicating the real annotations of tiny_coco (32 COCO train images)
under new image / annotation ids, subsampled to COCO's 7.3 instances per image; when tiny_coco is
absent, random star-shaped polygons with 10-60 vertices are generated instead. The file is written to
a temporary folder and loaded (timed separately), then ``score_dataset`` is timed on its own.
Peak memory: ru_maxrss of this process and of the largest child (the workers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO.parent / "shared" / "data" / "tiny_coco" / "annotations" / "instances_train2017.json"
COCO_IMAGES = 118_287
COCO_INSTANCES = 860_001


def _random_polygon(rng: random.Random, w: int, h: int) -> list[float]:
    n = rng.randint(10, 60)
    r = rng.uniform(4, min(w, h) / 3)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    pts = []
    for i in range(n):
        a = 2 * math.pi * i / n
        rr = r * rng.uniform(0.4, 1.0)
        pts += [round(cx + rr * math.cos(a), 2), round(cy + rr * math.sin(a), 2)]
    return pts


def build(n_images: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    per_image = COCO_INSTANCES / COCO_IMAGES
    if TINY.is_file():
        src = json.loads(TINY.read_text())
        by_img: dict[int, list] = {}
        for a in src["annotations"]:
            by_img.setdefault(a["image_id"], []).append(a)
        n_src = sum(1 for a in src["annotations"])
        rate = min(1.0, per_image * len(src["images"]) / n_src)
        images, anns = [], []
        for i in range(n_images):
            s_img = src["images"][i % len(src["images"])]
            images.append({**s_img, "id": i + 1, "file_name": f"{i + 1:012d}.jpg"})
            for a in by_img.get(s_img["id"], []):
                if rng.random() < rate:
                    anns.append({**a, "id": len(anns) + 1, "image_id": i + 1})
        return {"info": src.get("info", {}), "licenses": src.get("licenses", []), "images": images,
                "annotations": anns, "categories": src["categories"]}
    print(f"{TINY} not found: generating random polygons (10-60 vertices) instead", file=sys.stderr)
    images, anns = [], []
    for i in range(n_images):
        w, h = 640, 480
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": w, "height": h})
        for _ in range(int(per_image) + (rng.random() < per_image % 1)):
            poly = _random_polygon(rng, w, h)
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": rng.randint(1, 80), "iscrowd": 0,
                         "segmentation": [poly], "area": 0.0,
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
    cats = [{"id": c, "name": f"class{c}", "supercategory": "x"} for c in range(1, 81)]
    return {"images": images, "annotations": anns, "categories": cats}


def _mib(kib: int) -> float:
    return kib / 1024.0  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=COCO_IMAGES, help="images (default: COCO train2017's %(default)s)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--variant", default="si_cb_scs")
    p.add_argument("--contour", default="largest")
    args = p.parse_args(argv)

    from alseg.data.coco import load_json
    from alseg.tfdp.scoring import score_dataset

    with tempfile.TemporaryDirectory(prefix="tfdp-bench-") as tmp:
        path = Path(tmp) / "instances_bench.json"
        t = time.perf_counter()
        data = build(args.images)
        n_ann = len(data["annotations"])
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
        del data
        t_build = time.perf_counter() - t
        size_mb = path.stat().st_size / 2**20
        print(f"built {args.images} images, {n_ann} annotations ({size_mb:.0f} MiB) in {t_build:.1f} s")

        t = time.perf_counter()
        data = load_json(path)
        t_load = time.perf_counter() - t
        print(f"JSON loading: {t_load:.2f} s")

        t, c = time.perf_counter(), time.process_time()
        res = score_dataset(data, variant=args.variant, contour=args.contour, workers=args.workers)
        t_score, t_parent_cpu = time.perf_counter() - t, time.process_time() - c

    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    n = len(res.stats.status)
    print(f"scoring ({args.variant}, contour {args.contour}, workers={args.workers}, {os.cpu_count()} CPUs): "
          f"{t_score:.2f} s wall, {n / t_score:,.0f} instances/s "
          f"({res.n_scored} scored, {res.n_crowd} crowd, problems {res.problems or 'none'})")
    print(f"CPU: {res.worker_cpu_s:.2f} s measuring shapes in the workers "
          f"({1e6 * res.worker_cpu_s / max(1, n):.1f} us/instance), parent {t_parent_cpu:.2f} s")
    print(f"peak memory: parent ru_maxrss {_mib(self_rss):.0f} MiB (RUSAGE_SELF; holds the loaded JSON), "
          f"children ru_maxrss {_mib(child_rss):.0f} MiB (RUSAGE_CHILDREN; Linux carries the parent's RSS "
          f"over fork+exec into it), largest worker's own peak {_mib(res.worker_peak_rss_kib):.0f} MiB (VmHWM)")
    target = 30.0 * args.images / COCO_IMAGES
    print(f"target (30 s at COCO scale, scaled to {args.images} images: {target:.1f} s): "
          f"{'met' if t_score <= target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
