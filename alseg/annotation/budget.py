"""Budgets counted in images, instances, points or annotation seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from alseg.annotation.queries import Query
from alseg.errors import ConfigError

# "all": no limit, the strategy's whole list is labeled (APIS: a box and a point for every
# instance before round 1, one point per instance at every step).
# "seconds_per_instance": seconds times the pool's instance count (an APIS step is 0.9 s per
# instance; AFIS spends the same seconds on masks, APIS Sec. 3.3 and Fig. 7).
UNITS = ("images", "instances", "points", "seconds", "all", "seconds_per_instance")


@dataclass(frozen=True)
class Budget:
    amount: float
    unit: str = "images"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ConfigError(f"budget unit must be one of {UNITS}, got {self.unit!r}")
        if not isinstance(self.amount, (int, float)) or self.amount <= 0:
            raise ConfigError(f"budget amount must be > 0, got {self.amount!r}")

    def resolve(self, num_instances: int) -> "Budget":
        """The same budget in a unit ``take`` counts directly."""
        if self.unit == "seconds_per_instance":
            return Budget(self.amount * max(num_instances, 1), "seconds")
        return self

    def take(self, ranked: Iterable[Query], cost_of: Callable[[Query], float],
             instances_of: Callable[[Query], int]) -> list[Query]:
        """The longest prefix of a ranked query list that fits the budget.

        In seconds, a query that would overrun the budget is skipped and cheaper ones further down
        the ranking may still fit (the annotator's time is the budget, not the rank order).
        """
        if self.unit == "all":
            return list(ranked)
        if self.unit == "seconds_per_instance":
            raise ValueError("resolve() a seconds_per_instance budget against the pool first")
        taken, spent, images = [], 0.0, set()
        for q in ranked:
            if self.unit == "images":
                new_images = images | {q.image_id}
                if len(new_images) > self.amount:
                    continue
                images = new_images
            elif self.unit == "instances":
                use = instances_of(q)
                if spent + use > self.amount:
                    continue
                spent += use
            elif self.unit == "points":
                if q.kind != "point":
                    raise ConfigError(f"a budget in points needs point queries, got a {q.kind} query")
                if spent + 1 > self.amount:
                    break
                spent += 1
            else:
                c = cost_of(q)
                if spent + c > self.amount:
                    continue
                spent += c
            taken.append(q)
        return taken
