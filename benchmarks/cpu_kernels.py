"""personal.kernels against MLX's own ops, op by op, in one run (interleaved medians).

Shapes of the reference step (``dp_step.py``: batch 16 × 128 positions, vocabulary 8192, 8
heads, MLP width 1408), value and gradient where training needs both:

* ``softmax``, ``logsumexp``: ``(2048, 8192)`` float32, forward only;
* ``sigmoid``: ``(2048, 1408)``;
* ``cross_entropy``: value and gradient of :func:`personal.model.fastmath.cross_entropy`;
* ``attention``: value and gradients of causal attention ``(16, 8, 128, 64)``:
  :func:`personal.model.fastmath.attention` vs ``mx.fast.scaled_dot_product_attention``;
* ``swiglu``: value and gradients of ``silu(gate) · x`` on ``(2048, 1408)``.

Each pair is traced twice (``personal.kernels.use(True/False)``), compiled, and timed
interleaved; the JSON gives both medians and the speed-up. The whole-step effect is
``dp_step.py --kernels-baseline``.

    python benchmarks/cpu_kernels.py --json

(Not named ``kernels.py``: run from this directory, that would shadow the Hugging Face
``kernels`` package that transformers imports.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import personal
from personal import kernels
from personal.model.fastmath import attention, cross_entropy, swiglu

import mlx.core as mx
import mlx.nn as nn


def _arrays(*shapes: tuple[int, ...]) -> list[mx.array]:
    out = [mx.random.normal(s, key=mx.random.key(i)) for i, s in enumerate(shapes)]
    mx.eval(out)
    return out


def cases() -> dict[str, tuple[Callable[..., object], list[mx.array]]]:
    """name -> (function of arrays, arrays); the function goes through personal.kernels."""
    logits, act = _arrays((2048, 8192), (2048, 1408))
    targets = mx.random.randint(0, 8192, (2048,), key=mx.random.key(9))
    q, k, v = _arrays((16, 8, 128, 64), (16, 8, 128, 64), (16, 8, 128, 64))
    gate, up = _arrays((2048, 1408), (2048, 1408))

    def sdpa(q: mx.array, k: mx.array, v: mx.array) -> mx.array:
        if kernels.applies(q):
            return attention(q, k, v, scale=0.125, mask="causal")
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask="causal")

    def glu(g: mx.array, x: mx.array) -> mx.array:
        return swiglu(g, x) if kernels.applies(g) else nn.silu(g) * x

    return {
        "softmax": (kernels.softmax, [logits]),
        "logsumexp": (kernels.logsumexp, [logits]),
        "sigmoid": (kernels.sigmoid, [act]),
        "cross_entropy": (
            mx.value_and_grad(lambda x: cross_entropy(x, targets).sum()),
            [logits],
        ),
        "attention": (
            mx.value_and_grad(lambda *a: (sdpa(*a) * a[2]).sum(), argnums=(0, 1, 2)),
            [q, k, v],
        ),
        "swiglu": (mx.value_and_grad(lambda *a: glu(*a).sum(), argnums=(0, 1)), [gate, up]),
    }


def _runner(fn: Callable[..., object], arrays: list[mx.array], on: bool) -> Callable[[], float]:
    # A fresh function object per runner: mx.compile caches traces by function identity.
    compiled = mx.compile(lambda *a: fn(*a))

    def run() -> float:
        with kernels.use(on):  # traced at the first call: decides which ops the graph holds
            start = time.perf_counter()
            mx.eval(compiled(*arrays))
            return time.perf_counter() - start

    run()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="*", help="case names (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, object] = {"kernels": kernels.status().reason}
    for name, (fn, arrays) in cases().items():
        if args.only and name not in args.only:
            continue
        fast, mlx_ops = _runner(fn, arrays, True), _runner(fn, arrays, False)
        times: dict[str, list[float]] = {"kernels": [], "mlx": []}
        for _ in range(args.repeats):
            times["kernels"].append(fast())
            times["mlx"].append(mlx_ops())
        ours, theirs = statistics.median(times["kernels"]), statistics.median(times["mlx"])
        result[name] = {
            "kernels_s": round(ours, 4), "mlx_s": round(theirs, 4),
            "speedup": round(theirs / ours, 2),
        }  # fmt: skip
        if not args.json:
            print(name, result[name])
    result["personal"] = personal.__version__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
