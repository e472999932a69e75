"""Accountants: golden numbers, dp-accounting cross-checks, calibration, monotonicity, state.

Independent references used here:

* Google's ``dp-accounting`` (a test dependency, ``pip install personal[dev]``): its
  ``RdpAccountant`` for RDP and its ``PLDAccountant`` (privacy loss distributions, both
  add and remove directions) for PRV;
* the exact (ε, δ) curve of the plain Gaussian mechanism (Balle & Wang 2018, Thm. 8) and the
  closed-form RDP of the Gaussian, α/(2σ²) (Mironov 2017), for q = 1.

Tolerances (docs/privacy-accounting.md, "Accountants"): RDP agrees with dp-accounting within
1% (and is never larger: dp-accounting bounds fractional orders more loosely). PRV reports the
upper end of its bracket, estimate + PRV_EPS_ERROR, so it is compared to the PLD within 1% *plus*
that declared additive error, and must never fall below the PLD's certified lower bound.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

from personal.errors import (
    AccountantNotApplicable,
    PrivacyError,
    PrivacyParameterError,
    PrivacyStateError,
    UnreachablePrivacyTarget,
)
from personal.privacy.accountant import (
    MECHANISMS,
    PRV_EPS_ERROR,
    Accountant,
    calibrate_noise,
    epsilon_floor,
)
from personal.privacy.rdp import ORDERS, compose, epsilon_from_rdp, filter_epsilon, sgm_rdp

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld.privacy_loss_distribution import from_gaussian_mechanism
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import norm

# --- helpers -----------------------------------------------------------------------------------


def _eps(mechanism: str, history: list[tuple[float, float, int]], delta: float) -> float:
    acc = Accountant(mechanism)
    for sigma, q, steps in history:
        acc.step(noise_multiplier=sigma, sample_rate=q, steps=steps)
    return acc.get_epsilon(delta=delta)


def _event(history: list[tuple[float, float, int]]) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n
            )
            for sigma, q, n in history
        ]
    )


def _dpa_rdp(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = RdpAccountant(orders=list(ORDERS))
    acc.compose(_event(history))
    return acc.get_epsilon(delta)


def _dpa_pld(
    history: list[tuple[float, float, int]], delta: float, interval: float
) -> tuple[float, float]:
    """(lower bound, upper bound) on ε from dp-accounting's privacy loss distributions.

    The optimistic (privacy buckets) and pessimistic (connect-the-dots) discretisations of the
    add-or-remove PLD bracket the true ε of the schedule (Meiser & Mohammadi 2018; Doroshenko
    et al. 2022).
    """
    out = []
    for pessimistic in (False, True):
        total = None
        for sigma, q, n in history:
            pld = from_gaussian_mechanism(
                sigma, sampling_prob=q, pessimistic_estimate=pessimistic,
                use_connect_dots=pessimistic, value_discretization_interval=interval,
            ).self_compose(n)  # fmt: skip
            total = pld if total is None else total.compose(pld)
        out.append(total.get_epsilon_for_delta(delta))
    return out[0], out[1]


def _gaussian_epsilon(sigma: float, delta: float, steps: int = 1) -> float:
    """Exact ε of ``steps`` compositions of the Gaussian mechanism (Balle & Wang 2018)."""
    mu = math.sqrt(steps) / sigma

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 200.0, xtol=1e-13)


def _rdp_gaussian_epsilon(sigma: float, delta: float, steps: int = 1) -> float:
    """Closed form: RDP α·steps/(2σ²) converted with Balle et al. 2020 Thm. 21 over ORDERS."""
    return min(
        a * steps / (2 * sigma**2) + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a in ORDERS
    )


# --- golden numbers ---------------------------------------------------------------------------

# (σ, q, steps, δ, ε). RDP: opacus 1.6.0 RDPAccountant with alphas=ORDERS, equal to
# dp-accounting 0.6.0 RdpAccountant(orders=ORDERS) (best order 8 resp. 32: integer orders, where
# both compute the exact RDP). The second is Abadi et al. 2016 §3.1's setting (their moments
# accountant: ε ≈ 1.26). PRV: opacus 1.6.0 PRVAccountant, eps_error=0.01 (upper bound).
RDP_GOLDEN = [
    (1.0, 0.01, 1000, 1e-5, 2.107753075451561),
    (4.0, 0.01, 10_000, 1e-5, 1.038871565102387),
]
PRV_GOLDEN = [
    (1.0, 0.01, 1000, 1e-5, 1.838371637017295),
    (4.0, 0.01, 10_000, 1e-5, 0.9569361942671307),
]


@pytest.mark.parametrize(("sigma", "q", "steps", "delta", "expected"), RDP_GOLDEN)
def test_rdp_golden_numbers(sigma: float, q: float, steps: int, delta: float, expected: float):
    assert _eps("rdp", [(sigma, q, steps)], delta) == pytest.approx(expected, rel=1e-9)
    assert _dpa_rdp([(sigma, q, steps)], delta) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta", "expected"), PRV_GOLDEN)
def test_prv_golden_numbers(sigma: float, q: float, steps: int, delta: float, expected: float):
    # PRV integrates numerically (scipy quad): pinned to 1e-4, not to the last digit.
    assert _eps("prv", [(sigma, q, steps)], delta) == pytest.approx(expected, rel=1e-4)
    assert _eps("prv", [(sigma, q, steps)], delta) < _eps("rdp", [(sigma, q, steps)], delta)


@pytest.mark.parametrize(
    ("sigma", "steps", "delta"), [(1.0, 1, 1e-5), (2.0, 1, 1e-5), (2.0, 10, 1e-6)]
)
def test_plain_gaussian_mechanism_against_closed_forms(sigma: float, steps: int, delta: float):
    exact = _gaussian_epsilon(sigma, delta, steps)  # the tight ε: no accountant may go below
    rdp = _eps("rdp", [(sigma, 1.0, steps)], delta)
    prv = _eps("prv", [(sigma, 1.0, steps)], delta)
    assert rdp == pytest.approx(_rdp_gaussian_epsilon(sigma, delta, steps), rel=1e-12)
    assert exact <= prv <= exact + PRV_EPS_ERROR + 1e-3
    assert prv < rdp


# --- cross-check against dp-accounting ----------------------------------------------------------

_SIGMAS, _QS, _STEPS, _DELTAS = (
    (0.8, 1.0, 2.0, 5.0),
    (1e-3, 1e-2, 0.1, 1.0),
    (1, 100, 10_000),
    (1e-7, 1e-5),
)


@pytest.mark.parametrize(("sigma", "q"), list(itertools.product(_SIGMAS, _QS)))
def test_rdp_within_one_percent_of_dp_accounting(sigma: float, q: float) -> None:
    for steps, delta in itertools.product(_STEPS, _DELTAS):
        ours = _eps("rdp", [(sigma, q, steps)], delta)
        theirs = _dpa_rdp([(sigma, q, steps)], delta)
        assert ours <= theirs * (1 + 1e-9) + 1e-12, (steps, delta)
        if theirs > 100:
            # ε > 100 (no privacy at all): dp-accounting's fractional-order series stops after
            # 1000 terms and drops those orders, so only the direction of the gap is checked.
            continue
        assert ours == pytest.approx(theirs, rel=0.01), (steps, delta)


def test_rdp_heterogeneous_history_matches_dp_accounting() -> None:
    history = [(1.0, 0.01, 500), (2.0, 0.05, 100), (8.0, 1.0, 3), (1.0, 0.01, 200)]
    for delta in _DELTAS:
        assert _eps("rdp", history, delta) == pytest.approx(_dpa_rdp(history, delta), rel=0.01)
    # Composition order does not matter, and equals the pure RDP maths of personal.privacy.rdp.
    curves = [sgm_rdp(sample_rate=q, noise_multiplier=s, steps=n) for s, q, n in history]
    assert _eps("rdp", history[::-1], 1e-5) == pytest.approx(
        epsilon_from_rdp(compose(curves), delta=1e-5), rel=1e-9
    )


def _check_prv(
    history: list[tuple[float, float, int]], delta: float, interval: float = 5e-4
) -> None:
    """``interval``: the PLD's discretisation in ε (5e-4 is enough below ~1000 steps)."""
    prv = _eps("prv", history, delta)
    lower, upper = _dpa_pld(history, delta, interval)
    assert prv >= lower - 1e-9  # never below a certified lower bound: PRV is a valid bound
    # PRV's estimate (its report minus the declared error PRV_EPS_ERROR) is within 1% of the
    # PLD's, up to the two grids' resolution (2.5e-3 in ε).
    assert abs(prv - PRV_EPS_ERROR - upper) <= 0.01 * upper + 2.5e-3
    assert prv <= _eps("rdp", history, delta) + PRV_EPS_ERROR


