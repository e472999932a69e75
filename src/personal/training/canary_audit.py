"""The empirical privacy audit: canaries, one training round on a copy, a lower bound on ε.

``personal audit STORE --canaries N`` runs :func:`run_canary_audit`:

1. copy the store (the original is never written: its ledger is not charged, its adapters are
   not touched);
2. draw N canary units and insert each into the copy independently with probability 1/2 (CSPRNG
   coins unless a test seed is given);
3. run one DP round under the store's policy on the copy, through the real sampler, ledger,
   per-unit clipping and noise, with each canary's gradient replaced by a white-box *gradient
   canary* (:mod:`personal.training.gradient_canary`: ``C`` along a coordinate of its own);
4. guess membership from the trained adapter (how far each canary's coordinate moved), turn the
   guesses into a lower bound on ε (:mod:`personal.privacy.canary`; Steinke, Nasr & Jagielski
   2023) and compare it with the ε the ledger charged the canaries.

A sound mechanism gives a bound below the accounted ε; a broken one (too little noise, clipping
that does not bound a unit, a sampler that does not match the accountant) shows up as a bound
above it. Gradient canaries are the worst case the analysis covers, so they give much tighter
bounds than text canaries, which a small model barely memorises in one round. The round also
trains on the user's real data (the realistic setting); its only output is the bound and the
counts, and the copy is deleted afterwards.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from personal.privacy.canary import audit_bound
from personal.privacy.noise import GaussianNoise
from personal.store import KeyProvider, Store
from personal.training.gradient_canary import GradientCanaries
from personal.training.round import run_round

import numpy as np


@dataclass(frozen=True)
class CanaryAuditResult:
    """The audit's outcome.

    Attributes:
        canaries: N; included: how many were inserted.
        guesses, correct: the best guess set of the one-run test.
        epsilon_lower_bound: with ``confidence``, training is not (ε', δ)-DP for ε' below it.
        epsilon_accounted: what the ledger charged each inserted canary (filter ε).
        delta, confidence: of the test.
        passed: the lower bound does not exceed the accounted ε.
    """

    canaries: int
    included: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    epsilon_accounted: float
    delta: float
    confidence: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the audit JSON."""
        return asdict(self)


def _copy_store(store: Path, key: KeyProvider, into: Path) -> Path:
    with Store.open(store, key) as opened:
        opened.checkpoint()  # fold the WAL in so the copy is one consistent file set
        target = into / "store"
        shutil.copytree(store, target)
    return target


def run_canary_audit(
    store: str | Path,
    key: KeyProvider,
    base: Any,
    policy: Any,
    *,
    canaries: int,
    confidence: float = 0.95,
    seed: int | None = None,
    noise: GaussianNoise | None = None,
) -> CanaryAuditResult:
    """Run the audit on a copy of ``store``; see the module docstring.

    Args:
        store, key: the store and its key provider.
        base: the base model (bundled name, directory, or loaded ``BaseModel``).
        policy: the policy whose round is audited.
        canaries: N (at least 4; a few hundred give a meaningful bound).
        confidence: of the lower bound.
        seed: test-only: seeds the canaries, their coins and the round (warns).
        noise: test-only: the round's noise source (e.g. a deliberately broken one).
    """
    from personal.personalizer import Personalizer

    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(128))
    units = [f"audit-canary-{i}" for i in range(canaries)]
    included = rng.random(canaries) < 0.5
    with tempfile.TemporaryDirectory(prefix="personal-audit-") as tmp:
        copy = _copy_store(Path(store), key, Path(tmp))
        with Personalizer.open(copy, base, policy, key) as p:
            for i in np.flatnonzero(included):
                p.log("audit canary", "audit canary", unit=units[i], source="audit")
            chosen = GradientCanaries.pick(p.base.model, units, rng)
            before = chosen.values(p.base.model)
            run_round(
                p.base.model, p.base.tokenizer, p.log_, p.ledger, p.round_plan(),
                context=p.round_context(), noise=noise, sampler_seed=seed, canaries=chosen,
            )  # fmt: skip
            moved = before - chosen.values(p.base.model)  # descent: members move down
            members = [units[i] for i in np.flatnonzero(included)]
            accounted = max((p.ledger.epsilon_of(u) for u in members), default=0.0)
            delta = float(p.policy.privacy.delta)
    bound = audit_bound(moved.tolist(), included.tolist(), delta=delta, confidence=confidence)
    return CanaryAuditResult(
        canaries=canaries,
        included=int(included.sum()),
        guesses=bound.guesses,
        correct=bound.correct,
        epsilon_lower_bound=bound.epsilon,
        epsilon_accounted=accounted,
        delta=bound.delta,
        confidence=confidence,
        passed=bound.epsilon <= accounted,
    )
