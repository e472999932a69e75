"""The privacy audit a reviewer reads: what was charged, to whom, and whether it all holds.

:func:`build_audit` turns the ledger's verified rounds into an :class:`Audit` -- plain data whose
:meth:`Audit.to_json` is the documented JSON schema (docs/privacy.md, "Audit report") and whose
:func:`personal.privacy.audit_html.render_html` is a self-contained page. The per-unit ε are
recomputed here from the rounds (every charge replayed through the filter rule the contract
binds, :mod:`personal.privacy.rules`), so the report checks the ledger's own cached totals
instead of trusting them.

The lifetime contract the report holds rounds to -- ε, δ, the unit of privacy, the accountant
and the filter rule -- is the one the ledger's genesis binds (:attr:`Ledger.contract`), never a
policy file or a settings row: a policy passed in is only compared with it
(``policy_matches_ledger``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from personal.errors import PersonalError
from personal.privacy.contract import Contract
from personal.privacy.rdp import ORDERS
from personal.privacy.rules import RENYI, FilterRule, rule_of
from personal.store.memory import memory_audit

import numpy as np

SCHEMA_VERSION = 1
SAMPLER = "poisson (CSPRNG coins, rate q per unit per step)"
#: What each filter rule is, in one sentence (the report states the one that bound the store).
FILTER_NOTES = {
    "renyi": (
        "Rényi filter over the rdp_orders (Feldman & Zrnic 2021; Lécuyer 2021): each round "
        "charges the RDP of the Poisson-subsampled Gaussian; a unit's ε is the Balle et al. "
        "conversion at δ/len(rdp_orders)."
    ),
    "gaussian": (
        "Gaussian-DP filter (Smith & Thakurta 2022; Koskela, Tobaben & Honkela 2023): each round "
        "charges μ² = steps/σ² (Poisson sampling ignored, an upper bound); a unit's ε is the "
        "exact ε of sqrt(Σ μ²)-GDP at δ (Dong, Roth & Su 2019)."
    ),
}


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
    adapter_version: int | None = None  # the adapter active when the round ran
    reason: str | None = None
    epsilon: float | None = None  # what this round alone cost each eligible unit (filter ε)
    gate: str | None = None  # "passed" or "refused" (the round's adapter), None: no gate
    adapter_produced: int | None = None  # the version the round activated, None: none
    validation_round: int | None = None  # the held-out round that measured this one's gain


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
    filter: str = "renyi"  # the filter rule the contract binds (personal.privacy.rules)
    canary_audit: dict[str, Any] | None = None  # the empirical audit's result, when run
    unit_rounds: dict[str, list[int]] = field(default_factory=dict)  # rounds that charged it
    header: dict[str, Any] = field(default_factory=dict)  # policy, base, store, report time

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
        """Count, min, median, max and a histogram of per-unit ε (bins fitted to the data)."""
        values = sorted(self.unit_epsilons.values())
        edges = histogram_edges(values, bins)
        counts = np.histogram(values, bins=edges)[0].tolist() if values else [0] * (len(edges) - 1)
        return {
            "count": len(values),
            "epsilon_min": values[0] if values else 0.0,
            "epsilon_median": statistics.median(values) if values else 0.0,
            "epsilon_max": values[-1] if values else 0.0,
            "over_budget": len(self.over_budget),
            "histogram": {"edges": [float(e) for e in edges], "counts": counts},
        }

    def unit_detail(self) -> list[dict[str, Any]]:
        """Per unit: a pseudonym, its ε (filter) and the ids of the rounds that charged it.

        Pseudonyms number the units in the order the ledger first charged them (``u1``,
        ``u2``, ...; ties by unit id), so they reveal no content, date or session and stay the
        same in every later report of the same ledger.
        """
        first = {u: (rounds[0] if rounds else 0, u) for u, rounds in self.unit_rounds.items()}
        order = sorted(self.unit_epsilons, key=lambda u: first.get(u, (0, u)))
        return [
            {"unit": f"u{i}", "epsilon": self.unit_epsilons[u],
             "rounds": list(self.unit_rounds.get(u, []))}
            for i, u in enumerate(order, start=1)
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data; the schema is documented in docs/privacy.md."""
        return {
            "schema_version": SCHEMA_VERSION,
            "ok": self.ok,
            "unit_of_privacy": self.unit_of_privacy,
            "sampler": SAMPLER,
            "accountant": self.accountant,
            "filter": self.filter,
            "filter_note": FILTER_NOTES.get(self.filter, ""),
            "delta": self.delta,
            "lifetime_epsilon": self.lifetime_epsilon,
            "contract_source": self.contract_source,
            "rdp_orders": list(ORDERS),  # the grid of every per-unit curve (renyi: ε at δ/len)
            **self.header,
            "group_privacy": group_privacy_note(self.unit_of_privacy),
            "rounds": [_round_json(r) for r in self.rounds],
            "units": {
                **self.unit_summary(),
                "detail": self.unit_detail(),
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


GROUP_PRIVACY = {
    "interaction": (
        "The guarantee is per interaction. A fact the user repeats in k interactions is "
        "protected only at group privacy: up to about k·ε (with δ growing too), so a habit "
        'logged every day is not hidden. A policy with unit = "day" or "session" protects '
        "everything in one day or session together."
    ),
    "session": (
        "The guarantee is per session: everything logged in one session together. Content "
        "repeated over k sessions is protected at group privacy, up to about k·ε."
    ),
    "day": (
        "The guarantee is per day: everything logged on one UTC day together. Content "
        "repeated over k days is protected at group privacy, up to about k·ε."
    ),
}


def group_privacy_note(unit: str) -> str:
    """What the chosen unit of privacy does not protect (group privacy), in one paragraph."""
    return GROUP_PRIVACY.get(
        unit, f"The guarantee is per {unit}; content repeated over k units gets about k·ε."
    )


def histogram_edges(values: Sequence[float], bins: int = 10) -> list[float]:
    """Bin edges fitted to ``values``: rounded, evenly spaced, spanning min to max.

    Equal values (every unit charged the same) get one narrow bin around them instead of a
    span from 0 to the budget with one full bar.
    """
    if not values:
        return [0.0, 1.0]
    lo, hi = float(min(values)), float(max(values))
    if math.isclose(lo, hi, rel_tol=1e-9, abs_tol=1e-12):
        width = _nice(max(abs(hi) * 0.02, 1e-6))
        start = math.floor((lo - width / 2) / (width / 2) + 1e-9) * (width / 2)
        return [_round(start), _round(start + width)]
    width = _nice((hi - lo) / bins)
    start = math.floor(lo / width + 1e-9) * width
    count = max(1, math.ceil((hi - start) / width - 1e-9))
    if start + count * width <= hi:
        count += 1
    return [_round(start + i * width) for i in range(count + 1)]


def _nice(x: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is >= ``x``."""
    exponent = math.floor(math.log10(x))
    for m in (1.0, 2.0, 5.0, 10.0):
        if m * 10**exponent >= x * (1 - 1e-12):
            return m * 10**exponent
    return 10.0 ** (exponent + 1)


def _round(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (reports show no float noise)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def _round_json(r: AuditRound) -> dict[str, Any]:
    data = {k: v for k, v in asdict(r).items() if v is not None}  # exact: a reviewer recomposes
    if r.purpose in ("training", "replay", "fisher"):
        data["gate"], data["adapter_produced"] = r.gate, r.adapter_produced
    return data


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
        if r.purpose in ("training", "replay", "fisher"):
            if "gate" in summary:
                gate = summary["gate"]
                produced = summary.get("adapter_version")
            elif (
                previous is not None and previous.purpose == "validation"
                and isinstance(previous.summary, dict) and "passed" in previous.summary
            ):  # fmt: skip
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
            "status": status, "gate": gate,
            "adapter_produced": None if produced is None else int(produced),
            "validation_round": None if validation is None else int(validation),
        }  # fmt: skip
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


VALIDATION_CLIP_NORM = 1.0  # the held-out gain metric's own sensitivity (clip of each loss gap)
TRAINING_PURPOSES = ("training", "replay", "fisher")


@dataclass(frozen=True)
class RoundRules:
    """What each purpose of round must satisfy under one policy (see :func:`rules_of`)."""

    clip_norm: float
    noise_multiplier: float | None  # None: calibrated per round (only σ > 0 is checked)
    validation_noise_multiplier: float
    lifetime_epsilon: float
    name: str = ""


def rules_of(policy: Any) -> RoundRules:
    """The per-purpose rules a policy sets (training C and σ, validation σ, lifetime ε)."""
    from personal.training.gates import validation_noise_multiplier

    return RoundRules(
        clip_norm=float(policy.privacy.clip_norm),
        noise_multiplier=policy.privacy.noise_multiplier,
        validation_noise_multiplier=validation_noise_multiplier(policy),
        lifetime_epsilon=float(policy.privacy.lifetime_epsilon),
        name=str(policy.name),
    )


def _purpose_problems(r: AuditRound, rules: RoundRules) -> list[str]:
    """Why round ``r`` breaks the rule for its purpose (empty: it complies)."""
    tol = 1e-9
    if r.purpose == "migration":
        return [] if r.steps == 0 else ["a migration round charged units (it reads no record)"]
    if r.steps == 0:
        return []
    problems = []
    if r.purpose == "validation":
        if r.clip_norm is not None and not math.isclose(r.clip_norm, VALIDATION_CLIP_NORM):
            problems.append(f"validation at C={r.clip_norm:g}, not {VALIDATION_CLIP_NORM:g}")
        if r.steps != 1 or not math.isclose(r.sample_rate, 1.0):
            problems.append("validation is one release over all held-out units (q=1, 1 step)")
        if r.noise_multiplier < rules.validation_noise_multiplier * (1 - tol):
            problems.append(
                f"validation σ={r.noise_multiplier:.4g} below the policy's "
                f"{rules.validation_noise_multiplier:.4g}"
            )
        return problems
    if r.clip_norm is not None and not math.isclose(r.clip_norm, rules.clip_norm):
        problems.append(f"{r.purpose} at C={r.clip_norm:g}, not {rules.clip_norm:g}")
    if rules.noise_multiplier is not None and r.noise_multiplier < rules.noise_multiplier * (
        1 - tol
    ):
        problems.append(
            f"{r.purpose} σ={r.noise_multiplier:.4g} below the policy's {rules.noise_multiplier:g}"
        )
    return problems


def compliance_checks(
    rounds: Sequence[AuditRound],
    unit_epsilons: Mapping[str, float],
    *,
    lifetime_epsilon: float,
    rules: RoundRules | None = None,
    policy_digest: str | None = None,
    policy_contract: Any = None,
    contract: Any = None,
) -> list[Check]:
    """What a reviewer checks against the policy; each check says what it found.

    Each round is held to the rule for its purpose (``rules``): training and replay rounds to
    the policy's clip norm and σ, held-out validation rounds to their own clip norm
    (:data:`VALIDATION_CLIP_NORM`), one release and the policy's validation σ, migration rounds
    to charging nothing. ``policy_contract`` and ``contract``: the lifetime contract a policy
    states and the one the ledger binds; when both are given they must be equal
    (``policy_matches_ledger``).
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
    if rules is not None:
        if rules.lifetime_epsilon < lifetime_epsilon:
            above = [u for u, e in unit_epsilons.items() if e > rules.lifetime_epsilon]
            checks.append(
                Check(
                    "units_within_policy_budget",
                    not above,
                    f"{len(above)} of {len(unit_epsilons)} units spent more than policy "
                    f"{rules.name!r} allows (ε={rules.lifetime_epsilon:g})"
                    if above
                    else f"all units within policy {rules.name!r}'s ε={rules.lifetime_epsilon:g}",
                )
            )
        found = {r.round_id: _purpose_problems(r, rules) for r in rounds}
        bad = {i: p for i, p in found.items() if p}
        purposes = sorted({r.purpose for r in rounds})
        checks.append(
            Check(
                "rounds_follow_policy",
                not bad,
                "; ".join(f"round {i}: {', '.join(p)}" for i, p in bad.items())
                if bad
                else f"every round follows policy {rules.name!r} for its purpose "
                f"({', '.join(purposes) or 'no rounds'}): training C={rules.clip_norm:g}"
                + (f" σ≥{rules.noise_multiplier:g}" if rules.noise_multiplier else "")
                + f", validation C={VALIDATION_CLIP_NORM:g} σ≥"
                f"{rules.validation_noise_multiplier:.4g}, migration uncharged",
            )
        )
    if policy_digest is not None:
        other = sorted({r.policy_digest for r in rounds if r.policy_digest} - {policy_digest})
        checks.append(
            Check(
                "policy_unchanged",
                True,  # a policy may change over a device's life; the budget is what binds
                f"rounds under {len(other)} other policies" if other else "one policy throughout",
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
    aborted = [r.round_id for r in rounds if r.status in ("aborted", "interrupted")]
    checks.append(
        Check(
            "aborted_rounds_charged",
            True,
            f"aborted or interrupted rounds (charged, never refunded): {aborted}"
            if aborted
            else "none aborted",
        )
    )
    refused = [r.round_id for r in rounds if r.status == "refused"]
    checks.append(
        Check(
            "refused_rounds_charged",
            True,
            f"rounds the gates refused (charged, no adapter shipped): {refused}"
            if refused
            else "no round refused",
        )
    )
    return checks


def _round_epsilon(r: Any, delta: float, rule: FilterRule) -> float | None:
    if not (r.charged and r.steps > 0 and r.noise_multiplier and r.sample_rate is not None):
        return None
    return float(rule.epsilon(rule.charge_curve(r), delta=delta))


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
            epsilon=_round_epsilon(r, contract.delta, rule),
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
        rounds, unit_eps, lifetime_epsilon=contract.epsilon,
        rules=rules_of(policy) if policy is not None else None,
        policy_digest=policy.digest() if policy is not None else None,
        policy_contract=Contract.of_policy(policy) if policy_given else None, contract=contract,
    )  # fmt: skip
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
