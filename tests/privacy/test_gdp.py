"""μ-GDP maths: the exact privacy profile of the Gaussian mechanism and its inverses.

δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) (Dong, Roth & Su 2019, Cor. 2.13; Balle & Wang 2018);
cross-checked with Google's dp-accounting PLD of the (composed) Gaussian mechanism.
"""

from __future__ import annotations

import math

from personal.errors import PrivacyParameterError
from personal.privacy.gdp import charge_mu_squared, gaussian_delta, gaussian_epsilon, mu_budget

import pytest
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

_MU = st.floats(0.01, 20.0)
_DELTA = st.floats(1e-12, 0.2)


def _closed_form(epsilon: float, mu: float) -> float:
    a = -epsilon / mu + mu / 2
    return float(special.ndtr(a) - math.exp(epsilon) * special.ndtr(a - mu))


@settings(max_examples=300, deadline=None)
@given(mu=st.floats(0.05, 10.0), epsilon=st.floats(0.0, 20.0))
def test_delta_is_the_closed_form(mu: float, epsilon: float) -> None:
    assert gaussian_delta(epsilon, mu) == pytest.approx(_closed_form(epsilon, mu), abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(mu1=_MU, mu2=_MU, delta=_DELTA)
def test_epsilon_is_monotone_in_mu(mu1: float, mu2: float, delta: float) -> None:
    """Monotone up to the root finder's float64 resolution (~1e-13 relative between μ one ulp
    apart); exactly ordered once the μ differ by a millionth. The filter is unaffected: it
    admits by this very function, ``gaussian_epsilon(μ_after, δ) <= ε``."""
    lo, hi = sorted((mu1, mu2))
    e_lo, e_hi = gaussian_epsilon(lo, delta), gaussian_epsilon(hi, delta)
    assert e_lo <= e_hi * (1 + 1e-11) + 1e-14
    if hi >= lo * (1 + 1e-6):
        assert e_lo <= e_hi


@settings(max_examples=200, deadline=None)
@given(mu=_MU, d1=_DELTA, d2=_DELTA)
def test_epsilon_decreases_in_delta(mu: float, d1: float, d2: float) -> None:
    lo, hi = sorted((d1, d2))
    e_lo, e_hi = gaussian_epsilon(mu, lo), gaussian_epsilon(mu, hi)
    assert e_hi <= e_lo * (1 + 1e-11) + 1e-14
    if hi >= lo * (1 + 1e-6):
        assert e_hi <= e_lo


@settings(max_examples=200, deadline=None)
@given(mu=_MU, delta=st.floats(1e-300, 0.2))
def test_epsilon_is_the_exact_inverse_rounded_up(mu: float, delta: float) -> None:
    eps = gaussian_epsilon(mu, delta)
    assert math.isfinite(eps) and eps >= 0
    assert gaussian_delta(eps, mu) <= delta  # never under-states ε
    if eps > 1e-9:  # and is the smallest such ε, to float precision
        assert gaussian_delta(eps * (1 - 1e-9) - 1e-12, mu) > delta * (1 - 1e-6)


@settings(max_examples=200, deadline=None)
@given(epsilon=st.floats(0.05, 60.0), delta=st.floats(1e-15, 1e-2))
def test_mu_budget_round_trip(epsilon: float, delta: float) -> None:
    mu = mu_budget(epsilon, delta)
    spent = gaussian_epsilon(mu, delta)
    assert epsilon - 1e-6 <= spent <= epsilon


def test_known_answers() -> None:
    # The shipped default: 4 full-batch steps at δ = 1e-6, lifetime ε = 8.
    assert mu_budget(8.0, 1e-6) == pytest.approx(1.5315, abs=1e-4)
    assert 2.0 / mu_budget(8.0, 1e-6) == pytest.approx(1.3059, abs=1e-4)
    assert gaussian_epsilon(2.0 / 1.6, 1e-6) == pytest.approx(6.3121, abs=1e-4)
    # 1-GDP at ε = 1 (Dong, Roth & Su 2019, Fig. 2 region): δ = Φ(-1/2) - e Φ(-3/2).
    assert gaussian_delta(1.0, 1.0) == pytest.approx(0.1269, abs=1e-4)


def test_edges() -> None:
    assert gaussian_epsilon(0.0, 1e-6) == 0.0 and gaussian_delta(3.0, 0.0) == 0.0
    assert gaussian_epsilon(1e-9, 1e-6) == 0.0  # δ(0) = erf(μ/2√2) is already below δ
    assert gaussian_epsilon(0.5, 0.3) == 0.0
    assert math.isfinite(gaussian_epsilon(30.0, 1e-300))
    assert charge_mu_squared(4, 1.6) == pytest.approx(4 / 1.6**2)
    assert charge_mu_squared(0, 2.0) == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_epsilon(-1.0, 1e-6),
        lambda: gaussian_epsilon(math.inf, 1e-6),
        lambda: gaussian_epsilon(1.0, 0.0),
        lambda: gaussian_epsilon(1.0, 1.0),
        lambda: gaussian_delta(-0.1, 1.0),
        lambda: gaussian_delta(1.0, math.nan),
        lambda: mu_budget(0.0, 1e-6),
        lambda: mu_budget(1.0, 2.0),
        lambda: charge_mu_squared(-1, 1.0),
        lambda: charge_mu_squared(True, 1.0),
        lambda: charge_mu_squared(1, 0.0),
    ],
)
def test_bad_parameters_are_refused(call) -> None:
    with pytest.raises(PrivacyParameterError):
        call()


def _pld_epsilons(schedule: list[tuple[float, int]], delta: float) -> tuple[float, float]:
    """(optimistic, pessimistic) ε of the composed Gaussian mechanisms, by dp-accounting's PLD."""
    out = []
    for pessimistic in (False, True):
        total = None
        for sigma, steps in schedule:
            one = pld_lib.from_gaussian_mechanism(
                standard_deviation=sigma, sensitivity=1.0, pessimistic_estimate=pessimistic,
                value_discretization_interval=1e-3, use_connect_dots=pessimistic,
            ).self_compose(steps)  # fmt: skip
            total = one if total is None else total.compose(one)
        assert total is not None
        out.append(float(total.get_epsilon_for_delta(delta)))
    return out[0], out[1]


@settings(max_examples=6, deadline=None)
@given(
    schedule=st.lists(
        st.tuples(st.sampled_from([0.8, 1.0, 1.3, 1.6, 3.0, 10.0]), st.integers(1, 6)),
        min_size=1,
        max_size=3,
    ),
    delta=st.sampled_from([1e-8, 1e-6, 1e-4]),
)
def test_agrees_with_dp_accounting_pld(schedule: list[tuple[float, int]], delta: float) -> None:
    """Composed Gaussian mechanisms are sqrt(Σ steps/σ²)-GDP, exactly: dp-accounting's PLD
    brackets our ε within its discretisation."""
    mu = math.sqrt(sum(charge_mu_squared(n, s) for s, n in schedule))
    ours = gaussian_epsilon(mu, delta)
    optimistic, pessimistic = _pld_epsilons(schedule, delta)
    assert optimistic <= ours + 1e-9
    assert ours <= pessimistic + 1e-9 and pessimistic <= ours + 0.005
