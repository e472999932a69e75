"""Filter rules: the Gaussian-DP filter never admits a unit past its budget, however the rounds
are chosen, and is never looser than the Rényi filter on full-batch schedules.

The guarantee under test (docs/privacy-accounting.md, section 4, "The Gaussian filter"): a unit
is admitted to a round only if ``gaussian_epsilon(sqrt(Σ steps/σ²), δ) <= ε`` after the round,
the sum over every round it was eligible for (Smith & Thakurta 2022).
"""

from __future__ import annotations

import json
import math

from personal.errors import PrivacyParameterError, PrivacyStateError, UnitOverBudget
from personal.privacy.filter import PURPOSES, Charge, RenyiFilter, eligible_mask
from personal.privacy.gdp import charge_mu_squared, gaussian_epsilon, mu_budget
from personal.privacy.rdp import ORDERS, filter_epsilon, sgm_rdp
from personal.privacy.rules import FILTERS, GAUSSIAN, RENYI, rule_of

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_SIGMAS = (0.6, 0.8, 1.0, 1.3, 1.6, 2.0, 4.0, 30.0)
_QS = (0.0, 1e-3, 0.05, 0.5, 1.0)


def _charge(q: float = 1.0, sigma: float = 1.6, steps: int = 4, purpose="training") -> Charge:
    return Charge(purpose=purpose, sample_rate=q, noise_multiplier=sigma, steps=steps)


