"""Budgets counted in images, instances, points or annotation seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from alseg.annotation.queries import Query
from alseg.config_check import choice, config_value, integer, number
from alseg.errors import ConfigError

# "all": no limit, the strategy's whole list is labeled (APIS: a box and a point for every
# instance before round 1, one point per instance at every step).
# "seconds_per_instance": seconds times the pool's instance count (an APIS step is 0.9 s per
# instance; AFIS spends the same seconds on masks, APIS Sec. 3.3 and Fig. 7).
UNITS = ("images", "instances", "points", "seconds", "all", "seconds_per_instance")
COUNTED = ("images", "instances", "points")  # whole numbers


def budget_of(key: str, amount, unit) -> "Budget":
    """The Budget that config ``key`` (``al.budget``) gives in unit ``<key>_unit``: an integer >= 1
    for a counted unit (images, instances, points), a finite number > 0 for seconds, anything for
    ``all``. ConfigError naming the key otherwise (before anything runs)."""
    unit = config_value(choice, f"{key}_unit", unit, UNITS)
    if unit == "all":
        return Budget(1, "all")
    if unit in COUNTED:
        return Budget(config_value(integer, key, amount, 1), unit)
    return Budget(config_value(number, key, amount, 0, low_open=True), unit)


def initial_amount(amount, unit) -> tuple[int | float, str]:
    """``al.initial`` and ``al.initial_unit`` checked: in images, an integer count >= 1 or a float
    fraction of the pool in (0, 1] (returned as a float, resolved once the pool is known); else as
    ``budget_of``. ConfigError naming the key otherwise."""
    unit = config_value(choice, "al.initial_unit", unit, UNITS)
    if unit == "images":
        fraction = isinstance(amount, float) and 0 < amount <= 1
        count = isinstance(amount, int) and not isinstance(amount, bool) and amount >= 1
        if not (fraction or count):
            raise ConfigError(f"al.initial: must be an image count >= 1 or a fraction of the pool in (0, 1], "
                              f"got {amount!r}")
        return amount, unit
    b = budget_of("al.initial", amount, unit)
    return b.amount, b.unit


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