# A fast subset of the PRV grid; the whole grid is test_prv_grid_against_pld (slow).
@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [
        (1.0, 0.01, 1000, 1e-5),
        (2.0, 0.1, 100, 1e-7),
        (5.0, 1.0, 100, 1e-5),
        (0.8, 0.001, 1000, 1e-5),
    ],
)
def test_prv_within_one_percent_of_dp_accounting_pld(sigma, q, steps, delta) -> None:
    _check_prv([(sigma, q, steps)], delta)


def test_prv_heterogeneous_history_against_pld() -> None:
    _check_prv([(1.0, 0.01, 100), (2.0, 0.05, 50), (8.0, 1.0, 3)], 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("sigma", "q"), list(itertools.product(_SIGMAS, _QS)))
def test_prv_grid_against_pld(sigma: float, q: float) -> None:
    for steps, delta in itertools.product(_STEPS, _DELTAS):
        try:
            _check_prv([(sigma, q, steps)], delta, interval=1e-4)
        except AccountantNotApplicable:  # grid too large: only for ε in the tens or more
            assert _eps("rdp", [(sigma, q, steps)], delta) > 10


def test_filter_epsilon_is_the_rdp_accountant_at_delta_over_m() -> None:
    # The calibration advice of docs/privacy-accounting.md: filter-ε = RDP ε at δ/len(ORDERS).
    history = [(1.0, 0.01, 500), (4.0, 1.0, 2)]
    curves = [sgm_rdp(sample_rate=q, noise_multiplier=s, steps=n) for s, q, n in history]
    assert _eps("rdp", history, 1e-5 / len(ORDERS)) == pytest.approx(
        filter_epsilon(compose(curves), delta=1e-5), rel=1e-9
    )


