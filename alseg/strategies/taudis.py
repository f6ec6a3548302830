"""TAUDIS (taudis-two-step-active-learning.txt, Algorithm 1) and its baselines (Appendix A, D), as
image-level strategies over the pool predictions of the previous round's model.

The algorithms live in ``taudis_core`` (pure numpy / scipy); this file turns pool predictions into
their inputs and their outputs into ranked image queries.

Images with no detection: every strategy here ranks them after all images it can score, in the
round's random order, so they can still be chosen when the budget reaches them (a model that
detects nothing in an image says nothing about its uncertainty, but such images exist).
"""

from __future__ import annotations

import numpy as np

from alseg import config_check as check
from alseg.annotation.budget import Budget
from alseg.annotation.queries import Query, image_query
from alseg.predictions import PoolPredictions
from alseg.errors import ConfigError
from alseg.strategies import taudis_core as core
from alseg.strategies.base import SelectionContext, Strategy

METRICS = ("cm", "ce", "se")
AGGREGATIONS = ("mean", "weighted_sum")


def instance_uncertainty(pp: PoolPredictions, metric: str) -> np.ndarray:
    """Higher = more uncertain, for every detected instance (Sec. 3.2, App. A)."""
    if metric == "cm":  # a low margin is uncertain (App. D, "Average CM": lowest first)
        return -core.classification_margin(pp.class_distribution())
    if metric == "ce":
        return core.classification_entropy(pp.class_distribution())
    if metric == "se":  # Eq. 3
        return core.segmentation_entropy(pp.mask_probs.astype(np.float32))
    raise ConfigError(f"strategy.metric must be one of {METRICS}, got {metric!r}")


def image_sizes(ctx: SelectionContext, pp: PoolPredictions) -> np.ndarray:
    return np.array([ctx.data.by_id[i].width * ctx.data.by_id[i].height for i in pp.image_ids], np.float64)


def image_uncertainty(ctx: SelectionContext, pp: PoolPredictions, metric: str, aggregation: str) -> np.ndarray:
    """(len(pp.image_ids),) image scores, NaN for images without detections."""
    u = instance_uncertainty(pp, metric)
    n = len(pp.image_ids)
    if aggregation == "mean":
        return core.average_per_image(u, pp.image_index, n)
    if aggregation == "weighted_sum":  # Eq. 4-5: instance size / image size weights
        return core.weighted_sum_per_image(u, pp.areas, pp.image_index, n, image_sizes(ctx, pp))
    raise ConfigError(f"strategy.aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def ranked_queries(ctx: SelectionContext, pp: PoolPredictions, first: np.ndarray, fallback: np.ndarray,
                   rng: np.random.Generator) -> list[Query]:
    """Images at rows ``first`` (in order), then the other scored rows by ``fallback`` (highest
    first, NaN excluded), then every remaining unlabeled image at random."""
    order = list(dict.fromkeys(int(r) for r in first))
    seen = set(order)
    order += [int(r) for r in core.rank_by_score(fallback) if not np.isnan(fallback[r]) and int(r) not in seen]
    ids = [pp.image_ids[r] for r in order]
    scores = {pp.image_ids[r]: (None if np.isnan(fallback[r]) else float(fallback[r])) for r in order}
    chosen = set(ids)
    rest = [i for i in ctx.unlabeled if i not in chosen]
    ids += [rest[k] for k in rng.permutation(len(rest))]
    return [image_query(i, scores.get(i)) for i in ids]


class UncertaintyImages(Strategy):
    """Baselines of App. D: average CM (lowest margin first), weighted CE / SE (Eq. 4-5) and
    mean-aggregated SE; highest image uncertainty first."""

    name = "uncertainty"
    needs = frozenset({"pool_predictions"})

    def __init__(self, name: str | None = None, metric: str = "se", aggregation: str = "weighted_sum"):
        super().__init__(name)
        self.metric = check.choice("metric", metric, METRICS)
        self.aggregation = check.choice("aggregation", aggregation, AGGREGATIONS)

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        pp = ctx.get("pool_predictions")
        scores = image_uncertainty(ctx, pp, self.metric, self.aggregation)
        return ranked_queries(ctx, pp, np.zeros(0, np.int64), scores, rng)


def _budget_images(budget: Budget, ctx: SelectionContext) -> int:
    """B of Algorithm 1 (an image count). A budget in seconds or instances is converted with the
    pool's mean cost or instance count per image, so the two steps are sized as the paper sizes them."""
    if budget.unit == "images":
        return int(budget.amount)
    n = len(ctx.unlabeled)
    if budget.unit == "seconds":
        mean_cost = np.mean([ctx.oracle.cost(image_query(i)) for i in ctx.unlabeled]) if n else 1.0
        return max(1, int(budget.amount / max(mean_cost, 1e-9)))
    per_image = np.mean([len(ctx.data.by_id[i].instances) for i in ctx.unlabeled]) if n else 1.0
    return max(1, int(budget.amount / max(per_image, 1e-9)))


