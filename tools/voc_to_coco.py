"""Convert a Pascal VOC 2012 segmentation split to a COCO instances JSON (RLE masks).

    python tools/voc_to_coco.py --voc-root data/VOC2012 --split train --out instances_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

from alseg.data.voc import VOC_CLASSES, voc_to_coco_dict
from alseg.errors import DataError
from alseg.files import temp_file


def write_json_atomic(data: dict, out: Path) -> None:
    """Write to a temp file in the same folder, then os.replace: an existing file is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(out, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voc-root", required=True, type=Path, help="VOC2012 folder (JPEGImages, SegmentationObject, ...)")
    p.add_argument("--split", default="train", help="ImageSets/Segmentation/<split>.txt (default: train)")
    p.add_argument("--out", required=True, type=Path, help="output COCO JSON")
    p.add_argument("--difficult-as-crowd", action="store_true", help="mark difficult instances iscrowd=1")
    args = p.parse_args(argv)
    try:
        data = voc_to_coco_dict(args.voc_root, args.split, difficult_as_crowd=args.difficult_as_crowd)
        try:
            write_json_atomic(data, args.out)
        except OSError as e:
            raise DataError(f"{args.out}: cannot be written ({e})") from None
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = Counter(a["category_id"] for a in data["annotations"])
    per_class = ", ".join(f"{n}={counts[i + 1]}" for i, n in enumerate(VOC_CLASSES) if counts[i + 1])
    print(f"{args.out}: {len(data['images'])} images, {len(data['annotations'])} instances ({per_class or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