# --- calibration ------------------------------------------------------------------------------


_targets = {
    "target": st.floats(0.3, 10.0),
    "delta": st.floats(1e-8, 1e-4),
    "q": st.floats(1e-3, 1.0),
    "steps": st.integers(1, 3000),
}
# The default run avoids the slowest corner (tiny targets over few steps need σ in the tens,
# where opacus' fractional-order series is long); the slow run covers everything.
_quick_targets = {**_targets, "target": st.floats(0.5, 10.0), "steps": st.integers(10, 3000)}


def _check_calibration(target: float, delta: float, q: float, steps: int) -> None:
    sigma = calibrate_noise(target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps)
    spent = _eps("rdp", [(sigma, q, steps)], delta)
    assert spent <= target
    assert spent >= target - 0.01 - 1e-9  # opacus' bisection tolerance: not wastefully noisy
    # The same σ checked by personal's own RDP maths (no opacus involved).
    own = epsilon_from_rdp(sgm_rdp(sample_rate=q, noise_multiplier=sigma, steps=steps), delta=delta)
    assert own <= target * (1 + 1e-9)


@settings(max_examples=6, deadline=None)
@given(**_quick_targets)
def test_calibrated_noise_never_overshoots_rdp(target, delta, q, steps) -> None:
    _check_calibration(target, delta, q, steps)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(**_targets)
