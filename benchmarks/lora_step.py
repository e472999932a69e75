"""Time one LoRA training step on the reference configuration.

llama-style: hidden 512, intermediate 1408, 8 layers, 8 heads, vocab 8192; sequence 128,
batch 16; LoRA rank 8, scale 20 on all seven linear layers of every block; Adam; compiled step.
Prints ``{"step_s", "tokens_per_s", "peak_bytes"}`` (median over timed steps). Later DP work
(per-example gradients) compares against this number.

    python benchmarks/lora_step.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import personal  # noqa: F401  (must precede mlx: loads the fast BLAS)
from personal.model.batching import Batch
from personal.model.fit import make_train_step
from personal.model.lora import trainable_parameter_count
from personal.runtime import blas_status, peak_memory_bytes, reset_peak_memory

import mlx.core as mx
import mlx.optimizers as optim
from reference import REFERENCE, reference_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = reference_model()
    optimizer = optim.Adam(learning_rate=1e-4)
    step = make_train_step(model, optimizer)
    tokens = mx.random.randint(0, REFERENCE["vocab_size"], (args.batch, args.seq + 1))
    batch = Batch(tokens[:, :-1], tokens[:, 1:], mx.ones((args.batch, args.seq)))
    for _ in range(2):  # warm-up: compile, allocate
        mx.eval(step(batch), model.parameters(), optimizer.state)
    reset_peak_memory()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        mx.eval(step(batch), model.parameters(), optimizer.state)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    result = {
        "step_s": round(step_s, 4),
        "tokens_per_s": round(args.batch * args.seq / step_s, 1),
        "peak_bytes": peak_memory_bytes(),
        "trainable_parameters": trainable_parameter_count(model),
        "blas": blas_status().backend,
    }
    if not args.json:
        print(f"median step {step_s * 1000:.1f} ms over {args.steps} steps")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
