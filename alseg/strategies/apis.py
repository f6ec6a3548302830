"""APIS (apis-active-pointly-supervised.txt): point queries inside the ground-truth boxes.

- ``ApisInitialPoints``: before round 1, the class and box of every instance (C, B; box queries)
  and one point per instance sampled uniformly in its box (P0, Sec. 3.1 Eq. 1).
- ``ApisPoints``: at each step, for every instance with a known box, the most informative point
  of its box by a metric over its prediction set (Sec. 3.2): entropy of the averaged prediction
  (Eq. 3-4), variance across the set (Eq. 5), the lowest entropy, random points, or the two
  oracle difficulty probes of Table 1 (largest / least error against the ground-truth mask).
  The prediction set here is the multiple anchors (A): the proposals matched to the instance.

Queries come most uncertain first, so ``al.budget_unit=all`` gives every instance one point per
step (the paper's default), and a budget in points gives a step's points to the most uncertain
instances (the paper's alternative; instances then end with different counts).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from alseg import config_check as check
from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, point_query
from alseg.data.coco import decode_segmentation
from alseg.data.torch_dataset import read_image, to_tensor
from alseg.errors import ConfigError
from alseg.strategies.apis_core import (bring_many_to_box, cell_centers, random_point_in_box, select_point,
                                        select_point_error)
from alseg.strategies.base import ENSEMBLE, MODEL, POINT_SUPERVISION, PREDICTION_SETS, SelectionContext, Strategy

POINT_METRICS = ("entropy", "variance", "lowest_entropy", "random", "max_error", "least_error")


class ApisInitialPoints(Strategy):
    name = "apis_initial"
    needs = frozenset({POINT_SUPERVISION})  # box-only instances train no mask

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        out = []
        for rec in ctx.data.images:
            for inst in rec.instances:
                x, y, w, h = inst.bbox
                out.append(Query("box", rec.image_id, inst.ann_id))
                px, py = random_point_in_box((x, y, x + w, y + h), rng)
                out.append(point_query(rec.image_id, inst.ann_id, px, py))
        return out


class ApisPoints(Strategy):
    name = "apis"

    def __init__(self, name: str | None = None, metric: str = "entropy", max_cells: int = 64,
                 match_iou: float | None = None, scales: list[int] | None = None, flip: bool = False,
                 models: int = 1):
        super().__init__(name)
        # The multiple-models set M (Sec. 3.2 (b)): with models > 1 the loop trains models - 1 more
        # networks from other initialisations; every network's anchors join the prediction set.
        self.ensemble_size = check.integer("models", models, 1)
        # The multiple-scales set S (Sec. 3.2 (c)): the model run at several input sizes (and
        # flipped), every run's anchors concatenated into one prediction set.
        self.scales = check.integer_list("scales", scales, 16, none=True)
        self.flip = check.boolean("flip", flip)
        self.metric = check.choice("metric", metric, POINT_METRICS)
        self.max_cells = check.integer("max_cells", max_cells, 1)
        # null: the RoI heads' foreground threshold; a proposal matches an instance at IoU >= match_iou.
        self.match_iou = check.number("match_iou", match_iou, 0, 1, low_open=True, none=True)
        self.needs = frozenset({POINT_SUPERVISION} if self.metric == "random" else
                               {MODEL, POINT_SUPERVISION, PREDICTION_SETS}
                               | ({ENSEMBLE} if self.ensemble_size > 1 else set()))

    def _grid(self, box) -> tuple[int, int]:
        """The candidate grid over the box Omega: one cell per pixel, at most max_cells a side."""
        x1, y1, x2, y2 = box
        return min(max(1, math.ceil(y2 - y1)), self.max_cells), min(max(1, math.ceil(x2 - x1)), self.max_cells)

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        if self.metric != "random" and ctx.model is None:
            raise ConfigError(f"strategy {self.name!r} needs the previous round's model; use apis_initial first")
        models = (ctx.get("ensemble") if self.ensemble_size > 1 else [ctx.model]) if self.metric != "random" else []
        scored: list[tuple[float, Query]] = []
        self._maps: dict[int, tuple[np.ndarray, tuple]] = {}  # ann_id -> (prediction maps, box), for analyze()
        for image_id, view in sorted(ctx.ledger.training_views().items()):
            rec = ctx.data.by_id[image_id]
            insts = [i for i in rec.instances if i.ann_id in view.box_ann_ids]
            if not insts:
                continue
            boxes = [(x, y, x + w, y + h) for x, y, w, h in (i.bbox for i in insts)]
            if self.metric == "random":
                sets = [None] * len(insts)
            else:
                image = to_tensor(read_image(rec)).to(ctx.device)
                gt_boxes, gt_labels = torch.tensor(boxes, dtype=torch.float32), torch.tensor([i.label for i in insts])
                per_model = [self._prediction_sets(m, image, gt_boxes, gt_labels) for m in models]
                sets = [(torch.cat([pm[g][0] for pm in per_model]), torch.cat([pm[g][1] for pm in per_model]))
                        for g in range(len(insts))]
            for inst, box, pred in zip(insts, boxes, sets):
                if pred is None:
                    x, y = random_point_in_box(box, rng)
                    scored.append((float("nan"), point_query(image_id, inst.ann_id, x, y)))
                    continue
                probs, pboxes = (t.cpu().numpy() for t in pred)
                grid = self._grid(box)
                maps = bring_many_to_box(probs, pboxes, box, grid) if len(probs) else np.zeros((0, *grid))
                self._maps[inst.ann_id] = (maps, box)
                if self.metric in ("max_error", "least_error"):
                    gt = self._gt_on_grid(rec, inst, box, grid)
                    choice = select_point_error(maps, gt, self.metric.split("_")[0], rng, box)
                else:
                    choice = select_point(maps, self.metric, rng, box)
                scored.append((choice.score, point_query(image_id, inst.ann_id, choice.x, choice.y, choice.score)))
        # Most informative first (lowest first for lowest_entropy / least_error); unscored last.
        sign = 1.0 if self.metric in ("lowest_entropy", "least_error") else -1.0
        order = sorted(range(len(scored)), key=lambda k: (math.isnan(scored[k][0]),
                                                          sign * scored[k][0] if not math.isnan(scored[k][0]) else 0.0, k))
        return [scored[k][1] for k in order]

    def _prediction_sets(self, model, image, boxes, labels):
        """Per instance (probs (K, h, w), frames (K, 4)) over every scale and flip: the model's
        ``prediction_sets`` of each run, concatenated (scales in order, each plain then flipped)."""
        runs = []
        for size in self.scales or [None]:
            runs.append(model.prediction_sets(image, boxes, labels, match_iou=self.match_iou, scale=size))
            if self.flip:
                runs.append(model.prediction_sets(image, boxes, labels, match_iou=self.match_iou, scale=size, flip=True))
        return [(torch.cat([r[g][0] for r in runs]), torch.cat([r[g][1] for r in runs])) for g in range(len(boxes))]

    def analyze(self, ctx: SelectionContext, queries: list[Query], max_instances: int = 500,
                max_pictures: int = 6) -> dict:
        """Sec. 4.3 and Fig. 4 of the paper, for the points just selected: the fraction the previous
        model misclassified (its mean prediction at the point, thresholded at 0.5, against the
        label), the mean distance to the ground-truth boundary against random points in the same
        boxes, and a picture per sampled instance (ground truth, prediction, uncertainty, point)."""
        maps = getattr(self, "_maps", {})
        rng = np.random.default_rng(0)
        wrong, dist, dist_random, shown = [], [], [], []
        for q in [q for q in queries if q.kind == "point"][:max_instances]:
            rec, inst = ctx.oracle.instance(q.ann_id)
            mask = decode_segmentation(inst.segmentation, rec.height, rec.width)
            to_edge = _distance_to_boundary(mask)
            col, row = min(int(q.x), rec.width - 1), min(int(q.y), rec.height - 1)
            dist.append(float(to_edge[row, col]))
            x1, y1 = inst.bbox[0], inst.bbox[1]
            rx, ry = random_point_in_box((x1, y1, x1 + inst.bbox[2], y1 + inst.bbox[3]), rng)
            dist_random.append(float(to_edge[min(int(ry), rec.height - 1), min(int(rx), rec.width - 1)]))
            pred = maps.get(q.ann_id)
            if pred is not None and len(pred[0]):
                mean = pred[0].mean(0)
                xs, ys = cell_centers(pred[1], *mean.shape)
                p = mean[int(np.abs(ys - q.y).argmin()), int(np.abs(xs - q.x).argmin())]
                wrong.append(float((p >= 0.5) != bool(mask[row, col])))
                if len(shown) < max_pictures:
                    shown.append((mask, pred, q))
        out = {"points": len(dist)}
        if dist:
            out.update(boundary_distance=float(np.mean(dist)), boundary_distance_random=float(np.mean(dist_random)))
        if wrong:
            out["misclassified_fraction"] = float(np.mean(wrong))
        if shown and ctx.round_dir is not None:
            _plot_points(shown, ctx.round_dir / "apis_points.png")
        return out

    @staticmethod
    def _gt_on_grid(rec, inst, box, grid) -> np.ndarray:
        """The ground-truth mask at the grid's cell centres (the oracle probes of Table 1)."""
        mask = decode_segmentation(inst.segmentation, rec.height, rec.width)
        xs, ys = cell_centers(box, *grid)
        cols = np.clip(np.floor(xs).astype(int), 0, rec.width - 1)
        rows = np.clip(np.floor(ys).astype(int), 0, rec.height - 1)
        return mask[np.ix_(rows, cols)].astype(np.float64)


def _distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixel distance to the mask's boundary, inside and outside (Fig. 4c)."""
    import cv2

    m = mask.astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(m > 0, inside, outside)


def _plot_points(shown, path) -> None:
    """Fig. 4a: per instance, the ground truth in its box, the mean prediction, the entropy, the point."""
    import matplotlib.pyplot as plt

    from alseg.plots import save_figure
    from alseg.strategies.apis_core import entropy_map

    fig, axes = plt.subplots(len(shown), 3, figsize=(7.5, 2.5 * len(shown)), squeeze=False)
    for row, (mask, (maps, box), q) in enumerate(shown):
        x1, y1, x2, y2 = (int(v) for v in box)
        crop = mask[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
        extent = (box[0], box[2], box[3], box[1])
        for col, (img, title) in enumerate(((crop, "ground truth"), (maps.mean(0), "prediction"),
                                            (entropy_map(maps), "entropy"))):
            ax = axes[row, col]
            ax.imshow(img, extent=extent, cmap="viridis", vmin=0, vmax=1 if col < 2 else np.log(2))
            ax.plot([q.x], [q.y], "r+", markersize=12, mew=2)
            ax.set_title(f"{title} (ann {q.ann_id})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
