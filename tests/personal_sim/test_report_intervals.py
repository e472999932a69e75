"""The simulation report's summary numbers carry bootstrap intervals over users (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest

from personal_sim.summary import bootstrap_interval


def test_the_interval_brackets_the_mean_and_narrows_with_more_users():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.02, 0.01, 5).tolist(), rng.normal(0.02, 0.01, 200).tolist()
    lo, hi = bootstrap_interval(few)
    assert lo < float(np.mean(few)) < hi
    lo2, hi2 = bootstrap_interval(many)
    assert lo2 < float(np.mean(many)) < hi2 and hi2 - lo2 < hi - lo
    assert bootstrap_interval(few) == [lo, hi]  # reproducible


@pytest.mark.parametrize("values", [[], [0.1], [None, 0.2]])
def test_no_interval_from_fewer_than_two_users(values):
    assert bootstrap_interval(values) is None
