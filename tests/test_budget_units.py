import pytest

from alseg.annotation.budget import Budget
from alseg.annotation.queries import image_query, point_query


def test_seconds_per_instance_resolves_against_the_pool_and_all_takes_everything():
    b = Budget(0.9, "seconds_per_instance").resolve(100)
    assert (b.unit, b.amount) == ("seconds", pytest.approx(90.0))
    with pytest.raises(ValueError, match="resolve"):
        Budget(0.9, "seconds_per_instance").take([image_query(1)], lambda q: 1.0, lambda q: 1)
    qs = [point_query(1, 2, 0.5, 0.5)] * 5
    assert Budget(1, "all").take(qs, lambda q: 1.0, lambda q: 1) == qs
    assert Budget(3, "images").resolve(100) == Budget(3, "images")
