"""Filter rules: what a round adds to each eligible unit, and what a unit's total is worth in ε.

Every per-unit total in `personal` is an RDP curve over :data:`~personal.privacy.rdp.ORDERS`
(the ledger's unit table, :class:`~personal.privacy.filter.RenyiFilter`, the audit's replay).
A :class:`FilterRule` says how a round's mechanism becomes such a curve and how a curve becomes
a unit's lifetime ε; admission is always ``rule.epsilon(current + charge) <= ε``. A store's
rule is part of its lifetime contract (:attr:`Contract.filter
<personal.privacy.contract.Contract>`), fixed once its first round is recorded.

* ``"renyi"`` (:data:`RENYI`) -- the Rényi filter over several orders (Feldman & Zrnic 2021;
  Lécuyer 2021): the charge is the *amplified* RDP of the Poisson-subsampled Gaussian
  (:func:`~personal.privacy.rdp.sgm_rdp`), ε is :func:`~personal.privacy.rdp.filter_epsilon`
  (the Balle et al. conversion at δ/|ORDERS|, a union bound over the orders).
* ``"gaussian"`` (:data:`GAUSSIAN`) -- the Gaussian-DP filter (Smith & Thakurta 2022; Koskela,
  Tobaben & Honkela 2023): the charge is the RDP of the *unsubsampled* Gaussian mechanism,
  ``α · steps / (2σ²)`` (i.e. μ² = steps/σ², sampling ignored), and ε is the exact ε of
  μ-GDP at δ (:func:`~personal.privacy.gdp.gaussian_epsilon`) with ``μ² = 2 S(α)/α``. Tighter
  for full-batch rounds (q = 1); looser when q ≪ 1 (no amplification by sampling).

The theorem behind each, its proof and its conditions: docs/privacy-accounting.md, section 4.
:func:`validation_noise_multiplier` is the σ a policy sets for the gates' held-out gain metric
(one Gaussian release, q = 1; calibrated under the policy's rule when it names an ε).
Everything here is stateless; the pure maths lives in :mod:`~personal.privacy.rdp` and
:mod:`~personal.privacy.gdp`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Protocol

from personal.errors import PrivacyParameterError, UnreachablePrivacyTarget
from personal.privacy.gdp import gaussian_epsilon, mu_budget
from personal.privacy.rdp import (
    ORDERS,
    as_rdp,
    check_epsilon,
    check_probability,
    check_round,
    filter_epsilon,
    sgm_rdp,
)

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: The filter rules a lifetime contract may name.
FILTERS: tuple[str, ...] = ("renyi", "gaussian")

_ORDERS = np.asarray(ORDERS, dtype=np.float64)
_MAX_SIGMA = 1e6  # like calibrate_noise: a target needing more noise is unreachable


class Mechanism(Protocol):
    """A round's public parameters (a :class:`~personal.privacy.filter.Charge`, an audit round)."""

    @property
    def sample_rate(self) -> float: ...
    @property
    def noise_multiplier(self) -> float: ...
    @property
    def steps(self) -> int: ...


