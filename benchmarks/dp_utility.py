"""Does personalization pay off under DP? The bundled default policy over a population.

    python benchmarks/dp_utility.py --json            # 16 users x 14 days, every arm
    python benchmarks/dp_utility.py --json --quick    # smoke run: 4 users x 6 days, 2 arms

Runs the simulator (``personal_sim``: real encrypted stores, real DP rounds, one worker process
per core, seeded noise) with the bundled ``default`` policy as shipped, every arm on the same
users, no OS update, and prints::

    {"arms": {ARM: {"mean_gain", "light_median_gain", "light_median_gain_ci", "slot_accuracy",
                    "general_drift", "epsilon_max", ...}}, "goals": {...}, ...}

* ``base``: the bare base model (no personalization: gain 0 by definition).
* ``nondp``: the same policy without noise (not private; lifetime ε 100 so the ledger never
  stops it).
* ``dp``: the default policy as shipped.
* one arm per technique of the policy, each undoing it (``personal_sim.scenario.ABLATION_ARMS``),
  and candidate recipes measured against the shipped one (``CANDIDATE_ARMS``).
* ``memory`` and ``dp+memory`` (``MEMORY_ARMS``): personal memory's token cache alone (no
  training, ε 0) and served with the ``dp`` arm's adapters (docs/memory.md).

``mean_gain``: mean over users of the final relative drop of the held-out personal loss against
the bare base. ``light_median_gain``: the median of it over the light users (at most
``LIGHT_RATE`` interactions logged a day on average), with a bootstrap 90 % interval
(``light_median_gain_ci``, 10,000 resamples of the light users). ``slot_accuracy``: mean over
users of the share of the last day's held-out requests whose greedy reply names the user's
personal slot (``personal_sim.slots``). ``general_drift``: mean final relative rise of the
loss on held-out public text. ``epsilon_max``: the largest ε any unit was charged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import personal  # noqa: F401  (before mlx: the fast BLAS)

import numpy as np

from personal_sim.runner import SimConfig, simulate
from personal_sim.scenario import ABLATION_ARMS, CANDIDATE_ARMS, MEMORY_ARMS, MEMORY_CONTEXT_ARMS
from personal_sim.summary import arm_user_summary

#: Users logging at most this many interactions a day on average are "light" (the issue's).
LIGHT_RATE = 10.0
#: Output name -> simulator arm.
ARM_NAMES = {
    "nondp": "non-dp",
    "dp": "dp",
    **{a: a for a in (*ABLATION_ARMS, *CANDIDATE_ARMS, *MEMORY_ARMS, *MEMORY_CONTEXT_ARMS)},
}
QUICK = {"users": 4, "days": 6, "held_out": 16, "arms": ("nondp", "dp")}  # >= 1 round


def bootstrap_median_ci(
    values: list[float], level: float = 0.9, resamples: int = 10_000, seed: int = 0
) -> list[float] | None:
    """The percentile bootstrap interval of the median of ``values`` (None if empty)."""
    if not values:
        return None
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=np.float64)
    medians = np.median(rng.choice(data, size=(resamples, data.size), replace=True), axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return [round(float(low), 6), round(float(high), 6)]


def _light(user: dict[str, Any]) -> bool:
    return float(np.mean(user["logged"])) <= LIGHT_RATE


def arm_metrics(config: SimConfig, users: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """The issue's metrics for one simulator arm."""
    per_user = [arm_user_summary(config, u["arms"][arm]) for u in users]
    gains = [s["final_gain"] for s in per_user]
    light = [s["final_gain"] for s, u in zip(per_user, users, strict=True) if _light(u)]
    slots = [s["final_slot_accuracy"] for s in per_user if s["final_slot_accuracy"] is not None]
    return {
        "mean_gain": round(float(np.mean(gains)), 6),
        "light_median_gain": round(float(np.median(light)), 6) if light else None,
        "light_median_gain_ci": bootstrap_median_ci(light),
        "slot_accuracy": round(float(np.mean(slots)), 6) if slots else None,
        "general_drift": round(float(np.mean([s["final_general_drift"] for s in per_user])), 6),
        "general_drift_max": round(max(s["final_general_drift"] for s in per_user), 6),
        "epsilon_max": round(max(s["epsilon"] for s in per_user), 4),
        "epsilon_budget": per_user[0]["epsilon_budget"],
        "rounds": sum(s["rounds"] for s in per_user),
        "passed": sum(s["passed"] for s in per_user),
        "skipped": sum(s["skipped"] for s in per_user),
        "guarded": sum(s["guarded"] for s in per_user),  # rounds the step guard slowed
    }


