"""The privacy audit a reviewer reads: what was charged, to whom, and whether it all holds.

:func:`build_audit` turns the ledger's verified rounds into an :class:`Audit` -- plain data whose
:meth:`Audit.to_json` is the documented JSON schema (docs/privacy.md, "Audit report") and whose
:func:`personal.privacy.audit_html.render_html` is a self-contained page. The per-unit ε are
recomputed here from the rounds (a fresh :class:`~personal.privacy.filter.RenyiFilter` replays
every charge), so the report checks the ledger's own cached totals instead of trusting them.

The lifetime contract the report holds rounds to -- ε, δ, the unit of privacy and the
accountant -- is the one the ledger's genesis binds (:attr:`Ledger.contract`), never a policy
file or a settings row: a policy passed in is only compared with it (``policy_matches_ledger``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from personal.errors import PersonalError
from personal.privacy.contract import Contract
from personal.privacy.rdp import filter_epsilon, sgm_rdp

import numpy as np

SCHEMA_VERSION = 1
SAMPLER = "poisson (CSPRNG coins, rate q per unit per step)"


@dataclass(frozen=True)
class AuditRound:
    """One ledger round as the audit shows it."""

    round_id: int
    time: str
    purpose: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float | None
    eligible_units: int
    status: str
    accountant: str | None = None
    policy_digest: str | None = None
    base_fingerprint: str | None = None
    adapter_version: int | None = None
    reason: str | None = None
    epsilon: float | None = None  # what this round alone cost each eligible unit (filter ε)


@dataclass(frozen=True)
class Check:
    """One compliance check: its name, whether it passed, and why."""

    name: str
    ok: bool
    detail: str


@dataclass
class Audit:
    """The audit report (see :meth:`to_json` for the schema)."""

    unit_of_privacy: str
    accountant: str
    delta: float
    lifetime_epsilon: float
    rounds: list[AuditRound]
    unit_epsilons: dict[str, float]
    epsilon_timeline: list[tuple[str, float]]
    ledger_ok: bool
    ledger_problems: list[str]
    checks: list[Check] = field(default_factory=list)
    accountant_epsilon_max: float | None = None
    accountant_note: str = ""
    contract_source: str = "ledger genesis"
    canary_audit: dict[str, Any] | None = None  # the empirical audit's result, when run

    @property
    def over_budget(self) -> list[str]:
        """Units whose ε exceeds the lifetime budget (must be empty)."""
        return sorted(u for u, e in self.unit_epsilons.items() if e > self.lifetime_epsilon)

    @property
    def ok(self) -> bool:
        """The ledger verifies, no unit is over budget, every compliance check passes, and the
        canary audit (when run) passed."""
        canaries_ok = self.canary_audit is None or bool(self.canary_audit.get("passed"))
        return (
            self.ledger_ok and not self.over_budget and all(c.ok for c in self.checks)
            and canaries_ok
        )  # fmt: skip

    def unit_summary(self, bins: int = 10) -> dict[str, Any]:
        """Count, min, median, max and a histogram of per-unit ε over [0, lifetime ε]."""
        values = sorted(self.unit_epsilons.values())
        edges = np.linspace(
            0.0, max(self.lifetime_epsilon, values[-1] if values else 0.0), bins + 1
        )
        counts = np.histogram(values, bins=edges)[0].tolist() if values else [0] * bins
        return {
            "count": len(values),
            "epsilon_min": values[0] if values else 0.0,
            "epsilon_median": statistics.median(values) if values else 0.0,
            "epsilon_max": values[-1] if values else 0.0,
            "over_budget": len(self.over_budget),
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts},
        }

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; the schema is documented in docs/privacy.md."""
        return {
            "schema_version": SCHEMA_VERSION,
            "ok": self.ok,
            "unit_of_privacy": self.unit_of_privacy,
            "sampler": SAMPLER,
            "accountant": self.accountant,
            "delta": self.delta,
            "lifetime_epsilon": self.lifetime_epsilon,
            "contract_source": self.contract_source,
            "rounds": [{k: v for k, v in asdict(r).items() if v is not None} for r in self.rounds],
            "units": {
                **self.unit_summary(),
                # The most-charged unit under the policy's accountant (opacus), composing its
                # rounds as a fixed schedule: a second opinion next to the filter's ε.
                "accountant_epsilon_max": self.accountant_epsilon_max,
                "accountant_note": self.accountant_note,
            },
            "epsilon_over_time": [{"time": t, "epsilon_max": e} for t, e in self.epsilon_timeline],
            "ledger_ok": self.ledger_ok,
            "ledger_problems": list(self.ledger_problems),
            "compliance": [asdict(c) for c in self.checks],
            **({"canary_audit": self.canary_audit} if self.canary_audit is not None else {}),
        }


