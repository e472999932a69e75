"""Reducing per-user metrics: per-arm summaries and the machine-independent view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from personal_sim.scenario import ARMS, SimConfig

#: Keys of the metrics that measure the machine, not the simulation (see :func:`comparable`).
TIMING_KEYS = frozenset({"seconds", "wall_seconds", "peak_memory_bytes", "runtime"})


def _mean(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return round(float(np.mean(real)), 6) if real else None


CI_KEYS = ("final_gain", "final_accuracy", "final_general_drift", "final_slot_accuracy",
           "pre_update_gain", "post_update_gain")  # fmt: skip
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(
    values: Sequence[float | None], *, level: float = 0.95, seed: int = 0
) -> list[float] | None:
    """Percentile bootstrap interval of the mean over users (resampling users with
    replacement; a fixed seed, so a report is reproducible). ``None`` with fewer than 2 users."""
    real = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if real.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = real[rng.integers(0, real.size, size=(BOOTSTRAP_RESAMPLES, real.size))].mean(axis=1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return [round(float(lo), 6), round(float(hi), 6)]


def arm_user_summary(config: SimConfig, arm: dict[str, Any]) -> dict[str, Any]:
    """One user under one arm: final gain, ε, rounds and gate decisions, migration."""
    days = arm["days"]
    rounds = [d["round"] for d in days if d["round"]]
    ran = [r for r in rounds if r["ran"]]
    passed = [r for r in ran if r["gate"]["passed"]]
    general_refused = [
        r for r in ran if not r["gate"]["passed"] and any(
            "general loss rose" in reason for reason in r["gate"]["reasons"])
    ]  # fmt: skip
    pre = days[config.update_day - 1] if config.has_update else None
    migration = arm["migration"]
    return {
        "final_gain": days[-1]["personal_gain"],
        "final_accuracy": days[-1]["personal_accuracy"],
        "final_general_drift": days[-1]["general_drift"],
        "final_slot_accuracy": days[-1].get("slot_accuracy"),
        "bare_slot_accuracy": days[-1].get("bare_slot_accuracy"),
        # Memory arms: the share of held-out requests that recalled anything, and of slot
        # requests whose recalled turns name the right value (None without memory).
        "final_memory_share": days[-1].get("memory_share"),
        "final_slot_recall": days[-1].get("slot_recall"),
        "pre_update_gain": pre["personal_gain"] if pre else None,
        "post_update_gain": migration["gain_after"] if migration else None,
        "epsilon": days[-1]["epsilon"],
        "epsilon_budget": days[-1]["epsilon_budget"],
        "rounds": len(ran),
        "passed": len(passed),
        "refused_general": len(general_refused),
        "refused_personal": len(ran) - len(passed) - len(general_refused),
        "skipped": len(rounds) - len(ran),
        # Rounds where the step-size guard cut the learning rate (metrics from before the
        # guard have no such field: 0).
        "guarded": sum(1 for r in ran if r.get("guard_rejections", 0) > 0),
        "migration_accepted": migration["accepted"] if migration else None,
        "round_seconds": _mean([r["seconds"] for r in ran]),
        "peak_memory_bytes": max((r["peak_memory_bytes"] for r in ran), default=0),
        "final_version": days[-1]["active_version"],
    }


def summarize(config: SimConfig, users: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: the mean gain per day, the update's dip and recovery, ε, rounds, gates."""
    out: dict[str, Any] = {}
    for name in config.arms:
        per_user = [arm_user_summary(config, u["arms"][name]) for u in users]
        gain_by_day = [
            _mean([u["arms"][name]["days"][d]["personal_gain"] for u in users])
            for d in range(config.days)
        ]
        drift_by_day = [
            _mean([u["arms"][name]["days"][d]["general_drift"] for u in users])
            for d in range(config.days)
        ]
        eps_by_day = [
            max(u["arms"][name]["days"][d]["epsilon"] for u in users) for d in range(config.days)
        ]
        pre = _mean([s["pre_update_gain"] for s in per_user])
        recovered = None
        if config.has_update and pre is not None:
            after = range(config.update_day, config.days)
            recovered = next((d for d in after if (gain_by_day[d] or 0) >= pre), None)
        arm = ARMS.get(name)
        out[name] = {
            "memory": bool(arm and arm.memory),
            "train": arm.train if arm else True,
            "gain_by_day": gain_by_day,
            "general_drift_by_day": drift_by_day,
            "epsilon_max_by_day": eps_by_day,
            "final_gain": _mean([s["final_gain"] for s in per_user]),
            "final_accuracy": _mean([s["final_accuracy"] for s in per_user]),
            "final_general_drift": _mean([s["final_general_drift"] for s in per_user]),
            "final_slot_accuracy": _mean([s["final_slot_accuracy"] for s in per_user]),
            "bare_slot_accuracy": _mean([s["bare_slot_accuracy"] for s in per_user]),
            "final_memory_share": _mean([s["final_memory_share"] for s in per_user]),
            "final_slot_recall": _mean([s["final_slot_recall"] for s in per_user]),
            "pre_update_gain": pre,
            "post_update_gain": _mean([s["post_update_gain"] for s in per_user]),
            "recovered_on_day": recovered,
            "epsilon_max": max(s["epsilon"] for s in per_user),
            "epsilon_budget": per_user[0]["epsilon_budget"],
            "rounds": sum(s["rounds"] for s in per_user),
            "passed": sum(s["passed"] for s in per_user),
            "refused_general": sum(s["refused_general"] for s in per_user),
            "refused_personal": sum(s["refused_personal"] for s in per_user),
            "skipped": sum(s["skipped"] for s in per_user),
            "guarded": sum(s["guarded"] for s in per_user),
            "migrations_accepted": sum(bool(s["migration_accepted"]) for s in per_user),
            "round_seconds": _mean([s["round_seconds"] for s in per_user]),
            "peak_memory_bytes": max(s["peak_memory_bytes"] for s in per_user),
            # 95 % bootstrap intervals over users of the summary means above.
            "intervals": {k: bootstrap_interval([s[k] for s in per_user]) for k in CI_KEYS},
        }
    return out


def comparable(metrics: Any) -> Any:
    """``metrics`` without what measures the machine (wall times, memory, backend, workers)."""
    if isinstance(metrics, dict):
        return {
            k: comparable(v)
            for k, v in metrics.items()
            if k not in TIMING_KEYS and k not in ("round_seconds",)
        }
    if isinstance(metrics, list):
        return [comparable(v) for v in metrics]
    return metrics
