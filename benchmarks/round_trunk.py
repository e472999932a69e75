"""Time one training round with the frozen trunk computed once (``trunk``) against the whole
model run at every step, check and gate (``full``, the computation before), side by side, and
the same with each step in chunks of examples (``chunked``).

The shipped policies put LoRA on the last two blocks (``training.lora.num_layers = 2``); the
blocks before are frozen for the whole round, so :mod:`personal.model.trunk` runs them once per
row: for the DP steps (every unit is drawn at every step when the sampling rate is 1), the
step-size guard's public checks, the pull to the base and the gates. ``full`` patches that
off. Each round runs in a process of its own (a fresh store, the base loaded anew, the same
seeded noise and draws), the ways alternating, ``--repeats`` times each; medians.

The user is the simulator's first at ``--min-rate`` interactions a day (seed ``--seed``), their
first ``--days`` days logged, then one round of the ``default`` policy (its step guard, pull to
the base and gates as shipped). Public data: the simulator's corpus, or ``--public-data JSONL``.

    python benchmarks/round_trunk.py --json                                 # base-v1, ~1 min
    python benchmarks/round_trunk.py --json --base smollm2-135m-instruct    # ~30 min on 2 cores

``chunked`` is ``trunk`` with each step's sample split into passes of at most ``--max-rows``
examples (whole units; ``RoundPlan.max_rows``): a bounded peak memory, and no padding of the
sample to the next power of two.

Prints ``{"full_s", "trunk_s", "chunked_s", "speedup", "chunked_speedup",
"chunked_peak_ratio", "<mode>_peak_bytes", "same_outcome", ...}`` (round seconds as the round
report gives them: training and gates, not loading; peak: MLX's, over the round).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: full: the whole model at every pass, one pass per step (before); trunk: the frozen trunk
#: once; chunked: the trunk once and each step in passes of at most --max-rows examples.
MODES = ("full", "trunk", "chunked")


def one_round(
    mode: str, base: str, days: int, seed: int, min_rate: float, public: str | None,
    max_rows: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one round in this process and return what it did."""
    import personal  # noqa: F401  (first: configures MLX's BLAS)
    import personal.model.trunk as trunk_module
    import personal.training.runner as runner_module
    from personal import Personalizer
    from personal.privacy.noise import GaussianNoise
    from personal.store import RawKey

    from personal_sim.public_data import simulation_public_data
    from personal_sim.scenario import SimConfig, day_end
    from personal_sim.user_task import _UserRun

    if mode == "full":  # the computation before: no trunk anywhere
        trunk_module.trunk_depth = lambda model: None
    # "chunked": each step's sample in passes of at most max_rows examples; else one pass
    runner_module.STEP_ROWS = max_rows if mode == "chunked" else None
    config = SimConfig(users=1, days=days, seed=seed, min_rate=min_rate, base=base)
    run = _UserRun(config, config.user_indices()[0], None)
    with tempfile.TemporaryDirectory() as tmp, Personalizer.open(
        Path(tmp) / "home", base, config.base_policy(), RawKey(os.urandom(32)), create=True,
        public_data=simulation_public_data(public), memory=False,
    ) as p:  # fmt: skip
        for day in range(days):
            for ts, it in run.logs[day]:
                p.log(it.prompt, it.response, ts=ts)
        report = p.update(now=day_end(days - 1), noise=GaussianNoise(seed=1), sampler_seed=2)
    gates = report.gates or {}
    return {
        "seconds": report.seconds,
        "peak_memory_bytes": report.peak_memory_bytes,
        "eligible": report.eligible,
        "train_loss": report.train_loss,
        "step_scale": report.step_scale,
        "passed": gates.get("passed"),
        "general_regression": gates.get("general_regression"),
        "personal_gain": gates.get("personal_gain"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="base-v1")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--min-rate", type=float, default=30.0)
    parser.add_argument("--public-data", default=None, help="JSONL (default: the sim's corpus)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--max-rows", type=int, default=64, help="the chunked mode's passes")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_round(
            args.one, args.base, args.days, args.seed, args.min_rate, args.public_data,
            args.max_rows,
        )))  # fmt: skip
        return
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
    argv = [sys.executable, str(Path(__file__).resolve()), "--base", args.base, "--days",
            str(args.days), "--seed", str(args.seed), "--min-rate", str(args.min_rate),
            "--max-rows", str(args.max_rows)]  # fmt: skip
    if args.public_data:
        argv += ["--public-data", args.public_data]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    for _ in range(args.repeats):
        for mode in runs:
            out = subprocess.run(
                [*argv, "--one", mode], check=True, capture_output=True, text=True, env=env
            )
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = {mode: values[0] for mode, values in runs.items()}
    reference = first[args.modes[0]]
    outcome = ("passed", "eligible", "step_scale")
    result: dict[str, Any] = {
        "base": args.base,
        "eligible_units": reference["eligible"],
        "max_rows": args.max_rows,
        # the same seeded round every way: the same decisions, losses within float32 rounding
        "same_outcome": all(r[k] == reference[k] for r in first.values() for k in outcome),
        "max_train_loss_diff": max(
            abs(a - b)
            for r in first.values()
            for a, b in zip(r["train_loss"], reference["train_loss"], strict=True)
        ),
    }
    for mode, values in runs.items():
        result[f"{mode}_s"] = statistics.median(r["seconds"] for r in values)
        result[f"{mode}_times"] = [r["seconds"] for r in values]
        result[f"{mode}_peak_bytes"] = max(r["peak_memory_bytes"] for r in values)
    if {"full", "trunk"} <= runs.keys():
        result["speedup"] = result["full_s"] / result["trunk_s"]
    if {"trunk", "chunked"} <= runs.keys():
        result["chunked_speedup"] = result["trunk_s"] / result["chunked_s"]
        result["chunked_peak_ratio"] = result["chunked_peak_bytes"] / result["trunk_peak_bytes"]
    result["rounds"] = first
    if not args.json:
        for mode, values in runs.items():
            print(mode, " ".join(f"{r['seconds']:.1f}" for r in values))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
