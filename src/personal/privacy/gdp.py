"""Gaussian differential privacy (μ-GDP) maths: the exact (ε, δ) of a Gaussian mechanism.

Pure functions over floats: no state, numpy and scipy.special / scipy.optimize only.

A Gaussian mechanism with sensitivity C and noise N(0, (σC)²) is μ-GDP with ``μ = 1/σ``, and
``T`` of them composed (adaptively chosen, stopped by a filter: Smith & Thakurta 2022) are
``sqrt(Σ 1/σ_i²)``-GDP. μ-GDP is *exactly* the privacy profile (Dong, Roth & Su 2019,
Cor. 2.13; Balle & Wang 2018, Thm. 8)::

    δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2),      ε >= 0,

so a μ-GDP mechanism is (ε, δ)-DP for exactly the pairs with ``δ >= δ(ε)``.

* :func:`gaussian_delta` -- δ(ε) above, evaluated in log space (``log_ndtr``) so that tiny δ
  neither underflows nor cancels.
* :func:`gaussian_epsilon` -- the smallest ε with δ(ε) <= δ (root finding in float64; the
  answer is rounded *up*: δ(answer) <= δ is re-checked).
* :func:`mu_budget` -- the largest μ whose ε at δ is <= a target ε (rounded *down*, re-checked).
* :func:`charge_mu_squared` -- μ² of ``steps`` Gaussian steps with noise multiplier σ:
  ``steps / σ²`` (what the Gaussian filter charges; docs/privacy-accounting.md, section 4).
"""

from __future__ import annotations

import math
from functools import lru_cache

from personal.errors import PrivacyParameterError

import numpy as np
from scipy import optimize, special

#: The smallest positive float64 (subnormal): keeps log(1 - e^x) finite when x rounds to 0.
_TINY = 5e-324
#: Brent's relative tolerance: the smallest scipy accepts (4 ulp).
_RTOL = 4 * float(np.finfo(np.float64).eps)


def _check_mu(mu: float) -> float:
    m = float(mu)
    if not (math.isfinite(m) and m >= 0.0):
        raise PrivacyParameterError(f"mu must be a finite number >= 0; got {mu!r}.")
    return m


def _check_delta(delta: float) -> float:
    d = float(delta)
    if not (math.isfinite(d) and 0.0 < d < 1.0):
        raise PrivacyParameterError(f"delta must satisfy 0 < delta < 1; got {delta!r}.")
    return d


def _check_eps(epsilon: float, *, positive: bool = False) -> float:
    e = float(epsilon)
    if not (math.isfinite(e) and (e > 0.0 if positive else e >= 0.0)):
        bound = "> 0" if positive else ">= 0"
        raise PrivacyParameterError(f"epsilon must be a finite number {bound}; got {epsilon!r}.")
    return e


def _log_delta(epsilon: float, mu: float) -> float:
    """log δ(ε) of μ-GDP (μ > 0, ε >= 0), in log space throughout.

    ``δ = Φ(a) (1 - e^x)`` with ``a = -ε/μ + μ/2``, ``b = a - μ`` and
    ``x = ε + log Φ(b) - log Φ(a) < 0``; ``x`` is clipped below 0 so that a difference lost to
    rounding gives a tiny δ, never ``log 0``.
    """
    a = -epsilon / mu + mu / 2.0
    log_a = float(special.log_ndtr(a))
    x = epsilon + float(special.log_ndtr(a - mu)) - log_a
    return log_a + math.log(-math.expm1(min(x, -_TINY)))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of a μ-GDP mechanism: ``Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)``.

    Args:
        epsilon: ε >= 0.
        mu: μ >= 0 (``0``: no privacy loss, δ = 0).

    Returns:
        The smallest δ for which the mechanism is (ε, δ)-DP (Dong, Roth & Su 2019, Cor. 2.13).

    Raises:
        PrivacyParameterError: ε < 0, μ < 0, or either not finite.
    """
    eps, m = _check_eps(epsilon), _check_mu(mu)
    if m == 0.0:
        return 0.0
    return math.exp(_log_delta(eps, m))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The smallest ε >= 0 for which a μ-GDP mechanism is (ε, δ)-DP (exact, float64).

    Monotone: increasing in μ, decreasing in δ. ``μ = 0`` gives 0. The root of
    ``log δ(ε) = log δ`` is found by Brent's method on a bracket known to contain it and then
    rounded *up* until ``δ(ε) <= δ`` holds in float64, so the answer never under-states ε.

    Raises:
        PrivacyParameterError: μ < 0 or not finite, δ outside (0, 1).
    """
    return _gaussian_epsilon(_check_mu(mu), _check_delta(delta))


