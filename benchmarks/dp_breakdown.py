"""Where a DP step's extra time goes: its parts timed one by one, interleaved, in one run.

On a base (default ``smollm2-135m-instruct``), batch 8 × 64, the last quarter of each row
scored (a chat reply's share), LoRA rank 8 on every linear:

* ``plain_grad_s``: the non-DP step's compiled gradient of the mean loss;
* ``dp_core_s``: the DP step's compiled core (per-example gradients through the expanded
  adapter, per-unit clipping, the clipped sum: :func:`personal.privacy.dpsgd.clipped_unit_sum`);
* ``noise_s``: one Gaussian draw for every trainable parameter (:mod:`personal.privacy.noise`,
  as many threads as ``PERSONAL_NOISE_THREADS`` allows);
* ``adam_s``: the optimiser's update (in both steps).

Run it with ``OPENBLAS_NUM_THREADS=1 PERSONAL_NOISE_THREADS=1`` to compare the parts on one
core. ``python benchmarks/dp_breakdown.py --json [--base NAME]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial

import personal
from personal.model.base import load_base
from personal.model.lora import LoRAConfig, inject_lora, trainable_parameter_count
from personal.privacy.dpsgd import clipped_unit_sum, scored_ce_loss
from personal.privacy.noise import GaussianNoise
from personal.privacy.sampler import pack_token_units

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from interleave import interleaved_medians
from mlx.utils import tree_flatten, tree_unflatten


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = load_base(args.base)
    model = base.model
    inject_lora(model, LoRAConfig(rank=8, scale=20))
    model.train()
    width, scored = args.seq, max(1, args.seq // 4)
    rng = np.random.default_rng(0)  # benchmark tokens, not private randomness
    tokens = rng.integers(1, base.vocab_size, (args.batch, width + 1), dtype=np.int32)
    units = pack_token_units(
        [[row.tolist()] for row in tokens], float(args.batch), width=width,
        loss_starts=[[width + 1 - scored]] * args.batch, scored_only=True,
    )  # fmt: skip
    state = [model.state, mx.random.state]
    value_and_grad = nn.value_and_grad(model, lambda m, *a: scored_ce_loss(m, *a).mean())
    plain = mx.compile(lambda *a: value_and_grad(model, *a), inputs=state, outputs=state)
    core = partial(mx.compile, inputs=state, outputs=state)(
        partial(clipped_unit_sum, model, scored_ce_loss)
    )
    clip, noise = mx.array(1.0), GaussianNoise()
    size = trainable_parameter_count(model)
    optimizer = optim.Adam(learning_rate=1e-4)
    optimizer.init(model.trainable_parameters())
    zeros = tree_unflatten([(k, mx.zeros_like(v)) for k, v in tree_flatten(
        model.trainable_parameters())])  # fmt: skip

    def adam() -> None:
        optimizer.update(model, zeros)
        mx.eval(model.parameters(), optimizer.state)

    runs: dict[str, Callable[[], object]] = {
        "plain_grad": lambda: mx.eval(plain(*units.arrays)),
        "dp_core": lambda: mx.eval(core(units.arrays, units.units, units.valid, clip)),
        "noise": lambda: noise.sample(size, 1.0),
        "adam": adam,
    }
    for run in runs.values():  # warm-up: compile, allocate
        run()
        run()
    median, _ = interleaved_medians(runs, args.repeats)
    result = {
        "base": base.name,
        "trainable_parameters": size,
        **{f"{key}_s": round(value, 4) for key, value in median.items()},
        "dp_core_over_plain": round(median["dp_core"] / median["plain_grad"], 3),
        "noise_over_plain": round(median["noise"] / median["plain_grad"], 3),
        "repeats": args.repeats,
        "personal": personal.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