def base_metrics(config: SimConfig, users: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """The bare base: what every arm is measured against (same users, same held-out sets)."""
    per_user = [arm_user_summary(config, u["arms"][arm]) for u in users]
    slots = [s["bare_slot_accuracy"] for s in per_user if s["bare_slot_accuracy"] is not None]
    light = [0.0 for u in users if _light(u)]
    return {
        "mean_gain": 0.0,
        "light_median_gain": 0.0 if light else None,
        "light_median_gain_ci": [0.0, 0.0] if light else None,
        "slot_accuracy": round(float(np.mean(slots)), 6) if slots else None,
        "general_drift": 0.0,
        "general_drift_max": 0.0,
        "epsilon_max": 0.0,
    }


def goals(
    arms: dict[str, dict[str, Any]], dp_arm: str = "dp", nondp_arm: str = "nondp"
) -> dict[str, Any]:
    """The issue's goals, each with its measured value (for ``dp_arm`` against
    ``nondp_arm``; the default pair also gets the served-with-memory goal)."""
    dp, nondp, base = arms[dp_arm], arms[nondp_arm], arms["base"]
    kept = dp["mean_gain"] / nondp["mean_gain"] if nondp["mean_gain"] > 0 else None
    ci = dp["light_median_gain_ci"]
    slot_points = (
        (dp["slot_accuracy"] - base["slot_accuracy"]) * 100
        if dp["slot_accuracy"] is not None and base["slot_accuracy"] is not None
        else None
    )
    return {
        "dp_keeps_60pct_of_nondp_gain": {"value": kept, "met": kept is not None and kept >= 0.6},
        "light_median_gain_ci_above_0": {"value": ci, "met": bool(ci and ci[0] > 0)},
        "dp_slot_accuracy_10_points_above_base": {
            "value": slot_points, "met": slot_points is not None and slot_points >= 10
        },
        "general_drift_at_most_1pct": {
            "value": dp["general_drift"], "met": dp["general_drift"] <= 0.01
        },
        "no_unit_over_budget": {
            "value": dp["epsilon_max"], "met": dp["epsilon_max"] <= dp["epsilon_budget"] + 1e-9
        },
        **(_served_with_memory(arms) if dp_arm == "dp" else {}),
    }  # fmt: skip


def _served_with_memory(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The slot goal for what an app serves with memory on: the dp adapters and memory."""
    both, base = arms.get("dp+memory"), arms["base"]
    if both is None or both["slot_accuracy"] is None or base["slot_accuracy"] is None:
        return {}
    points = (both["slot_accuracy"] - base["slot_accuracy"]) * 100
    return {"dp_memory_slot_accuracy_10_points_above_base": {"value": points, "met": points >= 10}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    arms = tuple(args.arms)
    config = SimConfig(
        users=args.users, days=args.days, update_day=args.days, seed=args.seed,
        arms=tuple(ARM_NAMES[a] for a in arms), held_out=args.held_out,
    )  # fmt: skip
    started = time.perf_counter()
    metrics = simulate(config, workers=args.workers)
    users = metrics["users"]
    out_arms = {"base": base_metrics(config, users, config.arms[0])}
    for name in arms:
        out_arms[name] = arm_metrics(config, users, ARM_NAMES[name])
    result: dict[str, Any] = {"arms": out_arms}
    if "dp" in out_arms and "nondp" in out_arms:
        result["goals"] = goals(out_arms)
    for bank in ("dp-bank", "dp-bank-min16"):  # the adapter bank, against its own non-DP run
        if bank in out_arms and "non-dp-bank" in out_arms:
            result[f"goals_{bank}"] = goals(out_arms, bank, "non-dp-bank")
    result["config"] = {
        "users": args.users, "days": args.days, "seed": args.seed, "held_out": args.held_out,
        "policy": "default", "policy_digest": metrics["config"]["policy_digest"],
        "light_users": sum(_light(u) for u in users), "light_rate": LIGHT_RATE,
        "workers": metrics["runtime"]["workers"],
    }  # fmt: skip
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.metrics:
        with open(args.metrics, "w", encoding="utf-8") as f:
            json.dump(metrics, f)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 users x 6 days")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--held-out", type=int, default=64, help="per user and day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="default: the cores")
    parser.add_argument(
        "--arms", nargs="+", choices=tuple(ARM_NAMES), default=tuple(ARM_NAMES),
        help="arms besides base (default: all)",
    )  # fmt: skip
    parser.add_argument("--metrics", default=None, help="also write the simulator's metrics")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    result = run(args)
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return
    for name, m in result["arms"].items():
        print(
            f"{name:18} gain {m['mean_gain']:+.4f}  light median {m['light_median_gain']}"
            f" {m['light_median_gain_ci']}  slots {m['slot_accuracy']}"
            f"  drift {m['general_drift']:+.4f}  eps {m['epsilon_max']}"
        )
    for goal, g in result.get("goals", {}).items():
        print(f"{goal}: {g['value']} ({'met' if g['met'] else 'NOT met'})")
    print(f"{result['seconds']} s")


if __name__ == "__main__":
    main()
