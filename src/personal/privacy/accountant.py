"""Opacus-backed (ε, δ) accountants for a schedule of Poisson-subsampled Gaussian steps.

Two mechanisms, chosen by name (a policy's ``accountant = "rdp" | "prv"``):

* ``"rdp"`` -- opacus' ``RDPAccountant`` evaluated on :data:`personal.privacy.rdp.ORDERS`, with
  the Balle et al. (2020) conversion. RDP composes adaptively, so the same curves drive the
  per-unit Rényi filter (:mod:`personal.privacy.filter`).
* ``"prv"`` -- opacus' ``PRVAccountant`` (Gopi, Lee & Wutschitz 2021): numerical composition of
  privacy-loss random variables, tighter than RDP for a schedule *fixed in advance*. The value
  returned is the upper end of its error bracket (estimate at ``δ - δ/1000``, plus
  :data:`PRV_EPS_ERROR`). It is not a filter: no valid PRV/PLD filter under fully adaptive
  composition is known for the subsampled Gaussian, so `personal` uses PRV for reports and
  noise calibration of a planned schedule, never to admit units.

``"gdp"`` (opacus' Gaussian/CLT accountant) is refused: it is only asymptotically valid and can
*under*-estimate ε. Everything here is one unit's view of a non-adaptive schedule; the lifetime
guarantee under adaptive rounds is the filter's. The theory, conditions and tolerances are in
docs/privacy-accounting.md. opacus (hence torch) is imported lazily, on first use.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from personal.errors import (
    AccountantNotApplicable,
    PrivacyParameterError,
    PrivacyStateError,
    UnreachablePrivacyTarget,
)
from personal.privacy.rdp import (
    ORDERS,
    check_epsilon,
    check_probability,
    check_round,
    compose,
    epsilon_from_rdp,
    sgm_rdp,
)

#: Accountants `personal` accepts, by name.
MECHANISMS: tuple[str, ...] = ("rdp", "prv")

#: PRV's additive error bound on ε (opacus' default); the reported ε is the upper end of the
#: bracket, estimate + PRV_EPS_ERROR, so it is never below the true ε by construction.
PRV_EPS_ERROR = 0.01

#: Largest PRV discretisation grid allowed (points); opacus' PRV would otherwise exhaust memory
#: for long, low-noise schedules (its mesh shrinks like 1/sqrt(steps) while ε grows).
PRV_MAX_POINTS = 1_000_000

#: One history entry, as in opacus: (noise multiplier σ, sampling rate q, number of steps).
HistoryEntry = tuple[float, float, int]

_REFUSED = {
    "gdp": "the 'gdp' accountant relies on a central limit theorem: it is only asymptotically "
    "valid and can under-estimate ε. Use accountant='rdp' (or 'prv' for a fixed schedule)."
}


def check_mechanism(mechanism: str) -> str:
    """Return ``mechanism`` if `personal` supports it; raise with what to use instead."""
    if not isinstance(mechanism, str):
        raise PrivacyParameterError(f"accountant must be a name {MECHANISMS}; got {mechanism!r}.")
    if mechanism in _REFUSED:
        raise PrivacyParameterError(_REFUSED[mechanism])
    if mechanism not in MECHANISMS:
        raise PrivacyParameterError(
            f"unknown accountant {mechanism!r}; choose one of {MECHANISMS}."
        )
    return mechanism


def _is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` is not a sampling rate)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --- PRV: grid size and a bounded opacus accountant -------------------------------------------


def _prv_mesh(total_steps: int, delta_error: float) -> float:
    """opacus' PRV mesh size (Gopi, Lee & Wutschitz 2021, §5)."""
    return PRV_EPS_ERROR / math.sqrt(total_steps * math.log(12 / delta_error) / 2)


def _prv_min_points(total_steps: int, delta: float) -> int:
    """Fewest grid points opacus' PRV uses for ``total_steps`` at ``delta``, whatever σ is.

    The half-width is at least ``PRV_EPS_ERROR + 3`` (opacus' ``compute_safe_domain_size``).
    """
    return int(2 * (PRV_EPS_ERROR + 3) / _prv_mesh(total_steps, delta / 1000)) + 2


