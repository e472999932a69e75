"""The audit report as data: rounds, checks, per-unit ε, and the documented JSON schema.

:class:`Audit` is plain data; :meth:`Audit.to_json` is the schema docs/privacy.md documents
("Audit report"). Assembled by :func:`personal.privacy.audit.build.build_audit`, drawn as a page
by :func:`personal.privacy.audit.page.render_html`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from personal.privacy.rdp import ORDERS

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

#: The purposes of round that train an adapter (and pass or fail the gates).
TRAINING_PURPOSES = ("training", "replay", "fisher")


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
            self.ledger_ok
            and not self.over_budget
            and all(c.ok for c in self.checks)
            and canaries_ok
        )

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
            {
                "unit": f"u{i}",
                "epsilon": self.unit_epsilons[u],
                "rounds": list(self.unit_rounds.get(u, [])),
            }
            for i, u in enumerate(order, start=1)
        ]

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
    if r.purpose in TRAINING_PURPOSES:
        data["gate"], data["adapter_produced"] = r.gate, r.adapter_produced
    return data