class FilterRule:
    """How rounds are charged to units and how a unit's charges convert to ε (stateless).

    Subclasses define :attr:`name`, :meth:`curve`, :meth:`epsilon` and :meth:`calibrate`;
    :meth:`charge_curve` and :meth:`fits` follow from them.
    """

    name: str = ""

    def curve(self, *, sample_rate: float, noise_multiplier: float, steps: int) -> NDArray:
        """The curve ``(k,)`` one round with these parameters adds to each eligible unit."""
        raise NotImplementedError

    def epsilon(self, curves: ArrayLike, *, delta: float) -> float | NDArray[np.float64]:
        """A unit's lifetime ε at ``delta`` for one curve ``(k,)`` or many ``(n, k)``."""
        raise NotImplementedError

    def calibrate(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        """The σ for which one round takes a fresh unit to at most ``target_epsilon``."""
        raise NotImplementedError

    def charge_curve(self, mechanism: Mechanism) -> NDArray[np.float64]:
        """:meth:`curve` of a round given as an object (a ``Charge``, an audit round)."""
        return self.curve(
            sample_rate=mechanism.sample_rate,
            noise_multiplier=mechanism.noise_multiplier,
            steps=mechanism.steps,
        )

    def fits(
        self,
        current: ArrayLike,
        charge: ArrayLike,
        *,
        epsilon: float,
        delta: float,
        max_share: float | None = None,
    ) -> NDArray[np.bool_]:
        """Row ``i`` of ``current`` ``(n, k)`` may take the curve ``charge`` ``(k,)``.

        True where ``epsilon(current + charge) <= epsilon``; with ``max_share`` in (0, 1] also
        ``<= e + max_share * (epsilon - e)``, ``e`` the unit's ε so far. Depends only on past
        charges and the round's public parameters, never on data.
        """
        eps = check_epsilon(epsilon)
        now = as_rdp(current, name="current_rdp").reshape(-1, len(ORDERS))
        after = np.atleast_1d(self.epsilon(now + as_rdp(charge, name="charge_rdp"), delta=delta))
        ok = after <= eps
        if max_share is not None:
            if isinstance(max_share, bool) or not (
                isinstance(max_share, numbers.Real) and 0 < max_share <= 1
            ):
                raise PrivacyParameterError(f"max_share must be in (0, 1]; got {max_share!r}.")
            spent = np.atleast_1d(self.epsilon(now, delta=delta))
            ok &= after <= spent + max_share * (eps - spent)
        return np.asarray(ok, dtype=bool).reshape(-1)

    def __repr__(self) -> str:
        return f"<filter rule {self.name!r}>"


class RenyiRule(FilterRule):
    """The Rényi filter over :data:`ORDERS` (module docstring; rdp.py has the rule's maths)."""

    name = "renyi"

    def curve(self, *, sample_rate: float, noise_multiplier: float, steps: int) -> NDArray:
        """The amplified RDP of the Poisson-subsampled Gaussian (:func:`sgm_rdp`)."""
        return sgm_rdp(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)

    def epsilon(self, curves: ArrayLike, *, delta: float) -> float | NDArray[np.float64]:
        """:func:`filter_epsilon`: the Balle et al. conversion at δ/|ORDERS|."""
        return filter_epsilon(curves, delta=delta)

    def calibrate(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        """:func:`~personal.privacy.accountant.calibrate_noise` at δ/|ORDERS| (RDP)."""
        from personal.privacy.accountant import calibrate_noise

        return calibrate_noise(
            target_epsilon=target_epsilon, target_delta=delta / len(ORDERS),
            sample_rate=sample_rate, steps=steps, accountant="rdp",
        )  # fmt: skip


class GaussianRule(FilterRule):
    """The Gaussian-DP filter: μ² = Σ steps/σ² over a unit's rounds, ε exact for μ-GDP."""

    name = "gaussian"

    def curve(self, *, sample_rate: float, noise_multiplier: float, steps: int) -> NDArray:
        """RDP of the *unsubsampled* Gaussian, ``α·steps/(2σ²)``; zero if q = 0 (no one is
        sampled, the round does not depend on any unit)."""
        check_round(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)
        rate = 1.0 if float(sample_rate) > 0.0 else 0.0
        return sgm_rdp(sample_rate=rate, noise_multiplier=noise_multiplier, steps=steps)

    def epsilon(self, curves: ArrayLike, *, delta: float) -> float | NDArray[np.float64]:
        """``gaussian_epsilon(μ, δ)`` with ``μ² = max_α 2 S(α)/α`` (the same at every α for
        the curves this rule charges; the max stays an upper bound for any other curve)."""
        delta = check_probability("delta", delta)
        arr = as_rdp(curves)
        mu = np.sqrt(np.max(2.0 * arr / _ORDERS, axis=-1))
        if mu.ndim == 0:
            return gaussian_epsilon(float(mu), delta)
        values, inverse = np.unique(mu, return_inverse=True)  # units share histories
        eps = np.array([gaussian_epsilon(float(m), delta) for m in values])
        return eps[inverse].reshape(mu.shape)

    def calibrate(
        self, *, target_epsilon: float, delta: float, sample_rate: float, steps: int
    ) -> float:
        """``σ = sqrt(steps) / mu_budget(ε, δ)``, nudged up until the rule's ε is <= target.

        Raises:
            UnreachablePrivacyTarget: The target needs σ > 1e6.
        """
        eps, delta = check_epsilon(target_epsilon), check_probability("delta", delta)
        check_round(sample_rate=sample_rate, noise_multiplier=1.0, steps=steps)
        if steps < 1 or sample_rate == 0.0:
            raise PrivacyParameterError("calibrate needs steps >= 1 and sample_rate > 0.")
        sigma = math.sqrt(steps) / mu_budget(eps, delta)
        while sigma <= _MAX_SIGMA:
            step = self.curve(sample_rate=sample_rate, noise_multiplier=sigma, steps=steps)
            if self.epsilon(step, delta=delta) <= eps:
                return sigma
            sigma *= 1.0 + 1e-12
        raise UnreachablePrivacyTarget(
            f"no noise multiplier up to {_MAX_SIGMA:g} reaches ε={eps} at δ={delta} over "
            f"{steps} steps under the Gaussian filter: raise the target ε or δ, or lower the "
            "number of steps."
        )


RENYI = RenyiRule()
GAUSSIAN = GaussianRule()
_RULES: dict[str, FilterRule] = {RENYI.name: RENYI, GAUSSIAN.name: GAUSSIAN}


def rule_of(name: str | FilterRule) -> FilterRule:
    """The rule named ``name`` (one of :data:`FILTERS`); a rule is returned as is.

    Raises:
        PrivacyParameterError: An unknown name.
    """
    if isinstance(name, FilterRule):
        return name
    rule = _RULES.get(name) if isinstance(name, str) else None
    if rule is None:
        raise PrivacyParameterError(f"the filter must be one of {FILTERS}; got {name!r}.")
    return rule


def validation_noise_multiplier(policy: Any) -> float:
    """σ of the gates' held-out gain metric under ``policy`` (``gates.validation_noise_multiplier``,
    or calibrated from ``gates.validation_epsilon`` under the policy's filter rule: one
    Gaussian release, q = 1)."""
    gates, privacy = policy.gates, policy.privacy
    if gates.validation_epsilon is None:
        return float(gates.validation_noise_multiplier or 10.0)
    return float(
        rule_of(privacy.filter).calibrate(
            target_epsilon=gates.validation_epsilon, delta=privacy.delta, sample_rate=1.0, steps=1
        )
    )
