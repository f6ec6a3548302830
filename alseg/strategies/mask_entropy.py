"""Images ranked by the mean mask entropy of a model's predictions, highest first.

With ``model: previous`` it is uncertainty sampling in the loop (the model of the last round);
with ``model: reference`` it is the TFDP paper's adapted model-based pruning baseline: the scores
come from a reference model trained on the whole pool (the loop trains it once per run).

Score of a detection: mean binary entropy H(p) = -p log p - (1-p) log(1-p) (APIS Eq. 3) of its
mask probabilities inside its predicted box; image score: mean over its detections with score >=
``score_threshold``. An image with no such detection gets log 2, the largest entropy, because the
model knows nothing about it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, image_query
from alseg.predictions import predict
from alseg import config_check as check
from alseg.errors import ConfigError
from alseg.strategies.base import SelectionContext, Strategy


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def detection_mask_entropy(mask_prob: torch.Tensor, box: torch.Tensor) -> float:
    """Mean entropy of an (H, W) probability map inside an xyxy box (at least one pixel)."""
    h, w = mask_prob.shape
    x1, y1 = int(box[0].clamp(0, w - 1)), int(box[1].clamp(0, h - 1))
    x2, y2 = max(x1 + 1, int(math.ceil(float(box[2])))), max(y1 + 1, int(math.ceil(float(box[3]))))
    return float(binary_entropy(mask_prob[y1:y2, x1:x2]).mean())


class MaskEntropyImages(Strategy):
    name = "mask_entropy"

    def __init__(self, name: str | None = None, model: str = "previous", score_threshold: float = 0.3):
        super().__init__(name)
        self.model_source = check.choice("model", model, ("previous", "reference"))
        self.score_threshold = check.number("score_threshold", score_threshold, 0, 1)
        self.needs = frozenset({"reference_model"}) if model == "reference" else frozenset({"model"})

    def image_scores(self, ctx: SelectionContext, model) -> dict[int, float]:
        scores = {}
        for image_id, boxes, det_scores, _, probs in predict(model, ctx.data, ctx.unlabeled, device=ctx.device,
                                                             mask_threshold=None, desc="mask entropy",
                                                             progress=ctx.progress):
            keep = det_scores >= self.score_threshold
            ents = [detection_mask_entropy(torch.as_tensor(p), torch.as_tensor(b)) for p, b in zip(probs[keep], boxes[keep])]
            scores[image_id] = float(np.mean(ents)) if ents else math.log(2)
        return scores

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        model = ctx.get("reference_model") if self.model_source == "reference" else ctx.model
        if model is None:
            raise ConfigError(f"strategy {self.name!r} needs a trained model; use model=reference as an initial strategy")
        scores = self.image_scores(ctx, model)
        # Highest entropy first; ties broken at random by the round's seed.
        tiebreak = rng.random(len(ctx.unlabeled))
        order = sorted(range(len(ctx.unlabeled)), key=lambda k: (-scores[ctx.unlabeled[k]], tiebreak[k]))
        return [image_query(ctx.unlabeled[k], scores[ctx.unlabeled[k]]) for k in order]
