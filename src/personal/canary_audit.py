"""The empirical privacy audit: canaries, one training round on a copy, a lower bound on ε.

``personal audit STORE --canaries N`` runs :func:`run_canary_audit`:

1. copy the store into a scratch directory *inside* it (the original database is never
   written: its ledger is not charged, its adapters are not touched). The copy is ciphertext
   like the store, and a copy a killed audit leaves behind is removed by the next open of the
   store (:mod:`personal.store.workdir`), never left in ``/tmp`` where no erasure reaches it;
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
counts, and the copy is deleted afterwards. Canary units take the shape of the store's unit of
privacy (under ``day``, dates of a distant past year that no real interaction has).
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from personal.privacy.canary import audit_bound
from personal.privacy.noise import GaussianNoise
from personal.store import KeyProvider, Store, workdir
from personal.store.layout import DB_NAME
from personal.store.workdir import is_scratch
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
    """A consistent copy of ``store`` in ``into``: its files, and the database through SQLite's
    online backup (one snapshot, whatever other processes write meanwhile)."""
    target = into / "store"

    def skip(directory: str, names: list[str]) -> set[str]:
        if Path(directory) != store:
            return set()
        database = {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"}
        return {n for n in names if n in database or is_scratch(n) or n.endswith(".lock")}

    with Store.open(store, key) as opened:
        shutil.copytree(store, target, ignore=skip)
        copy = sqlite3.connect(target / DB_NAME)
        try:
            opened.db.conn.backup(copy)
        finally:
            copy.close()
    (target / DB_NAME).chmod(0o600)
    return target


def _canary_units(unit: str, n: int) -> list[tuple[str, datetime | None]]:
    """N canary unit ids (and times) that fit the unit of privacy."""
    if unit != "day":
        return [(f"audit-canary-{i}", None) for i in range(n)]
    first = datetime(1900, 1, 1, 12, tzinfo=UTC)  # long before any real interaction
    days = [first + timedelta(days=i) for i in range(n)]
    return [(d.date().isoformat(), d) for d in days]


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
    included = rng.random(canaries) < 0.5
    with workdir.scratch(store) as tmp:
        copy = _copy_store(Path(store), key, tmp)
        with Personalizer.open(copy, base, policy, key) as p:
            drawn = _canary_units(p.ledger.contract.unit, canaries)
            units = [u for u, _ in drawn]
            for i in np.flatnonzero(included):
                unit, ts = drawn[i]
                p.log("audit canary", "audit canary", unit=unit, ts=ts, source="audit")
            chosen = GradientCanaries.pick(p.base.model, units, rng)
            before = chosen.values(p.base.model)
            run_round(
                p.base.model,
                p.base.tokenizer,
                p.interactions,
                p.ledger,
                p.round_plan(),
                context=p.round_context(),
                noise=noise,
                sampler_seed=seed,
                canaries=chosen,
            )
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
