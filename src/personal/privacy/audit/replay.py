"""What the audit recomputes from the ledger's decoded rounds instead of trusting its caches.

Each round's outcome (gate, adapter produced, status), each round's own ε, every unit's ε (every
charge replayed through the filter rule the contract binds, :mod:`personal.privacy.rules`), and
the most-charged unit's ε under the contract's opacus accountant as a second opinion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from personal.errors import PersonalError
from personal.privacy.audit.schema import TRAINING_PURPOSES, AuditRound
from personal.privacy.rules import RENYI, FilterRule, rule_of

import numpy as np


def round_outcomes(decoded: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """Per round id: its audit status, gate outcome, produced adapter and validation round.

    A training round's finish entry records the gates' outcome and the adapter version it
    activated (``gate``, ``adapter_version``). Ledgers written before that recorded the gate
    only on the held-out validation round just before the training round; that is read then.
    A refused round shows ``refused``, one without a finish entry ``interrupted``.
    """
    out: dict[int, dict[str, Any]] = {}
    previous = None
    for r in decoded:
        summary = r.summary if isinstance(r.summary, dict) else {}
        gate, produced, validation = None, None, summary.get("validation_round")
        if r.purpose in TRAINING_PURPOSES:
            if "gate" in summary:
                gate = summary["gate"]
                produced = summary.get("adapter_version")
            elif (
                previous is not None
                and previous.purpose == "validation"
                and isinstance(previous.summary, dict)
                and "passed" in previous.summary
            ):
                gate = "passed" if previous.summary["passed"] else "refused"
                validation = previous.round_id
        elif r.purpose == "validation" and "passed" in summary:
            gate = "passed" if summary["passed"] else "refused"
        elif r.purpose == "migration" and "gate_passed" in summary:
            gate = "passed" if summary["gate_passed"] else "refused"
        status = r.status
        if status == "charged":
            status = "interrupted"
        elif status == "completed" and gate == "refused" and r.purpose != "validation":
            status = "refused"
        out[r.round_id] = {
            "status": status,
            "gate": gate,
            "adapter_produced": None if produced is None else int(produced),
            "validation_round": None if validation is None else int(validation),
        }
        previous = r
    return out


def replay_charges(
    rounds: Sequence[AuditRound],
    eligible: Mapping[int, Sequence[str]],
    *,
    epsilon: float,
    delta: float,
    rule: str | FilterRule = RENYI,
) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Per-unit ε and the running maximum after each round, from the rounds alone.

    Each round's curve under ``rule`` (the contract's filter rule) is summed directly (no
    admission), so a tampered ledger that over-charged a unit is *reported* with its true total
    instead of being refused half-way.
    """
    del epsilon  # the lifetime budget is checked by the caller, not enforced here
    rule = rule_of(rule)
    totals: dict[str, np.ndarray] = {}
    timeline: list[tuple[str, float]] = []
    worst = 0.0
    for r in rounds:
        units = list(eligible.get(r.round_id, ()))
        if units and r.steps > 0 and r.noise_multiplier > 0:
            charge = rule.charge_curve(r)
            for unit in units:
                key = str(unit)
                totals[key] = totals[key] + charge if key in totals else charge.copy()
            now = rule.epsilon(np.stack([totals[str(u)] for u in units]), delta=delta)
            worst = max(worst, float(np.max(now)))
        timeline.append((r.time, worst))
    if not totals:
        return {}, timeline
    eps = np.atleast_1d(rule.epsilon(np.stack(list(totals.values())), delta=delta))
    return dict(zip(totals, map(float, eps), strict=True)), timeline


def accountant_view(
    rounds: Sequence[AuditRound],
    eligible: Mapping[int, Sequence[str]],
    unit_epsilons: Mapping[str, float],
    *,
    mechanism: str,
    delta: float,
) -> tuple[float | None, str]:
    """ε of the most-charged unit under the opacus accountant ``mechanism`` (rdp or prv)."""
    if not unit_epsilons:
        return None, "no unit charged"
    from personal.privacy.accountant import Accountant

    worst = max(unit_epsilons, key=lambda u: unit_epsilons[u])
    accountant = Accountant(mechanism)
    for r in rounds:
        if r.steps > 0 and r.noise_multiplier > 0 and worst in set(eligible.get(r.round_id, ())):
            accountant.step(
                noise_multiplier=r.noise_multiplier, sample_rate=r.sample_rate, steps=r.steps
            )
    try:
        value = accountant.get_epsilon(delta=delta)
    except PersonalError as exc:  # e.g. PRV cannot evaluate this schedule
        return None, f"{mechanism} not applicable: {exc}"
    return float(value), f"unit {worst!r} under opacus {mechanism} at δ={delta:g}"


def round_epsilon(r: Any, delta: float, rule: FilterRule) -> float | None:
    """What round ``r`` alone cost each of its eligible units (None: it charged nothing)."""
    if not (r.charged and r.steps > 0 and r.noise_multiplier and r.sample_rate is not None):
        return None
    return float(rule.epsilon(rule.charge_curve(r), delta=delta))