def _mu(history: list[Charge]) -> float:
    """A unit's μ from its charges, independently of the rule: sampling ignored, q = 0 free."""
    return math.sqrt(
        sum(charge_mu_squared(c.steps, c.noise_multiplier) for c in history if c.sample_rate > 0)
    )


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    epsilon=st.floats(0.3, 10.0),
    delta=st.sampled_from([1e-9, 1e-6, 1e-4]),
    rounds=st.integers(1, 20),
)
def test_gaussian_rule_never_admits_a_unit_past_its_budget(data, epsilon, delta, rounds):
    """Random adaptive schedules, q mixed: every round's parameters, candidates and the subset
    charged are drawn after seeing the filter's state; excluded units are tried too."""
    rf = RenyiFilter(epsilon=epsilon, delta=delta, rule="gaussian")
    units: list[str] = []
    charged: dict[str, list[Charge]] = {}
    for _ in range(rounds):
        units += [f"u{len(units) + i}" for i in range(data.draw(st.integers(0, 4)))]
        charge = Charge(
            purpose=data.draw(st.sampled_from(PURPOSES)),
            sample_rate=data.draw(st.sampled_from(_QS)),
            noise_multiplier=data.draw(st.sampled_from(_SIGMAS)),
            steps=data.draw(st.integers(0, 12)),
        )
        candidates = data.draw(st.lists(st.sampled_from(units), unique=True)) if units else []
        selection = rf.select(charge, candidates)
        for u in selection.eligible:  # the rule, recomputed independently of the filter
            after = _mu([*charged.get(u, []), charge])
            assert gaussian_epsilon(after, delta) <= epsilon
        for u in selection.excluded:
            assert gaussian_epsilon(_mu([*charged.get(u, []), charge]), delta) > epsilon
        if selection.excluded:
            with pytest.raises(UnitOverBudget):
                rf.charge(charge, [selection.excluded[0]])
        used = (
            data.draw(st.lists(st.sampled_from(selection.eligible), unique=True))
            if selection.eligible
            else []
        )
        rf.charge(charge, used)
        for u in used:
            charged.setdefault(u, []).append(charge)
        assert all(e <= epsilon for e in rf.epsilons().values())
    for u in units:
        mu = _mu(charged.get(u, []))
        assert rf.epsilon_of(u) == pytest.approx(gaussian_epsilon(mu, delta), rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(rf.rdp_of(u), np.asarray(ORDERS) * mu**2 / 2, rtol=1e-12)
    restored = RenyiFilter.from_state_dict(json.loads(json.dumps(rf.state_dict())))
    assert restored.rule is GAUSSIAN and restored.epsilons() == rf.epsilons()


@settings(max_examples=100, deadline=None)
@given(
    schedule=st.lists(st.tuples(st.floats(0.5, 50.0), st.integers(1, 50)), min_size=1, max_size=6),
    delta=st.sampled_from([1e-10, 1e-8, 1e-6, 1e-5, 1e-3]),
)
def test_gaussian_is_never_looser_than_renyi_at_full_batch(schedule, delta) -> None:
    charges = [_charge(1.0, sigma, steps) for sigma, steps in schedule]
    renyi = sum((RENYI.charge_curve(c) for c in charges), np.zeros(len(ORDERS)))
    gaussian = sum((GAUSSIAN.charge_curve(c) for c in charges), np.zeros(len(ORDERS)))
    np.testing.assert_allclose(renyi, gaussian, rtol=1e-12)  # q = 1: the same curve
    assert GAUSSIAN.epsilon(gaussian, delta=delta) <= RENYI.epsilon(renyi, delta=delta) + 1e-12


def test_the_default_recipe() -> None:
    """4 full-batch steps at σ = 1.6, δ = 1e-6: ε 7.60 under the Rényi filter, 6.31 Gaussian;
    the Gaussian filter fits lifetime ε = 8 with σ = 1.306 instead of about 1.54."""
    charge = _charge(1.0, 1.6, 4)
    assert RENYI.epsilon(RENYI.charge_curve(charge), delta=1e-6) == pytest.approx(7.60, abs=0.01)
    assert GAUSSIAN.epsilon(GAUSSIAN.charge_curve(charge), delta=1e-6) == pytest.approx(
        6.312, abs=1e-3
    )
    sigma = GAUSSIAN.calibrate(target_epsilon=8.0, delta=1e-6, sample_rate=1.0, steps=4)
    assert sigma == pytest.approx(1.3059, abs=1e-4)
    spent = GAUSSIAN.epsilon(
        GAUSSIAN.curve(sample_rate=1.0, noise_multiplier=sigma, steps=4), delta=1e-6
    )
    assert 8.0 - 1e-6 <= spent <= 8.0
    rf = RenyiFilter(epsilon=8.0, delta=1e-6, rule="gaussian")
    rf.charge(_charge(1.0, sigma, 4), ["a"])  # a fresh unit takes the calibrated round exactly
    assert rf.select(_charge(1.0, 1000.0, 1), ["a"]).excluded == ("a",)  # and nothing more


@settings(max_examples=40, deadline=None)
@given(
    epsilon=st.floats(0.1, 20.0),
    delta=st.sampled_from([1e-9, 1e-6, 1e-4]),
    q=st.sampled_from([1e-3, 0.1, 1.0]),
    steps=st.integers(1, 100),
)
def test_gaussian_calibration_never_overshoots(epsilon, delta, q, steps) -> None:
    sigma = GAUSSIAN.calibrate(target_epsilon=epsilon, delta=delta, sample_rate=q, steps=steps)
    spent = GAUSSIAN.epsilon(
        GAUSSIAN.curve(sample_rate=q, noise_multiplier=sigma, steps=steps), delta=delta
    )
    assert epsilon - 1e-6 <= spent <= epsilon
    assert sigma == pytest.approx(math.sqrt(steps) / mu_budget(epsilon, delta), rel=1e-9)


def test_sampling_is_ignored_and_q_zero_is_free() -> None:
    full = GAUSSIAN.charge_curve(_charge(1.0, 2.0, 3))
    np.testing.assert_array_equal(GAUSSIAN.charge_curve(_charge(1e-3, 2.0, 3)), full)
    np.testing.assert_allclose(full, np.asarray(ORDERS) * 3 / (2 * 2.0**2))
    assert not GAUSSIAN.charge_curve(_charge(0.0, 2.0, 3)).any()
    # Small q: the Rényi filter's amplification by sampling wins (keep "renyi" there).
    small = _charge(0.01, 1.0, 100)
    assert RENYI.epsilon(RENYI.charge_curve(small), delta=1e-6) < GAUSSIAN.epsilon(
        GAUSSIAN.charge_curve(small), delta=1e-6
    )


def test_rules_by_name_and_their_masks() -> None:
    assert FILTERS == ("renyi", "gaussian")
    assert rule_of("renyi") is RENYI and rule_of("gaussian") is GAUSSIAN
    assert rule_of(GAUSSIAN) is GAUSSIAN
    for bad in ("Gaussian", "rdp", None, 3):
        with pytest.raises(PrivacyParameterError):
            rule_of(bad)  # type: ignore[arg-type]
    current = np.stack([np.zeros(len(ORDERS)), GAUSSIAN.charge_curve(_charge(1.0, 1.0, 8))])
    step = GAUSSIAN.charge_curve(_charge(1.0, 1.6, 4))
    mask = eligible_mask(current, step, epsilon=8.0, delta=1e-6, rule="gaussian")
    assert mask.tolist() == [True, False]
    # The Rényi mask is the filter_epsilon rule of rdp.py, as before.
    renyi_step = sgm_rdp(sample_rate=0.5, noise_multiplier=2.0, steps=10)
    assert eligible_mask(current, renyi_step, epsilon=8.0, delta=1e-6).tolist() == [
        bool(filter_epsilon(row + renyi_step, delta=1e-6) <= 8.0) for row in current
    ]
    # max_share caps the spend of the remaining budget under either rule.
    half = GAUSSIAN.fits(np.zeros((1, len(ORDERS))), step, epsilon=8.0, delta=1e-6, max_share=0.5)
    assert half.tolist() == [False]  # the round costs 6.31 > half of 8
    with pytest.raises(PrivacyParameterError):
        GAUSSIAN.fits(current, step, epsilon=8.0, delta=1e-6, max_share=1.5)


def test_state_keeps_its_rule() -> None:
    rf = RenyiFilter(epsilon=8.0, delta=1e-6, rule="gaussian")
    rf.charge(_charge(0.5, 2.0, 3), ["a"])
    state = rf.state_dict()
    assert state["filter"] == "gaussian"
    with pytest.raises(PrivacyStateError, match="gaussian"):
        RenyiFilter(epsilon=8.0, delta=1e-6).load_state_dict(state)
    renyi = RenyiFilter(epsilon=8.0, delta=1e-6)
    renyi.charge(_charge(0.5, 2.0, 3), ["a"])
    old = {k: v for k, v in renyi.state_dict().items() if k != "filter"}  # written before
    assert RenyiFilter.from_state_dict(old).rule is RENYI
    assert RenyiFilter.from_state_dict(state).epsilon_of("a") == rf.epsilon_of("a")