def replay_charges(
    rounds: Sequence[AuditRound],
    eligible: Mapping[int, Sequence[str]],
    *,
    epsilon: float,
    delta: float,
) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Per-unit ε and the running maximum after each round, from the rounds alone.

    RDP is summed directly (no filter), so a tampered ledger that over-charged a unit is
    *reported* with its true total instead of being refused half-way.
    """
    del epsilon  # the lifetime budget is checked by the caller, not enforced here
    totals: dict[str, np.ndarray] = {}
    timeline: list[tuple[str, float]] = []
    worst = 0.0
    for r in rounds:
        units = list(eligible.get(r.round_id, ()))
        if units and r.steps > 0 and r.noise_multiplier > 0:
            charge = sgm_rdp(
                sample_rate=r.sample_rate, noise_multiplier=r.noise_multiplier, steps=r.steps
            )
            for unit in units:
                key = str(unit)
                totals[key] = totals[key] + charge if key in totals else charge.copy()
                worst = max(worst, float(filter_epsilon(totals[key], delta=delta)))
        timeline.append((r.time, worst))
    return {u: float(filter_epsilon(v, delta=delta)) for u, v in totals.items()}, timeline


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


def compliance_checks(
    rounds: Sequence[AuditRound],
    unit_epsilons: Mapping[str, float],
    *,
    lifetime_epsilon: float,
    clip_norm: float | None,
    policy_digest: str | None,
    policy_contract: Any = None,
    contract: Any = None,
) -> list[Check]:
    """What a reviewer checks against the policy; each check says what it found.

    ``policy_contract`` and ``contract``: the lifetime contract a policy states and the one the
    ledger binds; when both are given they must be equal (``policy_matches_ledger``).
    """
    over = [u for u, e in unit_epsilons.items() if e > lifetime_epsilon]
    checks = [
        Check(
            "units_within_budget",
            not over,
            f"{len(over)} of {len(unit_epsilons)} units over the lifetime ε={lifetime_epsilon}"
            if over
            else f"all {len(unit_epsilons)} units within ε={lifetime_epsilon}",
        ),
    ]
    noisy = [r for r in rounds if r.steps > 0]
    bad_sigma = [r.round_id for r in noisy if not (r.noise_multiplier > 0)]
    checks.append(
        Check(
            "every_round_noised",
            not bad_sigma,
            f"rounds without noise: {bad_sigma}" if bad_sigma else "σ > 0 in every round",
        )
    )
    if clip_norm is not None:
        off = [r.round_id for r in noisy if r.clip_norm is not None and r.clip_norm != clip_norm]
        checks.append(
            Check(
                "clip_norm_matches_policy",
                not off,
                f"rounds with another clip norm than {clip_norm}: {off}"
                if off
                else f"C = {clip_norm} in every round",
            )
        )
    if policy_digest is not None:
        other = sorted({r.policy_digest for r in rounds if r.policy_digest} - {policy_digest})
        checks.append(
            Check(
                "policy_unchanged",
                True,  # a policy may change over a device's life; the budget is what binds
                f"rounds under {len(other)} earlier policies" if other else "one policy throughout",
            )
        )
    if policy_contract is not None and contract is not None:
        diffs = contract.differences(policy_contract.to_dict())
        checks.append(
            Check(
                "policy_matches_ledger",
                not diffs,
                f"the policy differs from the ledger's lifetime contract ({', '.join(diffs)}); "
                "the audit holds rounds to the ledger's"
                if diffs
                else f"the policy states the ledger's contract ({contract.describe()})",
            )
        )
    aborted = [r.round_id for r in rounds if r.status == "aborted"]
    checks.append(
        Check(
            "aborted_rounds_charged",
            True,
            f"aborted rounds (charged, never refunded): {aborted}" if aborted else "none aborted",
        )
    )
    return checks


def _round_epsilon(r: Any, delta: float) -> float | None:
    if not (r.charged and r.steps > 0 and r.noise_multiplier and r.sample_rate is not None):
        return None
    step = sgm_rdp(sample_rate=r.sample_rate, noise_multiplier=r.noise_multiplier, steps=r.steps)
    return float(filter_epsilon(step, delta=delta))


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
    try:
        decoded = ledger.rounds(with_units=True)
    except PersonalError as exc:  # tampered beyond decoding: report, do not crash
        decoded, problems = [], [*report.problems, str(exc)]
    else:
        problems = list(report.problems)
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
            status=r.status,
            accountant=r.accountant,
            policy_digest=r.policy_digest,
            base_fingerprint=r.base_fingerprint,
            adapter_version=None if r.adapter_version is None else int(r.adapter_version),
            reason=r.reason,
            epsilon=_round_epsilon(r, contract.delta),
        )
        for r in decoded
    ]
    eligible = {r.round_id: list(r.units or ()) for r in decoded if r.charged}
    unit_eps, timeline = replay_charges(
        rounds, eligible, epsilon=contract.epsilon, delta=contract.delta
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
    )
    audit.accountant_epsilon_max, audit.accountant_note = accountant_view(
        rounds, eligible, unit_eps, mechanism=contract.accountant, delta=contract.delta
    )
    audit.checks = compliance_checks(
        rounds, unit_eps, lifetime_epsilon=contract.epsilon,
        clip_norm=policy.privacy.clip_norm if policy is not None else None,
        policy_digest=policy.digest() if policy is not None else None,
        policy_contract=Contract.of_policy(policy) if policy_given else None, contract=contract,
    )  # fmt: skip
    return audit
