"""One simulated user under every arm: the unit of work a backend runs (:func:`run_user`).

A task draws the user (:mod:`personal_sim.population`) and for every arm opens a fresh encrypted
store in a temporary directory, logs day by day, runs the day's round when the trigger fires,
migrates on the update day and measures the served model against the bare base of the day.
Only the library's public API is used.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (before mlx: the fast BLAS)
from personal.errors import BudgetExhausted, NoEligibleUnits, SeededNoiseWarning
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.evaluate import evaluate
from personal.model.tokenizer import encode_interaction
from personal.personalizer import Personalizer
from personal.policy import Policy
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey
from personal.training.gates import general_loss, public_batches

from personal_sim.population import User
from personal_sim.public_corpus import Interaction, stream_seed
from personal_sim.public_data import eval_examples, simulation_public_data
from personal_sim.scenario import ARMS, Arm, PassThroughNoise, SimConfig, day_end
from personal_sim.slots import slot_accuracy

_BARE: dict[str, Any] = {}  # per process: bare bases for the "no personalization" reference
_PUBLIC: dict[tuple[str, str | None, int], list[Any]] = {}


def _bare(name: str) -> Any:
    if name not in _BARE:
        _BARE[name] = load_base(name)
    return _BARE[name]


def _public(base: Any, name: str, config: SimConfig) -> list[Any]:
    """The general-loss probe's batches for base ``name`` (held-out public examples)."""
    key = (name, config.public_data, config.public_eval)
    if key not in _PUBLIC:
        examples = eval_examples(config.public_data, config.public_eval)
        _PUBLIC[key] = public_batches(base.tokenizer, examples)
    return _PUBLIC[key]


def _batches(tokenizer: Any, examples: Sequence[Interaction], size: int = 32) -> list[Any]:
    encoded = [encode_interaction(tokenizer, it.prompt, it.response) for it in examples]
    return [
        make_batch([e for e, _ in encoded[i : i + size]], [s for _, s in encoded[i : i + size]])
        for i in range(0, len(encoded), size)
    ]


class _UserRun:
    """The shared parts of one user's task: their data and the bare-base references."""

    def __init__(self, config: SimConfig, index: int, progress: Any) -> None:
        self.config, self.progress = config, progress
        self.user = User.draw(config.seed, index)
        days = config.days
        self.logs = [self.user.day(d, days) for d in range(days)]
        self.held = [self.user.held_out(d, days, config.held_out) for d in range(days)]
        # Held-out requests are never logged, but some repeat an earlier logged request.
        seen = frozenset((it.prompt, it.response) for log in self.logs for _, it in log)
        repeats = sum((it.prompt, it.response) in seen for held in self.held for it in held)
        self.repeat_share = repeats / max(1, sum(len(h) for h in self.held))
        self._bare: dict[tuple[str, int], dict[str, float]] = {}
        self._held_batches: dict[tuple[str, int], list[Any]] = {}
        self._bare_slots: dict[tuple[str, int], dict[str, Any]] = {}

    def seed(self, name: str) -> int:
        return stream_seed(self.user.seed, name) >> 1  # 63 bits

    def held_batches(self, name: str, tokenizer: Any, day: int) -> list[Any]:
        key = (name, day)
        if key not in self._held_batches:
            self._held_batches[key] = _batches(tokenizer, self.held[day])
        return self._held_batches[key]

    def bare(self, name: str, day: int) -> dict[str, float]:
        """Held-out personal and general metrics of the bare base ``name`` on ``day``."""
        key = (name, day)
        if key not in self._bare:
            base = _bare(name)
            personal_eval = evaluate(base.model, self.held_batches(name, base.tokenizer, day))
            general = general_loss(base.model, _public(base, name, self.config))
            self._bare[key] = {
                "personal_loss": personal_eval.loss,
                "personal_accuracy": personal_eval.accuracy,
                "general_loss": general,
            }
        return self._bare[key]

    def measure(self, p: Personalizer, name: str, day: int) -> dict[str, float]:
        """The served model (base + active adapter) against the bare base on ``day``."""
        personal_eval = evaluate(p.base.model, self.held_batches(name, p.base.tokenizer, day))
        general = general_loss(p.base.model, _public(p.base, name, self.config))
        bare = self.bare(name, day)
        return {
            "personal_loss": personal_eval.loss,
            "personal_accuracy": personal_eval.accuracy,
            "bare_personal_loss": bare["personal_loss"],
            "bare_personal_accuracy": bare["personal_accuracy"],
            "personal_gain": 1.0 - personal_eval.loss / bare["personal_loss"],
            "general_loss": general,
            "bare_general_loss": bare["general_loss"],
            "general_drift": general / bare["general_loss"] - 1.0,
        }

    def slots(self, p: Personalizer, name: str, day: int) -> dict[str, Any]:
        """Slot accuracy of the served model and of the bare base on ``day``'s held-out
        requests (:mod:`personal_sim.slots`)."""
        key = (name, day)
        if key not in self._bare_slots:
            base = _bare(name)
            self._bare_slots[key] = slot_accuracy(base.model, base.tokenizer, self.held[day])
        served = slot_accuracy(p.base.model, p.base.tokenizer, self.held[day])
        bare = self._bare_slots[key]
        return {
            "slot_accuracy": served["slot_accuracy"],
            "bare_slot_accuracy": bare["slot_accuracy"],
            "slot_requests": served["slot_requests"],
            "slot_by_slot": served["by_slot"],
            "bare_slot_by_slot": bare["by_slot"],
        }

    def tick(self) -> None:
        if self.progress is not None:
            self.progress.put(1)


