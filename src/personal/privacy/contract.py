"""A store's lifetime contract -- (ε, δ, unit, accountant, filter) -- as its ledger binds it.

The contract is what a privacy reviewer signs off on: no unit (an interaction, a session or a
day) loses more than ε over the device's whole life, at δ, as the accountant reports it. It
lives in the privacy ledger, not in a settings row: the genesis entry carries it, hash-chained,
sealed and anchored like every charge, so deleting or editing anything outside the chain cannot
change it. Before the ledger records its first round the contract may be replaced (by a
``contract`` entry: nothing was spent under the old one); afterwards it is fixed for good.

Ledgers written before the contract was bound (genesis format 1: ε and δ only) are completed at
their first open by a ``contract`` entry that adds the unit and accountant of the store's sealed
policy (or, if that row is gone, of the opening policy); ε and δ always stay the genesis's.

The filter rule (``"renyi"`` or ``"gaussian"``, :mod:`personal.privacy.rules`) joined the
contract with genesis format 3. A genesis or ``contract`` entry that does not state it (formats
1 and 2: every store written before) binds ``"renyi"``, the only rule there was: no entry is
appended for it, and such a contract is complete without it.

Units must have the shape their kind promises, so that the audit's "unit of privacy: day" is
true of what was charged (:func:`fits_unit`): under ``day`` every unit id is the UTC date of its
interactions (the log derives it from ``ts``); under ``session`` no unit id is the
one-per-interaction form ``interaction:<id>`` the log generates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from personal.errors import PrivacyParameterError, UnitOfPrivacyMismatch
from personal.privacy.rules import FILTERS

UNITS = ("interaction", "session", "day")
ACCOUNTANTS = ("rdp", "prv")
FIELDS = ("epsilon", "delta", "unit", "accountant", "filter")
#: The fields an entry must have stated for the contract to be complete (``filter`` defaults).
REQUIRED = ("epsilon", "delta", "unit", "accountant")
DEFAULTS: dict[str, Any] = {"unit": "interaction", "accountant": "rdp", "filter": "renyi"}
# Genesis body format: 1 held ε and δ only; 2 the contract without the filter rule (renyi);
# 3 the whole contract.
FORMAT = 3

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_AUTO = re.compile(r"interaction:\d+\Z")


@dataclass(frozen=True)
class Contract:
    """The lifetime guarantee of one store.

    Attributes:
        epsilon: ε each unit may lose over the device's life (the filter's bound).
        delta: δ of that guarantee.
        unit: ``"interaction"``, ``"session"`` or ``"day"``.
        accountant: ``"rdp"`` or ``"prv"`` (what reports use to compose a unit's rounds as a
            fixed schedule, a second opinion; the per-unit filter is ``filter``).
        filter: ``"renyi"`` (the Rényi filter, default) or ``"gaussian"`` (the Gaussian-DP
            filter): the rule that admits units and computes their lifetime ε
            (:mod:`personal.privacy.rules`).

    Raises:
        PrivacyParameterError: A value out of range or of the wrong kind.
    """

    epsilon: float
    delta: float
    unit: str = "interaction"
    accountant: str = "rdp"
    filter: str = "renyi"

    def __post_init__(self) -> None:
        eps, delta = _real(self.epsilon), _real(self.delta)
        if not (math.isfinite(eps) and eps > 0):
            raise PrivacyParameterError(
                f"the lifetime ε must be finite and > 0; got {self.epsilon!r}."
            )
        if not 0 < delta < 1:
            raise PrivacyParameterError(f"δ must be in (0, 1); got {self.delta!r}.")
        if self.unit not in UNITS:
            raise PrivacyParameterError(
                f"the unit of privacy must be one of {UNITS}; got {self.unit!r}."
            )
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyParameterError(
                f"the accountant must be one of {ACCOUNTANTS}; got {self.accountant!r}."
            )
        if self.filter not in FILTERS:
            raise PrivacyParameterError(
                f"the filter rule must be one of {FILTERS}; got {self.filter!r}."
            )
        object.__setattr__(self, "epsilon", eps)
        object.__setattr__(self, "delta", delta)

    @classmethod
    def of_policy(cls, policy: Any) -> Contract:
        """The contract a :class:`~personal.policy.Policy` states in its ``[privacy]`` section."""
        p = policy.privacy
        return cls(p.lifetime_epsilon, p.delta, p.unit, p.accountant, p.filter)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Contract:
        """A contract from ``{epsilon, delta, unit?, accountant?, filter?}`` (missing ones:
        defaults)."""
        try:
            return cls(**{**DEFAULTS, **{k: fields[k] for k in FIELDS if k in fields}})
        except TypeError as exc:
            raise PrivacyParameterError(f"malformed lifetime contract: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """``{"epsilon", "delta", "unit", "accountant", "filter"}`` (plain JSON data)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for messages: ``ε=1, δ=1e-08, unit=interaction, accountant=rdp,
        filter=renyi``."""
        return (
            f"ε={self.epsilon:g}, δ={self.delta:g}, unit={self.unit}, accountant={self.accountant}"
            f", filter={self.filter}"
        )

    def differences(self, requested: Mapping[str, Any]) -> list[str]:
        """``"name: bound -> requested"`` for every requested field that differs."""
        mine = self.to_dict()
        return [
            f"{k}: {mine[k]!r} -> {requested[k]!r}"
            for k in FIELDS
            if k in requested and requested[k] is not None and requested[k] != mine[k]
        ]


def _real(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PrivacyParameterError(f"ε and δ must be numbers; got {value!r}.")
    return float(value)


def bound_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The contract fields a genesis or ``contract`` entry body states (some may be absent)."""
    return {k: body[k] for k in FIELDS if k in body}


