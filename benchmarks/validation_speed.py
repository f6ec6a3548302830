"""Time of the up-front annotation validation (alseg.data.validation) at COCO train2017 scale.

    python benchmarks/validation_speed.py                 # 118,287 images, ~860k annotations
    python benchmarks/validation_speed.py --images 20000  # smaller

The annotation list is built as for benchmarks/tfdp_speed.py: the real annotations of tiny_coco
(polygons, multi-part polygons, crowd RLEs) replicated under new image / annotation ids and
subsampled to COCO's 7.3 annotations per image; random star-shaped polygons when tiny_coco is absent
(looked up in $ALSEG_TINY_COCO, then ../shared/data/tiny_coco). Prints the wall and CPU time of
``check_coco`` (images, categories and every annotation, crowd included) and, for context, of the
whole ``CocoDataset`` built from the same dict (validation + records, no image files checked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tfdp_speed  # noqa: E402  (the same annotation list as the TFDP benchmark)

REPO = Path(__file__).resolve().parents[1]


def _tiny_coco() -> Path:
    root = Path(os.environ.get("ALSEG_TINY_COCO", REPO.parent / "shared" / "data" / "tiny_coco"))
    return root / "annotations" / "instances_train2017.json"


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=tfdp_speed.COCO_IMAGES,
                   help="images (default: COCO train2017's %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the validation pass (best is reported)")
    args = p.parse_args(argv)

    from alseg.data.coco import CocoDataset
    from alseg.data.validation import check_coco

    tfdp_speed.TINY = _tiny_coco()
    source = "tiny_coco replicated" if tfdp_speed.TINY.is_file() else "random polygons"
    data = tfdp_speed.build(args.images)
    n_ann = len(data["annotations"])
    n_crowd = sum(1 for a in data["annotations"] if a.get("iscrowd"))
    print(f"{args.images} images, {n_ann} annotations ({n_crowd} crowd), from {source}")

    best = None
    for _ in range(args.repeat):
        check, wall, cpu = _timed(lambda: check_coco(data, require_names=True))
        best = (wall, cpu) if best is None or wall < best[0] else best
    problems = check.annotations.counts()
    print(f"validation (check_coco): {best[0]:.2f} s wall, {best[1]:.2f} s CPU "
          f"({1e6 * best[0] / n_ann:.1f} us/annotation), problems: {problems or 'none'}")

    ds, wall, cpu = _timed(lambda: CocoDataset(data, "images", source="bench", check_images=False))
    n_inst = sum(len(r.instances) for r in ds.images)
    print(f"CocoDataset (validation + {len(ds.images)} image records, {n_inst} instances): {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