def _epsilon(p: Personalizer) -> float:
    return max(p.ledger.epsilons().values(), default=0.0)


def _round(p: Personalizer, run: _UserRun, arm: Arm, day: int) -> dict[str, Any] | None:
    """The day's round if the trigger fires: what it did, or why it was skipped."""
    now = day_end(day)
    if not p.should_update(now=now):
        return None
    noise_seed = run.seed(f"noise/{day}")
    noise = GaussianNoise(seed=noise_seed) if arm.dp else PassThroughNoise()
    started = time.perf_counter()
    try:
        report = p.update(now=now, noise=noise, sampler_seed=run.seed(f"sampler/{day}"))
    except (BudgetExhausted, NoEligibleUnits) as exc:
        return {"ran": False, "skipped": type(exc).__name__, "reason": str(exc)}
    gates = report.gates or {}
    return {
        "ran": True,
        "round_id": report.round_id,
        "candidates": report.candidates,
        "eligible": report.eligible,
        "excluded": report.excluded,
        "replayed": report.replayed,
        "sample_rate": report.sample_rate,
        "noise_multiplier": report.noise_multiplier,
        "steps": report.steps,
        "clipped_fraction": report.clipped_fraction,
        "epsilon_max": report.epsilon_max,
        "adapter_version": report.adapter_version,
        "gate": {
            "passed": bool(gates.get("passed")),
            "general_regression": gates.get("general_regression"),
            "personal_gain": gates.get("personal_gain"),
            "held_out_units": gates.get("held_out_units"),
            "reasons": list(gates.get("reasons", [])),
        },
        "seconds": report.seconds,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "peak_memory_bytes": report.peak_memory_bytes,
    }


def _migrate(p: Personalizer, run: _UserRun, arm_policy: Policy, day: int) -> dict[str, Any]:
    """The OS update: migrate, and measure the gain just before and just after it."""
    config = run.config
    before = run.measure(p, config.base, day)
    eps_before = p.ledger.epsilons()
    started = time.perf_counter()
    report = p.on_base_update(config.update_base, strategy=arm_policy.migration.strategy)
    wall = round(time.perf_counter() - started, 3)
    after = run.measure(p, config.update_base, day)
    eps_after = p.ledger.epsilons()
    charged = max((v - eps_before.get(u, 0.0) for u, v in eps_after.items()), default=0.0)
    gates = report.gates or {}
    return {
        "day": day,
        "strategy": report.strategy,
        "from": config.base,
        "to": config.update_base,
        "old_version": report.old_version,
        "new_version": report.new_version,
        "accepted": report.new_version is not None,
        "gate_reasons": list(gates.get("reasons", [])),
        "general_regression": gates.get("general_regression"),
        "distill_steps": report.steps,
        "distill_loss": report.distill_loss,
        "token_level": report.token_level,
        "charged": report.charged,
        "epsilon_charged": max(0.0, charged),
        "gain_before": before["personal_gain"],
        "gain_after": after["personal_gain"],
        "personal_loss_before": before["personal_loss"],
        "personal_loss_after": after["personal_loss"],
        "seconds": report.seconds,
        "wall_seconds": wall,
    }


def _run_arm(run: _UserRun, arm: Arm, home: Path) -> dict[str, Any]:
    config = run.config
    policy = arm.policy(config.base_policy())
    budget = policy.privacy.lifetime_epsilon
    days: list[dict[str, Any]] = []
    migration = None
    key = RawKey(os.urandom(32))
    started = time.perf_counter()
    public = simulation_public_data(config.public_data)  # passed in, like any app's
    with Personalizer.open(
        home, config.base, policy, key, create=True, seed=run.seed("replay"), public_data=public
    ) as p:
        logged = 0
        for day in range(config.days):
            if config.has_update and day == config.update_day:
                migration = _migrate(p, run, policy, day)
            for ts, it in run.logs[day]:
                p.log(it.prompt, it.response, ts=ts)
            logged += len(run.logs[day])
            round_ = _round(p, run, arm, day)
            active = p.active_adapter
            days.append({
                "day": day,
                "base": config.base_on(day),
                "logged": len(run.logs[day]),
                "logged_total": logged,
                "round": round_,
                "active_version": active.version if active else None,
                "epsilon": _epsilon(p),
                "epsilon_budget": budget,
                **run.measure(p, config.base_on(day), day),
            })  # fmt: skip
            if day == config.days - 1:  # greedy replies: on the last day only
                days[-1].update(run.slots(p, config.base_on(day), day))
            run.tick()
    return {
        "arm": arm.name,
        "policy_digest": policy.digest(),
        "days": days,
        "migration": migration,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_user(config: SimConfig, index: int, progress: Any = None) -> dict[str, Any]:
    """Simulate user ``index`` under every arm of ``config`` (the unit of work of a backend).

    ``progress``: anything with ``put(1)`` (a queue), called after each simulated day and arm.
    """
    started = time.perf_counter()
    run = _UserRun(config, index, progress)
    arms: dict[str, Any] = {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="personal-sim-") as tmp:
        # Seeded noise is the point here (reproducible metrics); the report says it is not DP.
        warnings.simplefilter("ignore", SeededNoiseWarning)
        for name in config.arms:
            arms[name] = _run_arm(run, ARMS[name], Path(tmp) / name)
    used = [config.base, *([config.update_base] if config.has_update else [])]
    bases = {name: _bare(name).fingerprint for name in used}
    return {
        "user": index,
        "profile": run.user.describe(),
        "logged": [len(log) for log in run.logs],
        "held_out_repeat_share": run.repeat_share,
        "base_fingerprints": bases,
        "arms": arms,
        "seconds": round(time.perf_counter() - started, 3),
    }
