"""Random selection of whole images (the baseline of every paper)."""

from __future__ import annotations

import numpy as np

from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, image_query
from alseg.strategies.base import SelectionContext, Strategy


class RandomImages(Strategy):
    name = "random"

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        order = rng.permutation(len(ctx.unlabeled))
        return [image_query(ctx.unlabeled[i]) for i in order]
