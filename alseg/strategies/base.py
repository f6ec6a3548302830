"""The strategy interface. A strategy ranks queries; the loop takes what fits the budget.

A strategy declares in ``needs`` what it reads from the context, so the loop computes nothing
more (random needs nothing; an uncertainty strategy needs "pool_predictions"), and what the model
must be able to do. The names come from one vocabulary, ``NEEDS``; the loop checks every
strategy's needs against what it can provide before round 0 (an unknown name is an error, as is
a strategy needing a trained model as ``al.initial_strategy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.annotation.budget import Budget
from alseg.annotation.ledger import Ledger
from alseg.annotation.oracle import Oracle
from alseg.annotation.queries import Query
from alseg import config_check as check
from alseg.data.coco import CocoDataset
from alseg.models.base import MASK_IOU_HEAD, POINT_SUPERVISION, PREDICTION_SETS

# What the loop provides to a strategy (ctx.model, or ctx.get(name)) ...
MODEL = "model"  # ctx.model: the previous round's model (None at round 0)
REFERENCE_MODEL = "reference_model"  # a model trained on the whole pool with full masks, once per run
ENSEMBLE = "ensemble"  # the previous round's model and ensemble_size - 1 more trained on its labels
POOL_PREDICTIONS = "pool_predictions"  # alseg.predictions.PoolPredictions of the previous round's model
LABELED_PREDICTIONS = "labeled_predictions"  # the same on the labeled images
# ... and what the model must have: capabilities of alseg.models.base (model.capabilities), e.g.
# MASK_IOU_HEAD: predicted mask IoUs (model.mask_iou=..., pool_predictions.pred_iou);
# POINT_SUPERVISION: trains on box / point labels (model.point_supervision=true);
# PREDICTION_SETS: APIS's per-instance prediction sets (model.prediction_sets).

NEEDS: dict[str, str] = {
    MODEL: "the previous round's model",
    REFERENCE_MODEL: "a reference model trained on the whole pool",
    ENSEMBLE: "several models trained on the previous round's labels",
    POOL_PREDICTIONS: "the previous round's model's predictions on the unlabeled pool",
    LABELED_PREDICTIONS: "the previous round's model's predictions on the labeled images",
    MASK_IOU_HEAD: "a model with a mask-IoU head",
    POINT_SUPERVISION: "a model trained with point supervision",
    PREDICTION_SETS: "a model that gives per-instance prediction sets",
}
# Needs that only a trained model (round >= 1, or al.initial_run) can meet.
NEEDS_A_TRAINED_MODEL = frozenset({MODEL, ENSEMBLE, POOL_PREDICTIONS, LABELED_PREDICTIONS})


@dataclass
class SelectionContext:
    round_index: int
    data: CocoDataset  # the training pool with its ground truth (only oracle strategies may read masks)
    ledger: Ledger
    unlabeled: list[int]  # image ids not yet fully annotated, sorted
    labeled: list[int]
    oracle: Oracle
    model: Any = None  # the model of the previous round (None at round 0)
    device: str = "cpu"
    progress: bool = False
    round_dir: Path | None = None  # where a strategy may leave pictures of its choices
    _providers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict)

    def get(self, need: str):
        """Something computed on demand by the loop (e.g. 'predictions'), once per round."""
        if need not in self._cache:
            if need not in self._providers:
                raise KeyError(f"the loop provides no {need!r}; available: {sorted(self._providers)}")
            self._cache[need] = self._providers[need]()
        return self._cache[need]


class Strategy:
    """Subclasses set ``name``, ``needs`` (names from ``NEEDS``) and implement ``rank``."""

    name: str = "base"
    needs: frozenset[str] = frozenset()

    def __init__(self, name: str | None = None):
        if name is not None:
            self.name = check.text("name", name)

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        """Queries in order of preference (at least enough to fill the budget when possible)."""
        raise NotImplementedError

    def analyze(self, ctx: SelectionContext, queries: list[Query]) -> dict:
        """Figures about what was selected (written to selection.json and the round's results)."""
        return {}

    def select(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        ranked = self.rank(ctx, budget, rng)
        return budget.take(ranked, ctx.oracle.cost, lambda q: self._instances_of(ctx, q))

    @staticmethod
    def _instances_of(ctx: SelectionContext, q: Query) -> int:
        return len(ctx.data.by_id[q.image_id].instances) if q.kind == "image" else 1