def _prv_grid_points(history: Sequence[HistoryEntry], delta_error: float) -> int:
    """About the size of the grid opacus' PRVAccountant would build for ``history``.

    Mirrors opacus' ``compute_safe_domain_size`` and mesh (Gopi, Lee & Wutschitz 2021, Remark
    5.6) but evaluates the RDP bounds with :mod:`personal.privacy.rdp` on :data:`ORDERS` (fast,
    cached; opacus uses its own order grid, so the count is approximate), so that a hopeless
    schedule is refused in milliseconds instead of after minutes.
    """
    total = sum(n for _, _, n in history)
    curves = [sgm_rdp(sample_rate=q, noise_multiplier=s, steps=n) for s, q, n in history]
    half_width = epsilon_from_rdp(compose(curves), delta=delta_error / 4)
    for sigma, q, _ in history:
        one = sgm_rdp(sample_rate=q, noise_multiplier=sigma)
        half_width = max(half_width, epsilon_from_rdp(one, delta=delta_error / (8 * total)))
    half_width = max(half_width, PRV_EPS_ERROR) + 3
    return int(2 * half_width / _prv_mesh(total, delta_error)) + 2


@lru_cache(maxsize=1)
def _bounded_prv() -> str:
    """Register (once) opacus' PRV accountant that answers inf instead of failing.

    Used only inside opacus' ``get_noise_multiplier`` search: inf is a valid (useless) upper
    bound, so a σ whose PRV cannot be evaluated (grid too large, δ below the floating-point
    resolution) only moves the search to larger σ. The σ finally returned is re-checked with
    the plain accountant (:func:`calibrate_noise`).
    """
    from opacus.accountants import PRVAccountant, register_accountant

    class BoundedPRVAccountant(PRVAccountant):
        def get_epsilon(self, delta: float, *, eps_error: float = PRV_EPS_ERROR, **_: Any) -> float:
            if _prv_grid_points(self.history, delta / 1000) > PRV_MAX_POINTS:
                return math.inf
            try:
                return float(super().get_epsilon(delta, eps_error=eps_error))
            except (ValueError, RuntimeError):
                return math.inf

    register_accountant("personal-prv", BoundedPRVAccountant, force=True)
    return "personal-prv"


def _epsilon(mechanism: str, history: Sequence[HistoryEntry], delta: float) -> float:
    """ε of an opacus-style history [(σ, q, steps), ...] at ``delta``."""
    if not history:
        return 0.0
    from opacus.accountants import PRVAccountant, RDPAccountant

    with warnings.catch_warnings():  # "optimal order is the largest alpha": we chose the grid
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # PRV's pdf overflows harmlessly
        if mechanism == "rdp":
            acc = RDPAccountant()
            acc.history = list(history)
            return float(acc.get_epsilon(delta=delta, alphas=list(ORDERS)))
        points = _prv_grid_points(history, delta / 1000)
        if points > PRV_MAX_POINTS:
            raise AccountantNotApplicable(
                f"the PRV accountant would need {points:,} grid points for this schedule "
                f"(limit {PRV_MAX_POINTS:,}); use accountant='rdp'."
            )
        acc = PRVAccountant()
        acc.history = list(history)
        try:
            return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))
        except (ValueError, RuntimeError) as exc:  # δ below PRV's floating-point resolution
            raise AccountantNotApplicable(
                f"the PRV accountant cannot evaluate this schedule at δ={delta} ({exc}); "
                "use accountant='rdp' or a larger δ."
            ) from exc


# --- the accountant ----------------------------------------------------------------------------


