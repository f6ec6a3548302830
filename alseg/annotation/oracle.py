"""The simulated annotator: answers queries from the ground truth and charges seconds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alseg.annotation.cost import CostTable
from alseg.annotation.queries import Query
from alseg.data.coco import CocoDataset, decode_segmentation


@dataclass(frozen=True)
class Label:
    """One revealed label. kind: 'image' (the image is fully annotated: every instance's mask),
    'mask', 'box' or 'point' (with x, y and value 0/1)."""

    kind: str
    image_id: int
    ann_id: int | None = None
    x: float | None = None
    y: float | None = None
    value: int | None = None
    seconds: float = 0.0


class Oracle:
    def __init__(self, data: CocoDataset, costs: CostTable):
        self.data = data
        self.costs = costs
        self._instances = {i.ann_id: (r, i) for r in data.images for i in r.instances}

    def instance(self, ann_id: int):
        try:
            return self._instances[ann_id]
        except KeyError:
            raise KeyError(f"query names unknown instance ann_id={ann_id}") from None

    def cost(self, q: Query) -> float:
        if q.kind == "image":
            rec = self.data.by_id[q.image_id]
            present = len({i.label for i in rec.instances})
            return self.costs.image(len(rec.instances), present, self.data.num_classes)
        return {"instance": self.costs.mask, "point": self.costs.point, "box": self.costs.box}[q.kind]

    def answer(self, q: Query) -> list[Label]:
        """The labels a query reveals; the query's whole cost is carried by the first label."""
        if q.image_id not in self.data.by_id:
            raise KeyError(f"query names unknown image_id={q.image_id}")
        cost = self.cost(q)
        if q.kind == "image":
            rec = self.data.by_id[q.image_id]
            labels = [Label("image", q.image_id, seconds=cost)]
            labels += [Label("mask", q.image_id, i.ann_id) for i in rec.instances]
            return labels
        rec, inst = self.instance(q.ann_id)
        if q.kind == "instance":
            return [Label("mask", q.image_id, q.ann_id, seconds=cost)]
        if q.kind == "box":
            return [Label("box", q.image_id, q.ann_id, seconds=cost)]
        return [Label("point", q.image_id, q.ann_id, q.x, q.y, self.point_value(q.ann_id, q.x, q.y), cost)]

    def point_value(self, ann_id: int, x: float, y: float) -> int:
        """Ground-truth mask value at pixel (floor(x), floor(y)); the point must lie in the box."""
        rec, inst = self.instance(ann_id)
        bx, by, bw, bh = inst.bbox
        if not (bx <= x <= bx + bw and by <= y <= by + bh):
            raise ValueError(f"point ({x:.1f}, {y:.1f}) lies outside the box of instance {ann_id}")
        col = min(int(np.floor(x)), rec.width - 1)
        row = min(int(np.floor(y)), rec.height - 1)
        return int(decode_segmentation(inst.segmentation, rec.height, rec.width)[row, col])
