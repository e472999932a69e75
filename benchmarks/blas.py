"""Is MLX's matmul as fast as numpy's on this machine?

Measures a 2048x2048 float32 matmul in MLX (through personal's BLAS set-up) and in numpy, in
one process, interleaved, and prints the median GFLOP/s of each and their ratio. Goal:
``ratio >= 0.8``. Run with ``PERSONAL_BLAS=off`` to see MLX's reference BLAS.

    python benchmarks/blas.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import personal  # noqa: F401  (must precede mlx: loads the fast BLAS)
from personal.runtime import blas_status

import mlx.core as mx
import numpy as np


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()

    n = args.n
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    a_mx, b_mx = mx.array(a_np), mx.array(b_np)
    mx.eval(a_mx, b_mx)

    def mlx_matmul() -> None:
        mx.eval(a_mx @ b_mx)

    def numpy_matmul() -> None:
        a_np @ b_np

    mlx_matmul(), numpy_matmul()  # warm-up: thread pools, page faults
    mlx_times, np_times = [], []
    for _ in range(args.rounds):  # interleave so machine noise hits both alike
        mlx_times += _time(mlx_matmul, 1)
        np_times += _time(numpy_matmul, 1)
    flops = 2.0 * n**3
    mlx_gflops = flops / statistics.median(mlx_times) / 1e9
    numpy_gflops = flops / statistics.median(np_times) / 1e9
    status = blas_status()
    result = {
        "mlx_gflops": round(mlx_gflops, 2),
        "numpy_gflops": round(numpy_gflops, 2),
        "ratio": round(mlx_gflops / numpy_gflops, 3),
        "n": n,
        "blas": status.backend,
        "blas_library": status.library,
        "openblas_coretype": status.coretype,
    }
    if not args.json:
        print(f"MLX {mlx_gflops:.1f} GFLOP/s, numpy {numpy_gflops:.1f} GFLOP/s ({status.reason})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