@lru_cache(maxsize=65536)
def _gaussian_epsilon(mu: float, delta: float) -> float:
    if mu == 0.0:
        return 0.0
    log_target = math.log(delta)
    if math.erf(mu / (2.0 * math.sqrt(2.0))) <= delta:  # δ(0) = 2Φ(μ/2) - 1
        return 0.0

    def f(eps: float) -> float:
        return _log_delta(eps, mu) - log_target

    # At ε = μ²/2 + μz with Φ(-z) = δ, the first term of δ(ε) alone is δ: the root is below.
    z = max(-float(special.ndtri(delta)), 0.0)
    hi = mu * mu / 2.0 + mu * z + 1e-12
    while math.exp(_log_delta(hi, mu)) > delta:  # only for rounding at the edge: rare, brief
        hi *= 2.0
    root = float(optimize.brentq(f, 0.0, hi, xtol=1e-15, rtol=_RTOL, maxiter=500))
    # Round up until gaussian_delta(root, mu) <= delta holds exactly as that function computes it.
    step = max(root, 1e-300) * 2.2e-16
    while root < hi and math.exp(_log_delta(root, mu)) > delta:
        root = min(root + step, hi)
        step *= 2.0
    return root


def mu_budget(epsilon: float, delta: float) -> float:
    """The largest μ whose ε at ``delta`` is <= ``epsilon`` (never overshoots).

    Solves ``δ(ε; μ) = δ`` for μ (δ(ε; μ) increases with μ) and then nudges μ down until
    ``gaussian_epsilon(μ, delta) <= epsilon`` holds as computed, so that a unit spending exactly
    this μ² is admitted by the filter rule ``gaussian_epsilon(μ, δ) <= ε``.

    Raises:
        PrivacyParameterError: ε <= 0 or not finite, δ outside (0, 1).
    """
    return _mu_budget(_check_eps(epsilon, positive=True), _check_delta(delta))


@lru_cache(maxsize=1024)
def _mu_budget(epsilon: float, delta: float) -> float:
    log_target = math.log(delta)

    def h(mu: float) -> float:  # increasing in μ
        return _log_delta(epsilon, mu) - log_target

    lo, hi = 1.0, 1.0
    while h(hi) < 0.0:
        hi *= 2.0
    while h(lo) > 0.0:
        lo /= 2.0
    mu = float(optimize.brentq(h, lo, hi, xtol=1e-15, rtol=_RTOL, maxiter=500))
    step = mu * 2.2e-16
    while _gaussian_epsilon(mu, delta) > epsilon:
        mu -= step
        step *= 2.0
    return mu


def charge_mu_squared(steps: int, noise_multiplier: float) -> float:
    """μ² of ``steps`` Gaussian steps with noise multiplier σ: ``steps / σ²``.

    Under the Gaussian filter a unit's μ² is the sum of these over the rounds it was eligible
    for (Poisson sampling, if any, is ignored: a valid upper bound).

    Raises:
        PrivacyParameterError: steps not an integer >= 0, σ <= 0 or not finite.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise PrivacyParameterError(f"steps must be an integer >= 0; got {steps!r}.")
    sigma = float(noise_multiplier)
    if not (math.isfinite(sigma) and sigma > 0.0):
        raise PrivacyParameterError(
            f"noise_multiplier must be a finite number > 0; got {noise_multiplier!r}."
        )
    return steps / (sigma * sigma)