def test_calibrated_noise_never_overshoots_rdp_many(target, delta, q, steps) -> None:
    _check_calibration(target, delta, q, steps)


def test_calibrated_noise_never_overshoots_prv() -> None:
    sigma = calibrate_noise(
        target_epsilon=1.0, target_delta=1e-5, sample_rate=0.01, steps=1000, accountant="prv"
    )
    spent = _eps("prv", [(sigma, 0.01, 1000)], 1e-5)
    assert 1.0 - 0.01 - 1e-9 <= spent <= 1.0
    # PRV is tighter than RDP: the same target needs less noise.
    assert sigma < calibrate_noise(
        target_epsilon=1.0, target_delta=1e-5, sample_rate=0.01, steps=1000
    )


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(
    target=st.floats(0.5, 8.0),
    delta=st.floats(1e-7, 1e-4),
    q=st.floats(1e-3, 0.5),
    steps=st.integers(1, 1000),
)
def test_calibrated_noise_never_overshoots_prv_hypothesis(target, delta, q, steps) -> None:
    sigma = calibrate_noise(
        target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps, accountant="prv"
    )
    assert _eps("prv", [(sigma, q, steps)], delta) <= target


def test_calibration_tolerance_and_monotonicity() -> None:
    kw = {"target_delta": 1e-5, "sample_rate": 0.02, "steps": 500}
    tight = calibrate_noise(target_epsilon=2.0, epsilon_tolerance=1e-4, **kw)
    assert 2.0 - 1e-4 - 1e-9 <= _eps("rdp", [(tight, 0.02, 500)], 1e-5) <= 2.0
    sigmas = [calibrate_noise(target_epsilon=e, **kw) for e in (0.5, 1.0, 2.0, 4.0)]
    assert sigmas == sorted(sigmas, reverse=True)  # a larger budget never needs more noise


def test_unreachable_targets_raise_a_named_error() -> None:
    floor = epsilon_floor(delta=1e-5)
    assert floor == pytest.approx(0.019489034092552558, rel=1e-12)
    assert epsilon_floor(delta=1e-5, accountant="prv") == PRV_EPS_ERROR
    # Below the conversion's floor: refused at once, with the floor in the message.
    with pytest.raises(UnreachablePrivacyTarget, match=r"cannot go below 0\.0195"):
        calibrate_noise(target_epsilon=0.01, target_delta=1e-5, sample_rate=0.01, steps=100)
    with pytest.raises(UnreachablePrivacyTarget, match="raise the target"):
        calibrate_noise(
            target_epsilon=0.005, target_delta=1e-5, sample_rate=0.01, steps=10, accountant="prv"
        )
    # Just above the floor: would need σ > 1e6 (opacus' search limit).
    with pytest.raises(UnreachablePrivacyTarget):
        calibrate_noise(target_epsilon=floor + 1e-9, target_delta=1e-5, sample_rate=1.0, steps=1000)
    assert issubclass(UnreachablePrivacyTarget, PrivacyError)


def test_prv_refuses_what_it_cannot_evaluate() -> None:
    # A long, low-noise schedule: the PRV grid would exceed PRV_MAX_POINTS.
    with pytest.raises(AccountantNotApplicable, match="accountant='rdp'"):
        _eps("prv", [(0.8, 0.5, 10_000)], 1e-5)
    # So many steps that no σ keeps the grid small: refused before searching.
    with pytest.raises(AccountantNotApplicable):
        calibrate_noise(
            target_epsilon=1.0, target_delta=1e-5, sample_rate=1e-4, steps=10**7, accountant="prv"
        )
    assert issubclass(AccountantNotApplicable, PrivacyParameterError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": math.inf},
        {"target_delta": 0.0},
        {"target_delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"sample_rate": True},
        {"steps": 0},
        {"steps": 2.5},
        {"epsilon_tolerance": 0.0},
        {"epsilon_tolerance": math.nan},
        {"accountant": "gdp"},
        {"accountant": "moments"},
    ],
)
def test_calibration_refuses_bad_parameters(kwargs: dict) -> None:
    base = {"target_epsilon": 1.0, "target_delta": 1e-5, "sample_rate": 0.01, "steps": 100}
    with pytest.raises(PrivacyParameterError):
        calibrate_noise(**{**base, **kwargs})


