"""The per-unit Rényi filter: who may take part in a round, and what each round costs them.

A *unit* (one interaction, or a session/day when the policy groups them) is charged, for every
round in which it was *eligible for sampling*, the RDP of that round's Poisson-subsampled
Gaussian mechanism -- whether or not the sampler actually picked it, because amplification by
sampling is exactly what the charge already accounts for. Before a round, a unit whose charge
would push its filter-ε past the lifetime ε (at the lifetime δ) is excluded; excluded units are
never sampled and not charged. The theorem this relies on (Feldman & Zrnic 2021, Thm. 3.1;
Lécuyer 2021 for several orders, with a union bound over :data:`ORDERS`), its proof and its
conditions are in :mod:`personal.privacy.rdp` and docs/privacy-accounting.md.

That is the default rule. ``RenyiFilter(..., rule="gaussian")`` runs the Gaussian-DP filter
instead (Smith & Thakurta 2022): each round adds the *unsubsampled* Gaussian's curve
``α·steps/(2σ²)`` and a unit's ε is the exact ε of μ-GDP (:mod:`personal.privacy.rules`,
:mod:`personal.privacy.gdp`); everything below works the same under either rule.

Protocol of one round (the ledger persists every step; this module only does the maths)::

    charge = Charge(purpose="training", sample_rate=q, noise_multiplier=sigma, steps=T)
    selection = rf.select(charge, candidate_units)   # pure: nothing changes yet
    rf.charge(charge, selection.eligible)            # charge BEFORE releasing anything
    ... Poisson-sample only from selection.eligible, train, release ...

Charging before the round is conservative: an aborted round wastes budget, never hides it.
Everything is plain data: :meth:`RenyiFilter.state_dict` is JSON-serialisable and
:meth:`RenyiFilter.load_state_dict` re-derives every unit's RDP from the history to validate it.
The state carries no MAC: protection against deliberate tampering is the ledger's hash chain
and seal (:mod:`personal.privacy.ledger`); this module rejects states that are malformed or
internally inconsistent.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

from personal.errors import PrivacyParameterError, PrivacyStateError, UnitOverBudget
from personal.privacy.rdp import (
    ORDERS,
    as_rdp,
    check_epsilon,
    check_probability,
    check_round,
    sgm_rdp,
)
from personal.privacy.rules import RENYI, FilterRule, rule_of

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: What a round may be charged for: everything that touches private data.
PURPOSES: tuple[str, ...] = ("training", "replay", "validation", "fisher", "migration")

UnitId = str | int

_MECHANISM, _VERSION = "renyi-filter", 1
_STATE_KEYS = frozenset({"mechanism", "version", "orders", "epsilon", "delta", "units", "history"})


def _is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Charge:
    """One round's Poisson-subsampled Gaussian mechanism, as charged to each eligible unit.

    The fields are normalised on construction (``str``, ``float``, ``float``, ``int``), so
    :meth:`to_dict` is always JSON-serialisable.

    Attributes:
        purpose: One of :data:`PURPOSES` (a validation metric on private data is a Gaussian
            mechanism too: ``sample_rate=1``, ``noise_multiplier`` = noise std / sensitivity).
        sample_rate: Poisson rate q over the eligible units (public, fixed before the round).
        noise_multiplier: σ, noise std divided by the per-unit clip norm.
        steps: Number of sampled steps in the round.

    Raises:
        PrivacyParameterError: Unknown purpose, a value that is not a number (bools included),
            q outside [0, 1], σ <= 0 or not finite, or steps not an integer >= 0.
    """

    purpose: str
    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.purpose, str) or self.purpose not in PURPOSES:
            raise PrivacyParameterError(f"purpose must be one of {PURPOSES}; got {self.purpose!r}.")
        if not (_is_real(self.sample_rate) and _is_real(self.noise_multiplier)):
            raise PrivacyParameterError(
                f"sample_rate and noise_multiplier must be numbers; got {self.sample_rate!r}, "
                f"{self.noise_multiplier!r}."
            )
        check_round(
            sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier, steps=self.steps
        )
        object.__setattr__(self, "purpose", str(self.purpose))
        object.__setattr__(self, "sample_rate", float(self.sample_rate))
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        object.__setattr__(self, "steps", int(self.steps))

    def rdp(self) -> NDArray[np.float64]:
        """The RDP curve this round adds to every eligible unit, over :data:`ORDERS`."""
        return sgm_rdp(
            sample_rate=self.sample_rate, noise_multiplier=self.noise_multiplier, steps=self.steps
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form ``{"purpose", "sample_rate", "noise_multiplier", "steps"}``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Charge:
        """Inverse of :meth:`to_dict`, validating every field (other keys are ignored).

        Raises:
            PrivacyStateError: Not a mapping, a missing field, or an invalid value.
        """
        if not isinstance(data, Mapping):
            raise PrivacyStateError(f"a charge must be a mapping; got {type(data).__name__}.")
        try:
            steps = data["steps"]
            if isinstance(steps, float) and steps.is_integer():  # JSON writers may emit 3.0
                steps = int(steps)
            return cls(
                purpose=data["purpose"],
                sample_rate=data["sample_rate"],
                noise_multiplier=data["noise_multiplier"],
                steps=steps,
            )
        except KeyError as exc:
            raise PrivacyStateError(f"charge lacks the field {exc}.") from exc
        except PrivacyParameterError as exc:
            raise PrivacyStateError(f"malformed charge: {exc}") from exc


@dataclass(frozen=True)
class Selection:
    """Which candidate units fit a proposed round (``eligible``) and which do not."""

    charge: Charge
    eligible: tuple[UnitId, ...]
    excluded: tuple[UnitId, ...]


def eligible_mask(
    current_rdp: ArrayLike,
    charge_rdp: ArrayLike,
    *,
    epsilon: float,
    delta: float,
    max_share: float | None = None,
    rule: str | FilterRule = RENYI,
) -> NDArray[np.bool_]:
    """Vectorised filter rule: row ``i`` of ``current_rdp`` ``(n, k)`` may take the charge.

    Returns a boolean array ``(n,)``, True where ``rule.epsilon(current + charge) <= epsilon``
    (for the default Rényi rule, :func:`personal.privacy.rdp.fits_budget` is the same rule for
    one unit). ``charge_rdp`` must be ``rule``'s curve of the round (``rule.charge_curve``).

    ``max_share`` (in (0, 1]) also caps what this charge may spend of each unit's *remaining*
    budget: ``rule.epsilon(current + charge) <= e + max_share * (epsilon - e)`` with ``e`` the
    unit's filter-ε so far (a migration retrain, ``migration.retrain_budget_share``). Like the
    lifetime rule it depends only on past charges, never on data.
    """
    return rule_of(rule).fits(
        current_rdp, charge_rdp, epsilon=epsilon, delta=delta, max_share=max_share
    )


def _check_unit(unit: object) -> UnitId:
    if type(unit) not in (str, int):
        raise PrivacyParameterError(f"unit ids must be str or int; got {unit!r}.")
    return unit  # type: ignore[return-value]


def _check_charge(charge: object) -> Charge:
    if not isinstance(charge, Charge):
        raise PrivacyParameterError(f"charge must be a Charge; got {type(charge).__name__}.")
    return charge


class RenyiFilter:
    """Per-unit RDP over :data:`ORDERS`, the lifetime budget, and the history of charges.

    Invariant: every unit's filter-ε (:meth:`epsilon_of`) is <= :attr:`epsilon` at all times;
    :meth:`charge` refuses, all-or-nothing, any charge that would break it.

    Args:
        epsilon: The policy's lifetime ε per unit.
        delta: The policy's δ per unit.
        rule: The filter rule (:mod:`personal.privacy.rules`): ``"renyi"`` (default; the Rényi
            filter over several orders) or ``"gaussian"`` (the Gaussian-DP filter, whose
            per-unit curves are the unsubsampled ``α·μ²/2``).
    """

    def __init__(self, *, epsilon: float, delta: float, rule: str | FilterRule = RENYI) -> None:
        if not (_is_real(epsilon) and _is_real(delta)):
            raise PrivacyParameterError(
                f"epsilon and delta must be numbers; got {epsilon!r}, {delta!r}."
            )
        self._epsilon = check_epsilon(epsilon)
        self._delta = check_probability("delta", delta)
        self._rule = rule_of(rule)
        self._index: dict[UnitId, int] = {}
        self._buf = np.zeros((0, len(ORDERS)))  # (capacity, k); rows in _index order
        self._history: list[tuple[Charge, tuple[UnitId, ...]]] = []

    @property
    def _rdp(self) -> NDArray[np.float64]:
        """The (n_units, k) table of accumulated RDP (a view into the growable buffer)."""
        return self._buf[: len(self._index)]

    @property
    def epsilon(self) -> float:
        """The lifetime ε of every unit."""
        return self._epsilon

    @property
    def delta(self) -> float:
        """The lifetime δ of every unit."""
        return self._delta

    @property
    def rule(self) -> FilterRule:
        """The filter rule (how rounds are charged and units' ε computed)."""
        return self._rule

    @property
    def units(self) -> tuple[UnitId, ...]:
        """Every unit charged at least once (a never-charged unit has zero RDP)."""
        return tuple(self._index)

    @property
    def history(self) -> tuple[tuple[Charge, tuple[UnitId, ...]], ...]:
        """Every charge recorded, in order, with the units it was charged to."""
        return tuple(self._history)

    def __len__(self) -> int:
        """Number of rounds charged so far."""
        return len(self._history)

    def __repr__(self) -> str:
        return (
            f"RenyiFilter(epsilon={self._epsilon}, delta={self._delta}, "
            f"rule={self._rule.name!r}, rounds={len(self._history)}, units={len(self._index)})"
        )

    def rdp_of(self, unit: UnitId) -> NDArray[np.float64]:
        """A copy of the unit's accumulated curve under :attr:`rule` (zeros if never charged)."""
        row = self._index.get(_check_unit(unit))
        return np.zeros(len(ORDERS)) if row is None else self._rdp[row].copy()

    def epsilon_of(self, unit: UnitId) -> float:
        """The unit's filter-ε so far (<= :attr:`epsilon`, always; 0 if never charged)."""
        return float(self._rule.epsilon(self.rdp_of(unit), delta=self._delta))

    def epsilons(self) -> dict[UnitId, float]:
        """Filter-ε of every charged unit (vectorised)."""
        if not self._index:
            return {}
        eps = np.atleast_1d(self._rule.epsilon(self._rdp, delta=self._delta))
        return dict(zip(self._index, map(float, eps), strict=True))

    def _rows(self, units: Iterable[object]) -> tuple[tuple[UnitId, ...], NDArray[np.int64]]:
        """The candidate ids (checked, distinct) and their rows in the table (-1: new)."""
        if isinstance(units, str | bytes) or not isinstance(units, Iterable):
            raise PrivacyParameterError(
                f"units must be a collection of unit ids; got {type(units).__name__}."
            )
        raw = tuple(units)
        if not set(map(type, raw)) <= {str, int}:
            bad = next(u for u in raw if type(u) not in (str, int))
            raise PrivacyParameterError(f"unit ids must be str or int; got {bad!r}.")
        ids = cast(tuple[UnitId, ...], raw)
        if len(set(ids)) != len(ids):
            raise PrivacyParameterError("the same unit is listed twice in one round.")
        get = self._index.get
        return ids, np.fromiter((get(u, -1) for u in ids), dtype=np.int64, count=len(ids))

    def _current(self, rows: NDArray[np.int64]) -> NDArray[np.float64]:
        current = np.zeros((len(rows), len(ORDERS)))  # (n, k); zeros for never-charged units
        known = rows >= 0
        current[known] = self._rdp[rows[known]]
        return current

    def select(
        self, charge: Charge, units: Iterable[UnitId], *, max_share: float | None = None
    ) -> Selection:
        """Split candidate ``units`` into those that fit ``charge`` and those excluded.

        Pure: nothing is recorded. The decision depends only on each unit's past charges and
        the round's public parameters -- never on the unit's data. Order is preserved.
        ``max_share``: also exclude units this charge would cost more than that share of their
        remaining budget (see :func:`eligible_mask`).
        """
        charge = _check_charge(charge)
        ids, rows = self._rows(units)
        mask = self._rule.fits(
            self._current(rows),
            self._rule.charge_curve(charge),
            epsilon=self._epsilon,
            delta=self._delta,
            max_share=max_share,
        ).tolist()
        eligible = tuple(u for u, ok in zip(ids, mask, strict=True) if ok)
        excluded = tuple(u for u, ok in zip(ids, mask, strict=True) if not ok)
        return Selection(charge=charge, eligible=eligible, excluded=excluded)

    def charge(self, charge: Charge, units: Iterable[UnitId]) -> None:
        """Record ``charge`` against every unit in ``units`` (all-or-nothing).

        Call it *before* the round reads private data or releases anything, with exactly the
        units the round may sample (``select(...).eligible``).

        Raises:
            UnitOverBudget: Some unit would exceed the lifetime budget (charge only
                ``select(...).eligible``); nothing is recorded then.
            PrivacyParameterError: ``charge`` is not a :class:`Charge`, a unit id is not a str
                or int, or a unit is listed twice; nothing is recorded then.
        """
        charge = _check_charge(charge)
        ids, rows = self._rows(units)
        step = self._rule.charge_curve(charge)
        fits = self._rule.fits(self._current(rows), step, epsilon=self._epsilon, delta=self._delta)
        if not fits.all():
            bad = [u for u, ok in zip(ids, fits, strict=True) if not ok]
            raise UnitOverBudget(
                f"{len(bad)} unit(s) (e.g. {bad[:3]!r}) would exceed the lifetime budget "
                f"(ε={self._epsilon}, δ={self._delta}); charge only select(...).eligible "
                "(nothing was charged)."
            )
        self._apply(charge, ids, rows, step)

    def _apply(
        self,
        charge: Charge,
        ids: tuple[UnitId, ...],
        rows: NDArray[np.int64],
        step: NDArray[np.float64],
    ) -> None:
        new = np.flatnonzero(rows < 0)
        if len(new):  # append rows for first-time units, in the order they are listed
            base = len(self._index)
            if base + len(new) > len(self._buf):  # grow geometrically: O(1) amortised per unit
                grown = np.zeros((max(2 * len(self._buf), base + len(new), 64), len(ORDERS)))
                grown[:base] = self._buf[:base]
                self._buf = grown
            self._index.update((ids[i], base + j) for j, i in enumerate(new.tolist()))
            rows = rows.copy()
            rows[new] = np.arange(base, base + len(new))
        self._buf[rows] += step
        self._history.append((charge, ids))

    # --- plain-data state (opacus style) -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: budget, grid, every unit's RDP and the full charge history."""
        return {
            "mechanism": _MECHANISM,
            "version": _VERSION,
            "orders": list(ORDERS),
            "epsilon": self._epsilon,
            "delta": self._delta,
            "filter": self._rule.name,
            "units": [[u, self._rdp[i].tolist()] for u, i in self._index.items()],
            "history": [{**c.to_dict(), "units": list(ids)} for c, ids in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this filter's state with ``state`` after validating it completely.

        Checks the mechanism, version, order grid, budget and filter rule (equal to this
        filter's; a state without ``filter`` is a Rényi filter's); replays
        the history (every charge re-validated, its RDP recomputed); requires the stored unit
        table to list exactly the charged units, each with the replayed RDP; requires every
        unit within budget. The replayed values, never the stored ones, become the state.

        Raises:
            PrivacyStateError: Anything malformed or inconsistent; this filter is unchanged.
        """
        _check_header(state, epsilon=self._epsilon, delta=self._delta, rule=self._rule.name)
        replay = RenyiFilter(epsilon=self._epsilon, delta=self._delta, rule=self._rule)
        entries = state["history"]
        if not isinstance(entries, list | tuple):
            raise PrivacyStateError("filter history must be a list of charges.")
        for n, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("units"), list | tuple):
                raise PrivacyStateError(f"history entry {n} is not a charge with a unit list.")
            charge = Charge.from_dict(entry)
            try:
                ids, rows = replay._rows(entry["units"])
            except PrivacyParameterError as exc:
                raise PrivacyStateError(f"history entry {n}: {exc}") from exc
            replay._apply(charge, ids, rows, replay._rule.charge_curve(charge))
        _check_units(state["units"], replay)
        self._index, self._buf, self._history = replay._index, replay._buf, replay._history

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> RenyiFilter:
        """A new filter with the budget stored in ``state`` (validated as in load_state_dict)."""
        if not isinstance(state, Mapping):
            raise PrivacyStateError("filter state must be a mapping (from RenyiFilter.state_dict).")
        try:
            rf = cls(
                epsilon=state["epsilon"], delta=state["delta"], rule=state.get("filter", "renyi")
            )
        except (KeyError, PrivacyParameterError) as exc:
            raise PrivacyStateError(f"state has no valid budget: {exc}") from exc
        rf.load_state_dict(state)
        return rf


def _check_header(state: object, *, epsilon: float, delta: float, rule: str) -> None:
    if not isinstance(state, Mapping):
        raise PrivacyStateError("filter state must be a mapping (from RenyiFilter.state_dict).")
    missing = _STATE_KEYS - set(state)
    if missing:
        raise PrivacyStateError(f"filter state lacks {sorted(missing)}.")
    mechanism, version = state["mechanism"], state["version"]
    if mechanism != _MECHANISM or not (type(version) is int and version == _VERSION):
        raise PrivacyStateError(
            f"state is {mechanism!r} v{version!r}; this code reads {_MECHANISM!r} v{_VERSION}."
        )
    orders = state["orders"]
    if not (
        isinstance(orders, list | tuple)
        and all(_is_real(a) for a in orders)
        and [float(a) for a in orders] == list(ORDERS)
    ):
        raise PrivacyStateError("state uses another order grid than ORDERS; it cannot be mixed.")
    eps, dlt = state["epsilon"], state["delta"]
    if not (_is_real(eps) and _is_real(dlt) and float(eps) == epsilon and float(dlt) == delta):
        raise PrivacyStateError(
            f"state budget (ε={eps!r}, δ={dlt!r}) differs from this filter's "
            f"(ε={epsilon}, δ={delta}); use RenyiFilter.from_state_dict."
        )
    stated = state.get("filter", "renyi")
    if stated != rule:
        raise PrivacyStateError(
            f"state was kept under the {stated!r} filter rule, this filter uses {rule!r}; "
            "use RenyiFilter.from_state_dict."
        )


def _check_units(units: object, replay: RenyiFilter) -> None:
    """The stored unit table must equal the replayed one, and every unit be within budget."""
    if not isinstance(units, list | tuple) or not all(
        isinstance(row, list | tuple) and len(row) == 2 for row in units
    ):
        raise PrivacyStateError("the unit table must be a list of [unit, rdp curve] pairs.")
    try:
        ids = [_check_unit(u) for u, _ in units]
        curves = [r for _, r in units]
        if not all(
            isinstance(r, list | tuple) and len(r) == len(ORDERS) and all(map(_is_real, r))
            for r in curves
        ):
            raise PrivacyParameterError(f"every RDP curve must be {len(ORDERS)} numbers")
        table = as_rdp(np.array(curves, dtype=np.float64).reshape(-1, len(ORDERS)))
    except (ValueError, PrivacyParameterError) as exc:
        raise PrivacyStateError(f"malformed unit table: {exc}") from exc
    if len(set(ids)) != len(ids) or set(ids) != set(replay._index):
        raise PrivacyStateError("the unit table does not list exactly the units in the history.")
    order = np.fromiter((replay._index[u] for u in ids), dtype=np.int64, count=len(ids))
    mismatch = ~np.isclose(table, replay._rdp[order], rtol=1e-9, atol=1e-12).all(axis=1)
    if mismatch.any():
        unit = ids[int(np.argmax(mismatch))]
        raise PrivacyStateError(f"unit {unit!r}: stored RDP differs from its charge history.")
    if ids:
        eps = np.atleast_1d(replay.rule.epsilon(replay._rdp, delta=replay.delta))
        if (eps > replay.epsilon).any():
            raise PrivacyStateError("some unit exceeds the lifetime budget in the stored state.")
