"""Mask-guided selection (mask-guided-iou-selection.txt Sec. 5-6): an image's score is the mean
predicted IoU of its instances (Eq. 2); the B images whose score is closest to a target beta are
labeled. With ``oracle: true`` the true IoU of each prediction against its ground truth replaces the
predicted one (the paper's Table 3).

The paper finds the best beta between 0.3 and 0.6 (Tables 3-4; lower for small labeled sets);
the default 0.4 sits in that range. Images with no detection above ``score_threshold`` have no
score and come last, in random order.
"""

from __future__ import annotations

import numpy as np

from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, image_query
from alseg import config_check as check
from alseg.errors import ConfigError
from alseg.models.mask_iou_head import true_image_scores
from alseg.strategies.base import MASK_IOU_HEAD, MODEL, POOL_PREDICTIONS, SelectionContext, Strategy


def closest_to_target(scores: dict[int, float], candidates: list[int], beta: float,
                      rng: np.random.Generator) -> list[int]:
    """Candidates ordered by |score - beta| (ties at random), then those without a score."""
    tiebreak = dict(zip(candidates, rng.random(len(candidates))))
    scored = sorted((i for i in candidates if i in scores), key=lambda i: (abs(scores[i] - beta), tiebreak[i]))
    rest = sorted((i for i in candidates if i not in scores), key=lambda i: tiebreak[i])
    return scored + rest


class IoUGuidedImages(Strategy):
    name = "iou_guided"

    def __init__(self, name: str | None = None, beta: float = 0.4, oracle: bool = False, score_threshold: float = 0.5):
        super().__init__(name)
        self.beta = check.number("beta", beta, 0, 1)
        self.oracle = check.boolean("oracle", oracle)
        self.score_threshold = check.number("score_threshold", score_threshold, 0, 1)
        self.needs = frozenset({MODEL} if oracle else {POOL_PREDICTIONS, MASK_IOU_HEAD})

    def image_scores(self, ctx: SelectionContext) -> dict[int, float]:
        if self.oracle:
            if ctx.model is None:
                raise ConfigError(f"strategy {self.name!r} needs a trained model; it cannot be the initial strategy")
            return true_image_scores(ctx.model, ctx.data, ctx.unlabeled, ctx.device, self.score_threshold)
        pp = ctx.get("pool_predictions")
        if pp.pred_iou is None:
            raise ConfigError(f"strategy {self.name!r} needs a model with a mask-IoU head (model.mask_iou=...)")
        keep = pp.scores >= self.score_threshold
        sums = np.bincount(pp.image_index[keep], weights=pp.pred_iou[keep], minlength=len(pp.image_ids))
        counts = np.bincount(pp.image_index[keep], minlength=len(pp.image_ids))
        return {pp.image_ids[i]: float(sums[i] / counts[i]) for i in np.nonzero(counts)[0]}

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        scores = self.image_scores(ctx)
        return [image_query(i, scores.get(i)) for i in closest_to_target(scores, ctx.unlabeled, self.beta, rng)]
