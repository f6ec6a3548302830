"""Deterministic COCO data for the TFDP bit-identity tests: 3,000 polygon instances (plus RLEs and
crowd regions) on awkward coordinates, built from integers only so that it does not depend on any
random number generator's version."""

from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils


class _Lcg:
    """A 64-bit linear congruential generator (Knuth's MMIX constants): the same numbers everywhere."""

    def __init__(self, seed: int):
        self.s = seed & (2**64 - 1)

    def next(self) -> int:
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        return self.s >> 33  # 31 bits

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return lo + self.next() % (hi - lo + 1)

    def unit(self) -> float:
        return self.next() / 2**31


def poly3000() -> dict:
    """3,000 polygon instances in 300 images of 40..400 pixels a side: star shapes with 3..80
    vertices, radii from under a pixel to wider than the image, centres partly outside the image,
    coordinates on 1 or 2 decimals (many on pycocotools' half grid steps), 1 in 5 with several parts,
    some with a degenerate (4-number) part; plus 40 RLE instances (compressed and uncompressed), 20
    crowd regions and one annotation of each invalid kind the scorer meets after validation (empty,
    zero area)."""
    r = _Lcg(3000)
    images = []
    for i in range(300):
        images.append({"id": 1000 + 7 * i, "file_name": f"{i}.jpg", "height": r.int(40, 400), "width": r.int(40, 400)})
    anns = []

    def star(h, w):
        n = r.int(3, 80)
        rad = 0.4 + r.unit() ** 2 * 1.2 * max(h, w) / 2
        cx = -0.2 * w + 1.4 * w * r.unit()
        cy = -0.2 * h + 1.4 * h * r.unit()
        dec = 1 if r.int(0, 1) else 2
        pts = []
        for j in range(n):
            a = 2 * math.pi * (j + 0.8 * r.unit()) / n
            rr = rad * (0.25 + 0.75 * r.unit())
            pts += [round(cx + rr * math.cos(a), dec), round(cy + rr * math.sin(a), dec)]
        return pts

    for k in range(3000):
        im = images[r.int(0, len(images) - 1)]
        h, w = im["height"], im["width"]
        parts = [star(h, w) for _ in range(1 if r.int(0, 4) else r.int(2, 3))]
        if r.int(0, 40) == 0:
            parts.append([1.0, 2.0, 3.0, 4.0])  # degenerate part: dropped, the rest scored
        xs = [v for p in parts for v in p[0::2]]
        ys = [v for p in parts for v in p[1::2]]
        anns.append({"id": 5 + 3 * k, "image_id": im["id"], "category_id": 1 + r.int(0, 9), "iscrowd": 0,
                     "segmentation": parts, "area": 1.0,
                     "bbox": [min(xs), min(ys), max(max(xs) - min(xs), 0.01), max(max(ys) - min(ys), 0.01)]})
    for k in range(60):
        im = images[r.int(0, len(images) - 1)]
        h, w = im["height"], im["width"]
        m = np.zeros((h, w), np.uint8)
        for _ in range(r.int(1, 3)):
            y0, x0 = r.int(0, h - 1), r.int(0, w - 1)
            m[y0:y0 + r.int(1, h // 2), x0:x0 + r.int(1, w // 2)] = 1
        if k % 3 == 0:
            m[r.int(0, h - 1):, r.int(0, w - 1)] = 0  # a cut: sometimes two parts
        rle = mask_utils.encode(np.asfortranarray(m))
        if k % 4 == 0:  # uncompressed
            flat = m.ravel(order="F")
            change = np.flatnonzero(np.diff(flat)) + 1
            edges = np.concatenate([[0], change, [flat.size]])
            runs = np.diff(edges).tolist()
            seg = {"counts": ([0] + runs) if flat[0] else runs, "size": [h, w]}
        else:
            seg = {"counts": rle["counts"].decode("ascii"), "size": [h, w]}
        anns.append({"id": 20000 + k, "image_id": im["id"], "category_id": 1 + r.int(0, 9),
                     "iscrowd": 1 if k >= 40 else 0, "segmentation": seg, "area": 1.0, "bbox": [0, 0, 1, 1]})
    im = images[0]
    anns.append({"id": 30001, "image_id": im["id"], "category_id": 1, "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 1, 1],
                 "segmentation": [[10.2, 10.2, 10.4, 10.2, 10.4, 10.4, 10.2, 10.4]]})  # covers no pixel centre
    anns.append({"id": 30002, "image_id": im["id"], "category_id": 1, "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 1, 1],
                 "segmentation": [[10, 10, 30, 10, 30, 10.6, 10, 10.6]]})  # one pixel row: zero area
    cats = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in range(1, 11)]
    return {"info": {"description": "poly3000"}, "licenses": [], "images": images, "annotations": anns,
            "categories": cats}
