"""How `personal simulate` scales with workers: the same run on 1 and on 2 local workers.

    python benchmarks/simulate_scaling.py --json [--users 8] [--days 3] [--update-day 2]

Runs one simulation (local backend, seeded) with ``--workers 1`` and again with
``--workers 2`` and prints ``{"users_per_min_1", "users_per_min_2", "efficiency"}`` where
``efficiency = users_per_min_2 / (2 * users_per_min_1)`` (1.0: perfect scaling; goal >= 0.85),
plus the seconds of each run, the mean cost of one user, and whether both runs produced the
same metrics (they must: seeded noise, single-threaded BLAS per worker). Times include the
workers' start (importing personal and mlx, loading the bases), as a user of
``personal simulate`` experiences it. Every user trains every day (``min_new_units`` 4), so
users cost about the same and the pool is balanced.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import personal  # noqa: F401  (must precede mlx: loads the fast BLAS)

from personal_sim.runner import SimConfig, comparable, default_policy, simulate


def config(args: argparse.Namespace) -> SimConfig:
    policy = default_policy().with_overrides({
        "training.min_new_units": 4,
        "training.steps": args.steps,
        "migration.distill_steps": 8,
    })  # fmt: skip
    return SimConfig(
        users=args.users, days=args.days, update_day=args.update_day, seed=args.seed,
        policy=policy.to_dict(), held_out=32, public_eval=32,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--update-day", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args()
    cfg = config(args)
    runs = {}
    for workers in (1, 2):
        started = time.perf_counter()
        runs[workers] = simulate(cfg, backend="local", workers=workers)
        seconds = time.perf_counter() - started
        print(f"{workers} worker(s): {seconds:.1f} s", file=sys.stderr, flush=True)
    per_min = {w: runs[w]["runtime"]["users_per_min"] for w in runs}
    result = {
        "users_per_min_1": per_min[1],
        "users_per_min_2": per_min[2],
        "efficiency": round(per_min[2] / (2 * per_min[1]), 4),
        "seconds_1": runs[1]["runtime"]["seconds"],
        "seconds_2": runs[2]["runtime"]["seconds"],
        "user_seconds_mean": runs[1]["runtime"]["user_seconds_mean"],
        "same_metrics": json.dumps(comparable(runs[1]), sort_keys=True)
        == json.dumps(comparable(runs[2]), sort_keys=True),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