# --- monotonicity -------------------------------------------------------------------------------

_sigma = st.floats(0.6, 20.0)
_q = st.floats(1e-4, 1.0)
_steps = st.integers(1, 5000)
_delta = st.floats(1e-9, 1e-3)


@settings(max_examples=25, deadline=None)
@given(sigma=_sigma, q=_q, steps=_steps, more=st.integers(1, 1000), delta=_delta)
def test_epsilon_grows_with_steps(sigma, q, steps, more, delta) -> None:
    assert _eps("rdp", [(sigma, q, steps)], delta) <= _eps("rdp", [(sigma, q, steps + more)], delta)


@settings(max_examples=25, deadline=None)
@given(sigma=_sigma, q=_q, factor=st.floats(0.01, 0.99), steps=_steps, delta=_delta)
def test_epsilon_grows_with_sample_rate(sigma, q, factor, steps, delta) -> None:
    low = _eps("rdp", [(sigma, q * factor, steps)], delta)
    assert low <= _eps("rdp", [(sigma, q, steps)], delta) + 1e-12


@settings(max_examples=25, deadline=None)
@given(sigma=_sigma, factor=st.floats(1.01, 10.0), q=_q, steps=_steps, delta=_delta)
def test_epsilon_decreases_with_noise(sigma, factor, q, steps, delta) -> None:
    noisy = _eps("rdp", [(sigma * factor, q, steps)], delta)
    assert noisy <= _eps("rdp", [(sigma, q, steps)], delta) + 1e-12


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(
    sigma=st.floats(1.0, 5.0),
    q=st.floats(1e-3, 0.2),
    steps=st.integers(1, 500),
    more=st.integers(1, 100),
    factor=st.floats(0.5, 0.99),
)
def test_prv_is_monotone(sigma, q, steps, more, factor) -> None:
    base = _eps("prv", [(sigma, q, steps)], 1e-5)
    assert _eps("prv", [(sigma, q, steps + more)], 1e-5) >= base - 1e-9
    assert _eps("prv", [(sigma, q * factor, steps)], 1e-5) <= base + 1e-9
    assert _eps("prv", [(sigma / factor, q, steps)], 1e-5) <= base + 1e-9


# --- the Accountant object ----------------------------------------------------------------------


def test_step_merges_and_ignores_empty_steps() -> None:
    acc = Accountant("rdp")
    assert acc.get_epsilon(delta=1e-5) == 0.0 and len(acc) == 0
    acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=10)
    acc.step(noise_multiplier=1.0, sample_rate=0.01)
    acc.step(noise_multiplier=1.0, sample_rate=0.0, steps=5)  # nothing sampled: free
    acc.step(noise_multiplier=1.0, sample_rate=0.5, steps=0)  # no step: free
    acc.step(noise_multiplier=2.0, sample_rate=0.01, steps=3)
    assert acc.history == [(1.0, 0.01, 11), (2.0, 0.01, 3)] and len(acc) == 14
    single = Accountant("rdp")
    single.step(noise_multiplier=1.0, sample_rate=0.01, steps=11)
    single.step(noise_multiplier=2.0, sample_rate=0.01, steps=3)
    assert acc.get_epsilon(delta=1e-5) == single.get_epsilon(delta=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "sample_rate": 0.1},
        {"noise_multiplier": -1.0, "sample_rate": 0.1},
        {"noise_multiplier": math.nan, "sample_rate": 0.1},
        {"noise_multiplier": 1.0, "sample_rate": 1.01},
        {"noise_multiplier": 1.0, "sample_rate": True},
        {"noise_multiplier": "1.0", "sample_rate": 0.1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1.0},
    ],
)
def test_step_refuses_bad_parameters(kwargs: dict) -> None:
    acc = Accountant("prv")
    with pytest.raises(PrivacyParameterError):
        acc.step(**kwargs)
    assert acc.history == []


