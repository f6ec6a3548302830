"""Up-front image header check (``alseg.data.images.check_image_headers``) on a COCO train2017-sized
list: 118,287 entries, pointing at a few hundred real image files.

    python benchmarks/image_headers.py                       # 118,287 entries
    python benchmarks/image_headers.py --entries 20000 --files 200 --workers 1 4 16

The files are copies of the real COCO JPEGs of ../shared/data/tiny_coco (640-pixel photos, as in
train2017) when present, else generated 640x480 JPEGs (a quarter with an EXIF orientation tag) and
PNGs; each entry's annotated size is the file's displayed size, so the check passes. Prints the
seconds and images/s of the header check per thread count, and, for comparison, the time a full
decode of every image (``read_image``) would take, extrapolated from a sample.

The files sit in the page cache after the first pass, so these figures are CPU-bound (PIL's header
parsing in Python, under the GIL: threads add nothing there). A second measurement reads
``--cold-files`` distinct files evicted from the page cache before each pass
(``posix_fadvise(DONTNEED)``): there each header waits on the disk, which the thread pool overlaps.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alseg.data.images import check_image_headers, default_workers, probe_header, read_image  # noqa: E402

TINY_COCO = Path(os.environ.get("ALSEG_TINY_COCO", Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny_coco"))


class Rec:
    __slots__ = ("image_id", "path", "width", "height")

    def __init__(self, image_id, path, width, height):
        self.image_id, self.path, self.width, self.height = image_id, path, width, height


def make_files(folder: Path, n: int, real: bool = True, shape=(480, 640)) -> tuple[list[Path], str]:
    sources = sorted((TINY_COCO / "images").glob("*/*.jpg")) if TINY_COCO.is_dir() and real else []
    files = []
    if sources:
        for i in range(n):
            src = sources[i % len(sources)]
            dst = folder / f"{i:06d}{src.suffix}"
            shutil.copyfile(src, dst)
            files.append(dst)
        return files, f"copies of {len(sources)} tiny_coco JPEGs"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    for i in range(n):
        img = np.stack([(x + i) % 256, (y * 2) % 256, rng.integers(0, 255, shape)], 2).astype(np.uint8)
        if i % 5 == 4:
            path = folder / f"{i:06d}.png"
            Image.fromarray(img).save(path)
        else:
            exif = Image.Exif()
            if i % 4 == 1:
                exif[0x0112] = 6
            path = folder / f"{i:06d}.jpg"
            Image.fromarray(img).save(path, quality=90, exif=exif.tobytes())
        files.append(path)
    return files, f"generated {shape[1]}x{shape[0]} JPEGs (a quarter with EXIF orientation 6) and PNGs"


def records(files: list[Path], entries: int) -> list[Rec]:
    """``entries`` records cycling over ``files``, sized as displayed (so the check passes)."""
    sizes = {}
    for f in files:
        h = probe_header(f)
        sizes[f] = h.size[::-1] if h.orientation in (5, 6, 7, 8) else h.size
    return [Rec(i, files[i % len(files)], *sizes[files[i % len(files)]]) for i in range(entries)]


def evict(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages (just written) are not evicted
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=118_287, help="list length (COCO train2017: 118,287)")
    ap.add_argument("--files", type=int, default=400, help="distinct files the entries point at")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="thread counts to time")
    ap.add_argument("--decode-sample", type=int, default=200, help="images decoded to extrapolate a full decode")
    ap.add_argument("--cold-files", type=int, default=3000, help="distinct files of the cold-cache pass (0: none)")
    args = ap.parse_args()
    workers = args.workers or sorted({1, default_workers()})
    with tempfile.TemporaryDirectory() as tmp:
        files, what = make_files(Path(tmp), args.files)
        recs = records(files, args.entries)
        print(f"{args.entries} entries -> {len(files)} files ({what}); {os.cpu_count()} CPUs")
        check_image_headers(recs[: len(files)], workers=1)  # warm the page cache
        for n in workers:
            t = time.perf_counter()
            report = check_image_headers(recs, workers=n, source="bench")
            dt = time.perf_counter() - t
            print(f"warm cache, {n:2d} thread(s): {dt:7.2f} s  {args.entries / dt:9.0f} images/s  "
                  f"(oriented {report['oriented']}, unconfirmed {report['unconfirmed']})")
        if args.cold_files and hasattr(os, "posix_fadvise"):
            cold_dir = Path(tmp) / "cold"
            cold_dir.mkdir()
            cold, what = make_files(cold_dir, args.cold_files, real=False, shape=(96, 128))
            cold_recs = records(cold, len(cold))
            print(f"cold cache: {len(cold)} distinct files ({what}), evicted before each pass")
            for n in workers:
                evict(cold)
                t = time.perf_counter()
                check_image_headers(cold_recs, workers=n, source="bench")
                dt = time.perf_counter() - t
                print(f"cold cache, {n:2d} thread(s): {dt:7.2f} s  {len(cold) / dt:9.0f} images/s")
        sample = recs[: args.decode_sample]
        t = time.perf_counter()
        for r in sample:
            read_image(r.path, "apply", (r.height, r.width), r.image_id)
        per = (time.perf_counter() - t) / len(sample)
        print(f"full decode (read_image), 1 thread: {per * 1e3:.2f} ms/image -> {per * args.entries:.0f} s "
              f"for {args.entries} images")


if __name__ == "__main__":
    main()