class Accountant:
    """(ε, δ) of a schedule of Poisson-subsampled Gaussian steps (one unit, non-adaptive).

    ``history`` is opacus' format: a list of ``(σ, q, steps)``; consecutive steps with the same
    (σ, q) are merged. Valid for a schedule fixed in advance; for rounds chosen adaptively the
    lifetime guarantee is the per-unit filter's (:mod:`personal.privacy.filter`).

    Args:
        mechanism: ``"rdp"`` or ``"prv"``.
    """

    def __init__(self, mechanism: str = "rdp") -> None:
        self._mechanism = check_mechanism(mechanism)
        self.history: list[HistoryEntry] = []  # (σ, q, steps), as in opacus

    @property
    def mechanism(self) -> str:
        """The accountant's name (``"rdp"`` or ``"prv"``)."""
        return self._mechanism

    def __len__(self) -> int:
        """Total number of steps accounted."""
        return sum(steps for _, _, steps in self.history)

    def __repr__(self) -> str:
        return f"Accountant({self._mechanism!r}, history={self.history!r})"

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Account ``steps`` steps with noise multiplier σ and Poisson sampling rate q.

        Raises:
            PrivacyParameterError: q outside [0, 1], σ <= 0 or not finite, steps < 0, or a
                value that is not a number (bools included).
        """
        if not (_is_real(noise_multiplier) and _is_real(sample_rate)):
            raise PrivacyParameterError(
                f"noise_multiplier and sample_rate must be numbers; got {noise_multiplier!r}, "
                f"{sample_rate!r}."
            )
        check_round(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)
        sigma, q, steps = float(noise_multiplier), float(sample_rate), int(steps)
        if steps == 0 or q == 0.0:  # nothing sampled: no privacy loss
            return
        if self.history and self.history[-1][:2] == (sigma, q):
            self.history[-1] = (sigma, q, self.history[-1][2] + steps)
        else:
            self.history.append((sigma, q, steps))

    def get_epsilon(self, *, delta: float) -> float:
        """ε spent so far at ``delta`` (an upper bound; 0 if nothing was accounted).

        Raises:
            PrivacyParameterError: δ is not in (0, 1).
            AccountantNotApplicable: PRV cannot evaluate this schedule (use ``"rdp"``).
        """
        return _epsilon(self._mechanism, self.history, check_probability("delta", delta))

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: ``{"mechanism": str, "history": [[σ, q, steps], ...]}``."""
        return {"mechanism": self._mechanism, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history with ``state``'s after validating it (unchanged on error).

        Raises:
            PrivacyStateError: Not a mapping, missing keys, another mechanism, or a malformed
                history entry (not a [σ, q, steps] triple of numbers in range, or one that
                accounts nothing).
        """
        if not isinstance(state, Mapping) or {"mechanism", "history"} - set(state):
            raise PrivacyStateError("accountant state needs the keys 'mechanism' and 'history'.")
        if state["mechanism"] != self._mechanism:
            raise PrivacyStateError(
                f"state of a {state['mechanism']!r} accountant cannot be loaded into a "
                f"{self._mechanism!r} one."
            )
        entries = state["history"]
        if not isinstance(entries, list | tuple):
            raise PrivacyStateError("accountant history must be a list of [σ, q, steps].")
        history = [_history_entry(entry) for entry in entries]
        self.history = history

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Accountant:
        """A new accountant of the mechanism stored in ``state`` (validated as in load)."""
        if not isinstance(state, Mapping) or "mechanism" not in state:
            raise PrivacyStateError("accountant state needs the keys 'mechanism' and 'history'.")
        try:
            acc = cls(state["mechanism"])
        except PrivacyParameterError as exc:
            raise PrivacyStateError(f"accountant state names no valid mechanism: {exc}") from exc
        acc.load_state_dict(state)
        return acc


def _history_entry(entry: object) -> HistoryEntry:
    """One validated ``(σ, q, steps)`` of a saved history."""
    if not (isinstance(entry, list | tuple) and len(entry) == 3):
        raise PrivacyStateError(f"malformed history entry {entry!r}: expected [σ, q, steps].")
    sigma, q, steps = entry
    if not (_is_real(sigma) and _is_real(q) and _is_integer(steps)):
        raise PrivacyStateError(
            f"malformed history entry {entry!r}: σ and q must be numbers, steps an integer."
        )
    try:
        check_round(sample_rate=q, noise_multiplier=sigma, steps=steps)
    except PrivacyParameterError as exc:
        raise PrivacyStateError(f"malformed history entry {entry!r}: {exc}") from exc
    if steps < 1 or q == 0.0:
        raise PrivacyStateError(f"history entry {entry!r} accounts nothing.")
    return float(sigma), float(q), int(steps)


# --- calibration -------------------------------------------------------------------------------


def epsilon_floor(*, delta: float, accountant: str = "rdp") -> float:
    """The ε below which no noise level can go (σ -> ∞) for this accountant at ``delta``.

    RDP: the conversion's own offset at the largest order, ``min_α K(α)`` (zero RDP).
    PRV: its additive error bound :data:`PRV_EPS_ERROR` (the reported ε is estimate + error).
    """
    check_mechanism(accountant)
    delta = check_probability("delta", delta)
    if accountant == "prv":
        return PRV_EPS_ERROR
    a = ORDERS[-1]  # the offset K(α) decreases in α: the largest order is the floor
    return max(math.log1p(-1.0 / a) - (math.log(delta) + math.log(a)) / (a - 1.0), 0.0)


def calibrate_noise(
    *,
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The noise multiplier σ for which ``steps`` steps at rate q spend at most the target ε.

    Through opacus' ``get_noise_multiplier`` (doubling, then bisection until
    ``target - epsilon_tolerance <= ε(σ) <= target``), then checked with the same accountant
    and nudged upward until ``ε(σ) <= target_epsilon``: the returned σ never overshoots.

    This is the plain (non-adaptive) conversion at ``target_delta``. To calibrate rounds for
    the per-unit Rényi filter, whose conversion runs at δ / len(ORDERS), pass
    ``target_delta=delta / len(ORDERS)`` with ``accountant="rdp"`` (docs/privacy-accounting.md).

    Raises:
        PrivacyParameterError: A parameter is out of range, or the accountant is unknown.
        AccountantNotApplicable: PRV cannot handle this many steps at this δ (use ``"rdp"``).
        UnreachablePrivacyTarget: No σ reaches the target; the message says what to change.
    """
    eps, delta = check_epsilon(target_epsilon), check_probability("target_delta", target_delta)
    check_mechanism(accountant)
    if not _is_real(sample_rate) or not _is_integer(steps):
        raise PrivacyParameterError("sample_rate must be a number and steps an integer.")
    check_round(sample_rate=sample_rate, noise_multiplier=1.0, steps=steps)
    if steps < 1 or sample_rate == 0.0:
        raise PrivacyParameterError("calibrate_noise needs steps >= 1 and sample_rate > 0.")
    tol = float(epsilon_tolerance) if _is_real(epsilon_tolerance) else math.nan
    if not (math.isfinite(tol) and tol > 0.0):
        raise PrivacyParameterError(f"epsilon_tolerance must be > 0; got {epsilon_tolerance!r}.")
    q, steps = float(sample_rate), int(steps)
    floor = epsilon_floor(delta=delta, accountant=accountant)
    if eps <= floor:
        raise _unreachable(eps, delta, q, steps, floor, accountant)
    if accountant == "prv" and _prv_min_points(steps, delta) > PRV_MAX_POINTS:
        raise AccountantNotApplicable(
            f"the PRV accountant cannot handle {steps:,} steps at δ={delta} (its grid would "
            f"exceed {PRV_MAX_POINTS:,} points whatever σ is); use accountant='rdp'."
        )
    sigma = _opacus_sigma(eps, delta, q, steps, accountant, tol)
    schedule = Accountant(accountant)
    for _ in range(200):  # opacus' search already ends at or below target; this only guards it
        schedule.history = [(sigma, q, steps)]
        try:
            spent = schedule.get_epsilon(delta=delta)
        except AccountantNotApplicable:
            spent = math.inf
        if spent <= eps:
            return sigma
        sigma *= 1.001
    raise _unreachable(eps, delta, q, steps, floor, accountant)


def _opacus_sigma(
    eps: float, delta: float, q: float, steps: int, accountant: str, tol: float
) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    kwargs: dict[str, Any]
    if accountant == "rdp":
        name, kwargs = "rdp", {"alphas": list(ORDERS)}
    else:
        name, kwargs = _bounded_prv(), {"eps_error": PRV_EPS_ERROR}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return float(
                get_noise_multiplier(
                    target_epsilon=eps,
                    target_delta=delta,
                    sample_rate=q,
                    steps=steps,
                    accountant=name,
                    epsilon_tolerance=tol,
                    **kwargs,
                )
            )
        except (ValueError, RuntimeError) as exc:  # "The privacy budget is too low." (σ > 1e6)
            raise _unreachable(eps, delta, q, steps, None, accountant) from exc


def _unreachable(
    eps: float, delta: float, q: float, steps: int, floor: float | None, accountant: str
) -> UnreachablePrivacyTarget:
    why = f" (ε cannot go below {floor:.4f} at this δ)" if floor is not None else ""
    also = " (or use accountant='rdp')" if accountant == "prv" else ""
    return UnreachablePrivacyTarget(
        f"no noise multiplier reaches ε={eps} at δ={delta} with sample_rate={q} over "
        f"{steps} steps with the {accountant!r} accountant{why}: raise the target ε or δ, or "
        f"lower the sample rate or the number of steps{also}."
    )
