"""Assembling the audit of a ledger: verify it, replay it, check it, and head the report.

The lifetime contract the report holds rounds to -- ε, δ, the unit of privacy, the accountant
and the filter rule -- is the one the ledger's genesis binds (:attr:`Ledger.contract`), never a
policy file or a settings row: a policy passed in is only compared with it
(``policy_matches_ledger``).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from personal.errors import PersonalError
from personal.privacy.audit.checks import compliance_checks, rules_of
from personal.privacy.audit.replay import (
    accountant_view,
    replay_charges,
    round_epsilon,
    round_outcomes,
)
from personal.privacy.audit.schema import Audit, AuditRound
from personal.privacy.contract import Contract
from personal.privacy.rules import rule_of
from personal.store.memory import memory_audit


def build_audit(ledger: Any, *, policy: Any = None, policy_given: bool = False) -> Audit:
    """The audit of ``ledger`` (a :class:`~personal.privacy.ledger.Ledger`).

    Verifies the chain and its anchor (every round against the lifetime contract its genesis
    binds), replays every charge from the decoded rounds, and runs the compliance checks.
    ``policy`` (the store's recorded policy, or one the reviewer names) supplies the clip norm
    to check; with ``policy_given`` its contract must also equal the ledger's. A ledger that
    fails verification still yields a report (``ledger_ok`` false) so a reviewer sees what is
    wrong.
    """
    report = ledger.verify()
    contract = ledger.contract
    rule = rule_of(contract.filter)
    try:
        decoded = ledger.rounds(with_units=True)
    except PersonalError as exc:  # tampered beyond decoding: report, do not crash
        decoded, problems = [], [*report.problems, str(exc)]
    else:
        problems = list(report.problems)
    outcomes = round_outcomes(decoded)
    rounds = [
        AuditRound(
            round_id=r.round_id,
            time=r.time,
            purpose=r.purpose,
            noise_multiplier=r.noise_multiplier or 0.0,
            sample_rate=r.sample_rate or 0.0,
            steps=r.steps if r.charged else 0,
            clip_norm=r.clip_norm,
            eligible_units=r.eligible_units,
            status=outcomes[r.round_id]["status"],
            accountant=r.accountant,
            policy_digest=r.policy_digest,
            base_fingerprint=r.base_fingerprint,
            adapter_version=None if r.adapter_version is None else int(r.adapter_version),
            reason=r.reason,
            epsilon=round_epsilon(r, contract.delta, rule),
            gate=outcomes[r.round_id]["gate"],
            adapter_produced=outcomes[r.round_id]["adapter_produced"],
            validation_round=outcomes[r.round_id]["validation_round"],
        )
        for r in decoded
    ]
    eligible = {r.round_id: list(r.units or ()) for r in decoded if r.charged}
    unit_eps, timeline = replay_charges(
        rounds, eligible, epsilon=contract.epsilon, delta=contract.delta, rule=rule
    )
    cached = {str(u): float(e) for u, e in ledger.epsilons().items()} if report.ok else {}
    drift = [
        u
        for u, e in cached.items()
        if not math.isclose(e, unit_eps.get(u, 0.0), rel_tol=1e-9, abs_tol=1e-12)
    ]
    if drift:
        problems.append(f"{len(drift)} units' cached ε differ from the replayed charges")
    audit = Audit(
        unit_of_privacy=contract.unit,
        accountant=contract.accountant,
        delta=contract.delta,
        lifetime_epsilon=contract.epsilon,
        rounds=rounds,
        unit_epsilons=unit_eps,
        epsilon_timeline=timeline,
        ledger_ok=report.ok and not drift,
        ledger_problems=problems,
        filter=contract.filter,
    )
    audit.accountant_epsilon_max, audit.accountant_note = accountant_view(
        rounds, eligible, unit_eps, mechanism=contract.accountant, delta=contract.delta
    )
    audit.unit_rounds = {}
    for round_id, units in eligible.items():
        for unit in units:
            audit.unit_rounds.setdefault(str(unit), []).append(round_id)
    audit.checks = compliance_checks(
        rounds,
        unit_eps,
        lifetime_epsilon=contract.epsilon,
        rules=rules_of(policy) if policy is not None else None,
        policy_digest=policy.digest() if policy is not None else None,
        policy_contract=Contract.of_policy(policy) if policy_given else None,
        contract=contract,
    )
    audit.header = {
        "policy": policy.name if policy is not None else None,
        "policy_digest": policy.digest() if policy is not None else None,
        "base_fingerprint": next(
            (r.base_fingerprint for r in reversed(rounds) if r.base_fingerprint), None
        ),
        "store_id": getattr(getattr(ledger, "store", None), "store_id", None),
        "memory": memory_audit(getattr(ledger, "store", None)),  # docs/memory.md
        "report_time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return audit