def fold(bodies: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The contract fields in force after the genesis and ``contract`` bodies, in chain order."""
    bound: dict[str, Any] = {}
    for body in bodies:
        bound.update(bound_fields(body))
    return bound


def complete(bound: Mapping[str, Any]) -> bool:
    """Whether ``bound`` states every required field of a contract (``filter`` may be absent:
    a contract bound before the filter rule was part of it is a Rényi filter's)."""
    return all(k in bound for k in REQUIRED)


def fits_unit(unit: str, unit_id: object) -> bool:
    """Whether a charged unit id has the shape the unit of privacy promises (module docstring)."""
    if unit == "day":
        return isinstance(unit_id, str) and bool(_DAY.match(unit_id))
    if unit == "session":
        return not (isinstance(unit_id, str) and _AUTO.match(unit_id))
    return True


def misfits(unit: str, unit_ids: Iterable[object]) -> list[object]:
    """The unit ids of ``unit_ids`` that do not fit ``unit`` (see :func:`fits_unit`)."""
    return [u for u in unit_ids if not fits_unit(unit, u)]


def unit_rule(unit: str) -> str:
    """What a unit id must look like under ``unit``, in words (for messages)."""
    if unit == "day":
        return "the UTC date of its interactions (YYYY-MM-DD), which the log derives from ts"
    if unit == "session":
        return "a session id the app passes as unit (never the log's interaction:<id>)"
    return "any id (one interaction, or a coarser group the app chose)"


def check_round(contract: Contract, units: Iterable[object], accountant: str) -> None:
    """Refuse a round whose accountant or unit ids contradict ``contract`` (before charging).

    Raises:
        PrivacyParameterError: Another accountant than the contract's.
        UnitOfPrivacyMismatch: A unit id that does not fit the unit of privacy.
    """
    if accountant != contract.accountant:
        raise PrivacyParameterError(
            f"the round names the {accountant!r} accountant, but the ledger's lifetime "
            f"contract uses {contract.accountant!r}: run it under the store's policy "
            "(nothing was charged)"
        )
    bad = misfits(contract.unit, units)
    if bad:
        raise UnitOfPrivacyMismatch(
            f"{len(bad)} unit(s) (e.g. {bad[:3]!r}) do not fit this store's unit of privacy "
            f"({contract.unit}): each unit id must be {unit_rule(contract.unit)}. Nothing was "
            "charged; log the interactions through this store's policy"
        )
