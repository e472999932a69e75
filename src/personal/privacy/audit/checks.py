"""The compliance checks a reviewer reads: each round held to the rule for its purpose.

Training rounds to the policy's clip norm (any finite C > 0 under quantile clipping, whose
charge does not depend on C) and σ, held-out validation rounds to their own clip norm, one
release and the policy's validation σ, migration rounds to charging nothing; every unit to the
lifetime budget; the policy a reviewer names to the contract the ledger binds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from personal.privacy.audit.schema import AuditRound, Check
from personal.privacy.rules import validation_noise_multiplier

VALIDATION_CLIP_NORM = 1.0  # the held-out gain metric's own sensitivity (clip of each loss gap)


@dataclass(frozen=True)
class RoundRules:
    """What each purpose of round must satisfy under one policy (see :func:`rules_of`)."""

    clip_norm: float  # fixed clipping: every training round's C; quantile: the first C
    noise_multiplier: float | None  # None: calibrated per round (only σ > 0 is checked)
    validation_noise_multiplier: float
    lifetime_epsilon: float
    name: str = ""
    clip: str = "fixed"  # "quantile": C adapts from round to round (privacy.clip)


def rules_of(policy: Any) -> RoundRules:
    """The per-purpose rules a policy sets (training C and σ, validation σ, lifetime ε)."""
    return RoundRules(
        clip_norm=float(policy.privacy.clip_norm),
        noise_multiplier=policy.privacy.noise_multiplier,
        validation_noise_multiplier=validation_noise_multiplier(policy),
        lifetime_epsilon=float(policy.privacy.lifetime_epsilon),
        name=str(policy.name),
        clip=str(policy.privacy.clip),
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
    if rules.clip == "quantile":
        # C adapts (a DP output); the charge is σ's whatever C is, so any finite C > 0 is valid.
        if r.clip_norm is not None and not (math.isfinite(r.clip_norm) and r.clip_norm > 0):
            problems.append(f"{r.purpose} at C={r.clip_norm!r}, not a finite C > 0")
    elif r.clip_norm is not None and not math.isclose(r.clip_norm, rules.clip_norm):
        problems.append(f"{r.purpose} at C={r.clip_norm:g}, not {rules.clip_norm:g}")
    if rules.noise_multiplier is not None and r.noise_multiplier < rules.noise_multiplier * (
        1 - tol
    ):
        problems.append(
            f"{r.purpose} σ={r.noise_multiplier:.4g} below the policy's {rules.noise_multiplier:g}"
        )
    return problems


def _clip_rule(rules: RoundRules) -> str:
    if rules.clip == "quantile":
        return f"C adaptive (quantile clipping from C={rules.clip_norm:g}; any C > 0 charges σ)"
    return f"C={rules.clip_norm:g}"


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
                f"({', '.join(purposes) or 'no rounds'}): training "
                + _clip_rule(rules)
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
