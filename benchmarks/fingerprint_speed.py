"""Time of the data fingerprint a run records in state.json (alseg/data/fingerprint.py) at COCO
train2017 scale: the SHA-256 of a 448 MB annotation file and one ``stat`` per image of a
118,287-image list (no image is opened).

    python benchmarks/fingerprint_speed.py                  # full scale (writes ~450 MB to a temp dir)
    python benchmarks/fingerprint_speed.py --json-mb 50 --images 20000

Prints the seconds of each part; the stat times are for a warm file-system cache (the files were
just created), a cold network file system is slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alseg.data.fingerprint import image_list_sha256  # noqa: E402
from alseg.files import sha256_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json-mb", type=int, default=448)
    ap.add_argument("--images", type=int, default=118_287)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ann = tmp / "instances_train2017.json"
        block = os.urandom(1 << 20)
        with open(ann, "wb") as f:
            for _ in range(args.json_mb):
                f.write(block)
        images = tmp / "images"
        images.mkdir()
        records = []
        for i in range(args.images):
            name = f"{i:012d}.jpg"
            (images / name).write_bytes(b"x" * (i % 97))
            records.append(SimpleNamespace(image_id=i, file_name=name, path=images / name))
        t = time.perf_counter()
        sha256_file(ann)
        t_hash = time.perf_counter() - t
        t = time.perf_counter()
        image_list_sha256(SimpleNamespace(images=records))
        t_list = time.perf_counter() - t
    print(f"annotation file {args.json_mb} MB: sha256 {t_hash:.2f} s ({args.json_mb / t_hash:.0f} MB/s)")
    print(f"image list of {args.images} images (name + size): {t_list:.2f} s")


if __name__ == "__main__":
    main()
