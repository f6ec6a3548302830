"""AFIS, the fully-supervised baselines of APIS (apis-active-pointly-supervised.txt Sec. 3.3):
the class and box of every instance are known; full masks are queried, for whole images or for
single instances, chosen by

- mean entropy: an instance's uncertainty is the mean point entropy inside its ground-truth box
  (over its anchor prediction set); an image's, the mean over its instances; highest first;
- detection quality: the GIoU loss between the ground-truth box and its best prediction (the
  detection of its class with the highest IoU); lowest first (well-detected instances make the
  most of a mask label);
- random: images or instances in a random order fixed by the seed (Fig. 6's random sampling; no
  model needed).

With ``al.budget_unit=seconds_per_instance`` an AFIS step costs the seconds of an APIS step (0.9 s
per instance of the pool), so the two settings compare on one axis of annotation hours (Fig. 7).
An instance without any matching prediction has entropy log 2 and detection loss 2 (the maximum).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import box_iou, generalized_box_iou_loss

from alseg import config_check as check
from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, instance_query
from alseg.data.torch_dataset import read_image, to_tensor
from alseg.errors import ConfigError
from alseg.strategies.apis_core import bring_many_to_box, entropy_map
from alseg.strategies.base import MODEL, POINT_SUPERVISION, PREDICTION_SETS, SelectionContext, Strategy


class AfisInitial(Strategy):
    """Boxes (and classes) of every instance, then masks of random instances: with a budget in
    seconds equal to APIS's P0 (box + one point per instance), the masks use the points' seconds."""

    name = "afis_initial"
    needs = frozenset({POINT_SUPERVISION})  # box-only instances train no mask

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        insts = [(r.image_id, i.ann_id) for r in ctx.data.images for i in r.instances]
        boxes = [Query("box", im, a) for im, a in insts]
        return boxes + [instance_query(*insts[k]) for k in rng.permutation(len(insts))]


class AfisMasks(Strategy):
    name = "afis"
    needs = frozenset({MODEL, POINT_SUPERVISION})

    def __init__(self, name: str | None = None, level: str = "instance", metric: str = "mean_entropy",
                 max_cells: int = 32):
        super().__init__(name)
        self.level = check.choice("level", level, ("image", "instance"))
        self.metric = check.choice("metric", metric, ("mean_entropy", "detection_loss", "random"))
        self.max_cells = check.integer("max_cells", max_cells, 1)
        if self.metric == "mean_entropy":
            self.needs = self.needs | {PREDICTION_SETS}
        elif self.metric == "random":
            self.needs = self.needs - {MODEL}

    def _instance_scores(self, model, device, rec, insts) -> list[float]:
        boxes = torch.tensor([(x, y, x + w, y + h) for x, y, w, h in (i.bbox for i in insts)], dtype=torch.float32)
        labels = torch.tensor([i.label for i in insts])
        image = to_tensor(read_image(rec)).to(device)
        if self.metric == "mean_entropy":
            out = []
            for box, (probs, pboxes) in zip(boxes.tolist(), model.prediction_sets(image, boxes, labels)):
                if len(probs) == 0:
                    out.append(math.log(2))
                    continue
                grid = (min(max(1, math.ceil(box[3] - box[1])), self.max_cells),
                        min(max(1, math.ceil(box[2] - box[0])), self.max_cells))
                maps = bring_many_to_box(probs.cpu().numpy(), pboxes.cpu().numpy(), box, grid)
                out.append(float(entropy_map(maps).mean()))
            return out
        det = model.predict_instances([image])[0]
        out = []
        for box, label in zip(boxes, labels):
            same = det["labels"].cpu() == label
            if not same.any():
                out.append(2.0)
                continue
            cand = det["boxes"].cpu()[same]
            best = cand[box_iou(box[None], cand)[0].argmax()]
            out.append(float(generalized_box_iou_loss(best[None], box[None], reduction="none")[0]))
        return out

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        if ctx.model is None and MODEL in self.needs:  # random needs none (__init__)
            raise ConfigError(f"strategy {self.name!r} needs the previous round's model; use afis_initial first")
        highest_first = self.metric == "mean_entropy"
        groups: list[tuple[float, list[Query]]] = []
        for image_id, view in sorted(ctx.ledger.training_views().items()):
            rec = ctx.data.by_id[image_id]
            insts = [i for i in rec.instances if i.ann_id in view.box_ann_ids and i.ann_id not in view.mask_ann_ids]
            if not insts:
                continue
            if self.metric == "random":  # the order comes from the tie-break draw below alone
                scores = [0.0] * len(insts)
            else:
                scores = self._instance_scores(ctx.model, ctx.device, rec, insts)
            if self.level == "image":
                mean = float(np.mean(scores))
                groups.append((mean, [instance_query(image_id, i.ann_id, mean) for i in insts]))
            else:
                groups += [(s, [instance_query(image_id, i.ann_id, s)]) for i, s in zip(insts, scores)]
        tiebreak = rng.random(len(groups))
        order = sorted(range(len(groups)), key=lambda k: (-groups[k][0] if highest_first else groups[k][0], tiebreak[k]))
        return [q for k in order for q in groups[k][1]]