class Taudis(Strategy):
    """Algorithm 1: the alpha*B most uncertain instances (T_C), a cosine-similarity graph to all
    detected instances (edges >= sigma), beta*B of them chosen by greedy maximum set cover, images
    ranked by how many chosen instances they hold (majority vote). Images not reached by the vote
    follow by weighted segmentation entropy (WSE)."""

    name = "taudis"
    needs = frozenset({"pool_predictions"})

    def __init__(self, name: str | None = None, metric: str = "se", alpha: float = core.DEFAULT_ALPHA,
                 beta: float = core.DEFAULT_BETA, sigma: float = core.DEFAULT_SIGMA):
        super().__init__(name)
        self.metric = check.choice("metric", metric, METRICS)
        self.alpha = check.number("alpha", alpha, 0, low_open=True)
        # Step 2 picks beta*B of step 1's alpha*B instances.
        self.beta = check.number("beta", beta, 0, self.alpha, low_open=True)
        self.sigma = check.number("sigma", sigma, -1, 1)  # a cosine similarity

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        pp = ctx.get("pool_predictions")
        u = instance_uncertainty(pp, self.metric)
        voted = core.taudis_select(u, pp.image_index, pp.embeddings, _budget_images(budget, ctx),
                                   self.alpha, self.beta, self.sigma) if len(pp) else np.zeros(0, np.int64)
        fallback = image_uncertainty(ctx, pp, "se", "weighted_sum")
        return ranked_queries(ctx, pp, voted, fallback, rng)


class TaudisImg(Strategy):
    """TAUDIS-IMG (Algorithm 2, App. D): the same two steps on image-level WSE and image embeddings."""

    name = "taudis_img"
    needs = frozenset({"pool_predictions"})

    def __init__(self, name: str | None = None, alpha: float = core.DEFAULT_IMG_ALPHA, sigma: float = core.DEFAULT_SIGMA):
        super().__init__(name)
        # D_C holds ceil(alpha * B) images and D_A takes B of them: alpha >= 1.
        self.alpha = check.number("alpha", alpha, 1)
        self.sigma = check.number("sigma", sigma, -1, 1)

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        pp = ctx.get("pool_predictions")
        wse = image_uncertainty(ctx, pp, "se", "weighted_sum")
        scored = np.flatnonzero(~np.isnan(wse))
        picked = core.taudis_img_select(wse[scored], pp.image_embeddings[scored], _budget_images(budget, ctx),
                                        self.alpha, self.sigma) if scored.size else np.zeros(0, np.int64)
        return ranked_queries(ctx, pp, scored[picked], wse, rng)


class CoreSetImages(Strategy):
    """Core-set (App. D): greedy k-center over image embeddings (finest FPN level, average-pooled),
    Euclidean, the labeled images being the initial centres."""

    name = "coreset"
    needs = frozenset({"pool_predictions", "labeled_predictions"})

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        pool = ctx.get("pool_predictions")
        labeled = ctx.get("labeled_predictions")
        emb = np.concatenate([labeled.image_embeddings, pool.image_embeddings]).astype(np.float32)
        is_labeled = np.zeros(len(emb), bool)
        is_labeled[: len(labeled.image_ids)] = True
        k = min(len(pool.image_ids), max(_budget_images(budget, ctx), 1) * 2)  # extra so budget.take can skip
        picked = core.kcenter_greedy(emb, is_labeled, k) - len(labeled.image_ids)
        return ranked_queries(ctx, pool, picked, np.full(len(pool.image_ids), np.nan), rng)


class RoundRobinImages(Strategy):
    """Round robin over classes (App. D): each class in turn takes the image with its highest
    class-specific WSE."""

    name = "round_robin"
    needs = frozenset({"pool_predictions"})

    def rank(self, ctx: SelectionContext, budget: Budget, rng: np.random.Generator) -> list[Query]:
        pp = ctx.get("pool_predictions")
        se = instance_uncertainty(pp, "se")
        per_class = core.weighted_sum_per_image_class(se, pp.areas, pp.labels, pp.image_index, len(pp.image_ids),
                                                      pp.class_distribution().shape[1], image_sizes(ctx, pp))
        picked = core.round_robin_by_class(per_class, len(pp.image_ids))
        return ranked_queries(ctx, pp, picked, image_uncertainty(ctx, pp, "se", "weighted_sum"), rng)