def test_mechanisms() -> None:
    assert MECHANISMS == ("rdp", "prv")
    for bad in ("gdp", "RDP", "", None, 1):
        with pytest.raises(PrivacyParameterError):
            Accountant(bad)  # type: ignore[arg-type]
    with pytest.raises(PrivacyParameterError, match="under-estimate"):
        Accountant("gdp")
    with pytest.raises(PrivacyParameterError):
        Accountant("rdp").get_epsilon(delta=0.0)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_state_dict_round_trip(mechanism: str) -> None:
    acc = Accountant(mechanism)
    acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    acc.step(noise_multiplier=3.0, sample_rate=1.0, steps=2)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state == {"mechanism": mechanism, "history": [[1.0, 0.01, 100], [3.0, 1.0, 2]]}
    again = Accountant(mechanism)
    again.load_state_dict(state)
    assert again.history == acc.history
    assert again.get_epsilon(delta=1e-5) == acc.get_epsilon(delta=1e-5)
    clone = Accountant.from_state_dict(state)
    assert clone.mechanism == mechanism and clone.history == acc.history


_GOOD = {"mechanism": "rdp", "history": [[1.0, 0.01, 100]]}


@pytest.mark.parametrize(
    "state",
    [
        None,
        [],
        "rdp",
        {"mechanism": "rdp"},
        {"history": []},
        {"mechanism": "prv", "history": []},
        {"mechanism": "rdp", "history": "1.0,0.01,100"},
        {"mechanism": "rdp", "history": {"0": [1.0, 0.01, 100]}},
        {"mechanism": "rdp", "history": [[1.0, 0.01]]},
        {"mechanism": "rdp", "history": [[1.0, 0.01, 100, 1]]},
        {"mechanism": "rdp", "history": [["1.0", 0.01, 100]]},
        {"mechanism": "rdp", "history": [[1.0, "0.01", 100]]},
        {"mechanism": "rdp", "history": [[True, 0.01, 100]]},
        {"mechanism": "rdp", "history": [[1.0, 0.01, 100.0]]},
        {"mechanism": "rdp", "history": [[1.0, 0.01, True]]},
        {"mechanism": "rdp", "history": [[0.0, 0.01, 100]]},
        {"mechanism": "rdp", "history": [[math.nan, 0.01, 100]]},
        {"mechanism": "rdp", "history": [[math.inf, 0.01, 100]]},
        {"mechanism": "rdp", "history": [[1.0, 1.5, 100]]},
        {"mechanism": "rdp", "history": [[1.0, -0.01, 100]]},
        {"mechanism": "rdp", "history": [[1.0, 0.01, -100]]},
        {"mechanism": "rdp", "history": [[1.0, 0.01, 0]]},
        {"mechanism": "rdp", "history": [[1.0, 0.0, 10]]},
        {"mechanism": "rdp", "history": [[1.0, 0.01, 100], None]},
    ],
)
def test_load_state_dict_rejects_malformed_state_and_changes_nothing(state) -> None:
    acc = Accountant("rdp")
    acc.step(noise_multiplier=2.0, sample_rate=0.1, steps=7)
    before = acc.state_dict()
    with pytest.raises(PrivacyStateError):
        acc.load_state_dict(state)
    assert acc.state_dict() == before
    if not (isinstance(state, dict) and state.get("mechanism") == "prv"):  # a valid PRV state
        with pytest.raises(PrivacyStateError):
            Accountant.from_state_dict(state)


def test_good_state_for_the_rejection_cases_is_accepted() -> None:
    acc = Accountant("rdp")
    acc.load_state_dict(_GOOD)
    assert acc.history == [(1.0, 0.01, 100)]


def test_opacus_warnings_do_not_leak() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _eps("rdp", [(50.0, 0.5, 1)], 1e-5)  # optimal order = largest: opacus would warn
    assert np.isfinite(_eps("rdp", [(50.0, 0.5, 1)], 1e-5))
