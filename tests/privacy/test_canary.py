"""The one-run audit bound (Steinke, Nasr & Jagielski 2023) as pure maths."""

from __future__ import annotations

import math

from personal.errors import PrivacyParameterError
from personal.privacy.canary import audit_bound, epsilon_lower_bound, p_value

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def test_perfect_guesses_golden_number():
    # δ = 0: p^r <= α with p = e^ε / (1 + e^ε)  =>  ε = log(p / (1 - p)), p = α^(1/r).
    p = 0.05 ** (1 / 100)
    expected = math.log(p / (1 - p))
    assert epsilon_lower_bound(1000, 100, 100, delta=0.0, alpha=0.05) == pytest.approx(
        expected, abs=1e-3
    )


@settings(deadline=None)  # exact binomial tails: slow on a loaded CPU, never wrong
@given(
    r=st.integers(1, 60),
    frac=st.floats(0, 1),
    eps=st.floats(0, 5),
    bump=st.floats(0.01, 2),
    delta=st.sampled_from([0.0, 1e-6, 1e-3]),
)
def test_p_value_falls_as_epsilon_grows(r, frac, eps, bump, delta):
    v = round(frac * r)
    assert p_value(200, r, v, eps + bump, delta) >= p_value(200, r, v, eps, delta) - 1e-12


@settings(deadline=None)
@given(r=st.integers(1, 60), frac=st.floats(0, 1))
def test_more_correct_guesses_never_lower_the_bound(r, frac):
    v = round(frac * r)
    low = epsilon_lower_bound(200, r, v, delta=1e-5, alpha=0.05)
    high = epsilon_lower_bound(200, r, min(r, v + 1), delta=1e-5, alpha=0.05)
    assert high >= low


def test_chance_level_scores_give_no_bound():
    rng = np.random.default_rng(0)
    for seed in range(5):
        included = np.random.default_rng(seed).random(300) < 0.5
        assert audit_bound(rng.random(300), included, delta=1e-5).epsilon < 0.5


def test_constant_scores_give_no_bound():
    included = np.random.default_rng(1).random(100) < 0.5
    assert audit_bound(np.zeros(100), included, delta=1e-5).epsilon < 0.5


def test_perfect_scores_give_a_large_bound():
    included = np.random.default_rng(2).random(400) < 0.5
    bound = audit_bound(included.astype(float), included, delta=1e-5)
    assert bound.correct == bound.guesses > 0 and bound.epsilon > 3.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(scores=[1, 2, 3], included=[1, 0, 1]), dict(scores=[1, 2, 3, 4], included=[1, 0])],
)
def test_bad_input_is_refused(kwargs):
    with pytest.raises(PrivacyParameterError):
        audit_bound(kwargs["scores"], kwargs["included"], delta=1e-5)
