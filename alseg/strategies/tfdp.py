"""TFDP (training-free dataset pruning, tfdp-training-free-pruning.txt) as a selection strategy.

Images are ranked by the sum of their instances' shape-complexity scores (SCS, SI-SCS, CB-SCS,
SI-CB-SCS; see ``alseg.tfdp.scoring``), computed from the pool's ground-truth masks: no model is
needed. Used as the initial strategy with ``al.rounds=0`` and ``al.initial`` = kept ratio, it gives
the paper's setting: prune once, train on the kept subset, evaluate.
"""

from __future__ import annotations

import numpy as np

from alseg import config_check as check
from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, image_query
from alseg.strategies.base import SelectionContext, Strategy
from alseg.tfdp.scoring import CONTOURS, DEFAULT_VARIANT, VARIANTS, rank_images, score_dataset


class ShapeComplexityImages(Strategy):
    name = "tfdp"

    def __init__(self, name: str | None = None, variant: str = DEFAULT_VARIANT, contour: str = "largest",
                 workers: int | None = 1):
        super().__init__(name)
        self.variant = check.choice("variant", variant, VARIANTS)
        self.contour = check.choice("contour", contour, CONTOURS)
        self.workers = check.integer("workers", workers, 1, none=True)  # null: every CPU

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        # Class balance (CB) is taken over the whole pool, labeled or not, as the paper scores the dataset.
        result = score_dataset(ctx.data.to_coco_dict(), self.variant, self.contour, self.workers)
        scores = result.image_score_map()
        pool = set(ctx.unlabeled)
        return [image_query(i, scores[i]) for i in rank_images(result) if i in pool]
