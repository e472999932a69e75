"""MLX's own cross-entropy against :func:`personal.model.fastmath.cross_entropy`, in one run.

* ``ce``: value and gradient of the cross-entropy alone, compiled, on ``(positions, vocab)``
  logits (default 2048 × 8192: the reference step's batch 16 × 128 over its vocabulary).
* ``step`` (``--step``): the reference DP and non-DP steps of ``dp_step.py``, traced once with
  ``PERSONAL_FAST_MATH=1`` and once without, timed interleaved (medians).

    python benchmarks/fast_math.py --json
    python benchmarks/fast_math.py --json --step --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import personal  # noqa: F401  (a fast BLAS before MLX)
from personal.model.fastmath import FAST_ENV, fast_cross_entropy

import mlx.core as mx
import mlx.nn as nn
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    for run in runs.values():  # warm-up: trace, compile, allocate
        run()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            times[key].append(timed(run))
    return {key: round(statistics.median(v), 4) for key, v in times.items()}


def ce_runs(positions: int, vocab: int) -> dict[str, Callable[[], None]]:
    logits = mx.random.normal((positions, vocab), key=mx.random.key(0))
    targets = mx.random.randint(0, vocab, (positions,), key=mx.random.key(1))
    mx.eval(logits, targets)

    def exact(x: mx.array) -> mx.array:
        return nn.losses.cross_entropy(x, targets, reduction="none").sum()

    def fast(x: mx.array) -> mx.array:
        return fast_cross_entropy(x, targets).sum()

    steps = {
        "exact": mx.compile(mx.value_and_grad(exact)),
        "fast": mx.compile(mx.value_and_grad(fast)),
    }
    return {key: (lambda f=f: mx.eval(f(logits))) for key, f in steps.items()}


def step_runs(batch: int, seq: int) -> dict[str, Callable[[], None]]:
    from dp_step import build_model, mlx_steps

    args = argparse.Namespace(base=None, arch=None, quantize=False, quantized_path="keep")
    model, vocab, _ = build_model(args)
    tokens = np.random.default_rng(0).integers(1, vocab, (batch, seq + 1), dtype=np.int32)
    runs = {}
    for key, fast in (("exact", "0"), ("fast", "1")):
        os.environ[FAST_ENV] = fast  # read when the steps are traced, at their first call
        plain, dp = mlx_steps(model, tokens, seq)
        plain(), dp()
        runs[f"nondp_{key}"], runs[f"dp_{key}"] = plain, dp
    os.environ.pop(FAST_ENV)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--step", action="store_true", help="also the reference steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ce = interleaved(ce_runs(args.positions, args.vocab), args.repeats)
    result: dict[str, object] = {
        "ce_exact_s": ce["exact"],
        "ce_fast_s": ce["fast"],
        "ce_fast_over_exact": round(ce["fast"] / ce["exact"], 3),
        "positions": args.positions,
        "vocab": args.vocab,
    }
    if args.step:
        step = interleaved(step_runs(args.batch, args.seq), args.repeats)
        result.update({f"{k}_s": v for k, v in step.items()})
        result["dp_fast_over_exact"] = round(step["dp_fast"] / step["dp_exact"], 3)
        result["nondp_fast_over_exact"] = round(step["nondp_fast"] / step["nondp_exact"], 3)
        result.update(batch=args.batch, seq=args.seq)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
