"""Time one DP-SGD step against the non-DP step and against PyTorch + Opacus, in one run.

Reference configuration (``reference_config.py``, shared with ``lora_step.py``): llama, hidden
512, intermediate 1408, 8 layers, 8 heads, vocab 8192; sequence 128, batch 16; LoRA rank 8,
scale 20 on all seven linear layers of every block; Adam.

* ``nondp_step_s``: a compiled step of one batched gradient and Adam (what
  :func:`personal.model.fit.make_train_step` does) on the same arrays and loss as the DP step.
* ``dp_step_s``: :func:`personal.privacy.dpsgd.make_dp_step` on 16 one-example units:
  per-example gradients in one batched backward pass (an expanded adapter,
  :mod:`personal.model.per_example`), per-unit clipping, CSPRNG noise with snapping, division
  by the expected batch size, Adam. Everything a real step does, noise included.
* ``torch_opacus_step_s``: the same model, LoRA and batch in PyTorch + PEFT + Opacus, run as a
  user would run it: in a process of its own (``opacus_peer.py``), started with the
  environment this process had before ``import personal`` configured OpenBLAS, with torch's
  own threads and BLAS and no MLX loaded. Only for the reference configuration.

Other bases: ``--arch mixtral`` (or any mlx-lm model type) builds a random model of the
reference size (MoE: 4 experts, 2 per token), ``--quantize`` makes it 4-bit (group 32), and
``--base NAME|DIR`` loads any base ``load_base`` accepts (e.g. ``smollm2-135m-instruct``).
LoRA then goes on every linear layer (MoE experts included, routers excluded). A quantized
base trains as is (``--quantized-path keep``) or on a float32 copy made at load
(``--quantized-path dequantize``).

``--noise-baseline`` also times the DP step with its noise drawn five ways: on one thread or
on every core, after the gradients or prefetched beside them (``dp_noise_1thread_step_s``,
``dp_noise_threads_step_s``, ``dp_noise_threads_prefetch_step_s``,
``dp_noise_1thread_prefetch_step_s``), and with numpy's transform instead of the C++ one of
``personal.kernels`` (``dp_noise_numpy_step_s``, as before it); and the draw alone on every
core, on one, and with numpy's transform (``noise_draw_s``, ``noise_draw_1thread_s``,
``noise_draw_numpy_s``).

``--scored-share S`` scores only the last ``S`` of each row's positions (the reply of a chat
interaction; 0.25 is what the simulator's interactions measure on smollm2-135m-instruct's chat
template, 0.58 on the bundled format). Both MLX steps then project to the vocabulary at those
positions only (:func:`personal.privacy.dpsgd.scored_ce_loss`, as a training round does); the
peer labels the rest ``-100``, as a PyTorch user would, and computes every position's logits.

Steps are interleaved (non-DP, DP, Opacus, repeat) so that load from other processes hits all
three alike; medians are reported. Peak bytes are MLX's allocator peak over one step of each.

    python benchmarks/dp_step.py --json
    python benchmarks/dp_step.py --json --arch mixtral --quantize --no-torch
    python benchmarks/dp_step.py --json --base smollm2-135m-instruct --batch 8 --seq 64
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

# What a user's own PyTorch process would see: the environment before `import personal` sets
# OpenBLAS's core type for MLX (see personal.runtime).
CLEAN_ENV = dict(os.environ)

import personal  # noqa: E402
from personal import kernels  # noqa: E402
from personal.model.fastmath import accelerate  # noqa: E402
from personal.model.head import output_head  # noqa: E402
from personal.model.lora import LoRAConfig, inject_lora, trainable_parameter_count  # noqa: E402
from personal.privacy.dpsgd import (  # noqa: E402
    DPConfig,
    DPStep,
    example_ce_loss,
    make_dp_step,
    scored_ce_loss,
)
from personal.privacy.noise import NOISE_THREADS_ENV, GaussianNoise  # noqa: E402
from personal.privacy.sampler import UnitBatch, pack_token_units  # noqa: E402
from personal.runtime import blas_status, peak_memory_bytes, reset_peak_memory  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from interleave import emit  # noqa: E402
from mlx_lm.utils import dequantize_model, quantize_model  # noqa: E402
from reference import reference_model  # noqa: E402
from reference_config import CLIP, LEARNING_RATE, RANK, REFERENCE, SCALE, SIGMA  # noqa: E402

HERE = Path(__file__).resolve().parent
# MoE variants of the reference size: 4 experts, 2 per token.
MOE = {
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 704,
        "head_dim": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
    },
}


def build_model(args: argparse.Namespace) -> tuple[nn.Module, int, str]:
    """(model with LoRA in train mode, vocabulary size, description) for the options."""
    if args.base is None and args.arch is None and not args.quantize:
        return reference_model(), int(REFERENCE["vocab_size"]), "reference"
    if args.base is not None:
        from personal.model.base import load_base

        base = load_base(args.base)
        model, vocab, name = base.model, base.vocab_size, base.name
        quantized = base.quantization is not None
    else:
        arch = args.arch or "llama"
        config = {**REFERENCE, "model_type": arch, **MOE.get(arch, {})}
        module = importlib.import_module(f"mlx_lm.models.{arch}")
        mx.random.seed(0)
        model = module.Model(module.ModelArgs.from_dict(config))
        mx.eval(model.parameters())
        accelerate(model)  # as load_base does
        if args.quantize:
            model, _ = quantize_model(model, config, group_size=32, bits=4)
        vocab, name, quantized = int(config["vocab_size"]), arch, args.quantize
    if quantized and args.quantized_path == "dequantize":
        model = dequantize_model(model)
    elif quantized and args.quantized_path == "on-the-fly":
        dequantize_per_call(model)
    name += f"-4bit-{args.quantized_path}" if quantized else ""
    inject_lora(model, LoRAConfig(rank=RANK, scale=SCALE))
    model.train()
    return model, vocab, name


class _DequantizingLinear(nn.QuantizedLinear):
    """A quantized linear that dequantizes its weight at every call and multiplies in float32:
    memory stays that of the 4-bit weights, the matmul is the fast float32 one."""

    def __call__(self, x: mx.array) -> mx.array:
        weight = mx.dequantize(
            self["weight"], self["scales"], self.get("biases"), self.group_size, self.bits
        )
        y = x @ weight.T
        return y + self["bias"] if "bias" in self else y


def dequantize_per_call(model: nn.Module) -> None:
    """Switch every ``QuantizedLinear`` of ``model`` to :class:`_DequantizingLinear`."""
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = _DequantizingLinear


def mlx_steps(
    model: nn.Module, tokens: np.ndarray, scored: int
) -> tuple[Callable[[], None], Callable[[], None], DPStep]:
    """(non-DP step, DP step, the DP step object) on one MLX model; the last ``scored``
    positions of every row count in the loss. Both steps compute logits at scored positions
    only where the model allows it, as a training round does
    (:func:`personal.model.head.output_head`)."""
    batch_size, width = tokens.shape[0], tokens.shape[1] - 1
    starts = [[width + 1 - scored]] * batch_size
    compact = output_head(model) is not None
    units: UnitBatch = pack_token_units(
        [[row.tolist()] for row in tokens], float(batch_size), width=width,
        loss_starts=starts, scored_only=compact,
    )  # fmt: skip
    loss = scored_ce_loss if compact else example_ce_loss
    dp = make_dp_step(
        model, optim.Adam(learning_rate=LEARNING_RATE), DPConfig(SIGMA, CLIP), loss=loss
    )
    plain_opt = optim.Adam(learning_rate=LEARNING_RATE)
    plain = make_plain_step(model, plain_opt, loss)

    def run_plain() -> None:
        mx.eval(plain(*units.arrays), model.parameters(), plain_opt.state)

    def run_dp() -> None:
        dp(units)

    return run_plain, run_dp, dp


def make_plain_step(
    model: nn.Module, optimizer: optim.Optimizer, loss: Callable[..., mx.array]
) -> Callable[..., mx.array]:
    """A compiled non-DP step: the mean of the per-row ``loss``, one gradient, the optimiser
    (what :func:`personal.model.fit.make_train_step` does, on the DP step's arrays)."""

    def mean_loss(model: nn.Module, *arrays: mx.array) -> mx.array:
        return loss(model, *arrays).mean()

    loss_and_grad = nn.value_and_grad(model, mean_loss)

    def step(*arrays: mx.array) -> mx.array:
        value, grads = loss_and_grad(model, *arrays)
        optimizer.update(model, grads)
        return value

    state = [model.state, optimizer.state, mx.random.state]
    return partial(mx.compile, inputs=state, outputs=state)(step)


class OpacusPeer:
    """``opacus_peer.py`` in its own process; :meth:`step` runs one step there and returns
    the time the peer measured."""

    def __init__(self, batch: int, seq: int, scored: int) -> None:
        command = [sys.executable, str(HERE / "opacus_peer.py"), "--batch", str(batch)]
        self.process = subprocess.Popen(
            [*command, "--seq", str(seq), "--scored", str(scored)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=CLEAN_ENV,
            cwd=HERE,
        )
        self._expect("ready")

    def _expect(self, what: str | None = None) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line or (what is not None and line != what):
            raise RuntimeError(f"opacus_peer.py failed (said {line!r}); run it by hand to see")
        return line

    def step(self) -> float:
        assert self.process.stdin is not None
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return float(self._expect())

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def without_kernels(run: Callable[[], None]) -> Callable[[], None]:
    """``run`` traced and run with :mod:`personal.kernels` off (MLX's own ops)."""

    def run_without() -> None:
        with kernels.use(False):
            run()

    return run_without


#: ``--noise-baseline``'s DP steps: (label, threads, prefetch, C++ transform).
NOISE_SETTINGS = (
    ("dp_noise_1thread", 1, False, True),
    ("dp_noise_threads", None, False, True),  # the default
    ("dp_noise_threads_prefetch", None, True, True),
    ("dp_noise_1thread_prefetch", 1, True, True),
    ("dp_noise_numpy", None, False, False),  # as every draw was made before the C++ transform
)


def noise_setting(
    run: Callable[[], None],
    threads: int | None,
    step: DPStep | None = None,
    prefetch: bool = False,
    vector: bool = True,
) -> Callable[[], None]:
    """``run`` with the DP noise drawn on ``threads`` threads (``None``: the default, every
    core), for a DP ``step`` prefetched beside the gradients or drawn after them, and with the
    C++ transform of ``personal.kernels`` (``vector``, the default) or numpy's."""

    def run_with() -> None:
        if not vector:  # numpy's transform: the kernel declines, as when it is not built
            with mock.patch.object(kernels, "box_muller_sums", lambda words, out: False):
                noise_setting(run, threads, step, prefetch)()
            return
        before = os.environ.get(NOISE_THREADS_ENV)
        if threads is not None:
            os.environ[NOISE_THREADS_ENV] = str(threads)
        default = None if step is None else step.prefetch_noise
        if step is not None:
            step.prefetch_noise = prefetch
        try:
            run()
        finally:
            if step is not None and default is not None:
                step.prefetch_noise = default
            if before is None:
                os.environ.pop(NOISE_THREADS_ENV, None)
            else:
                os.environ[NOISE_THREADS_ENV] = before

    return run_with


def peak_of(step: Callable[[], None]) -> int:
    reset_peak_memory()
    step()
    return peak_memory_bytes()


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--base", help="a bundled name, a known real model or a directory")
    parser.add_argument("--arch", help="a random model of the reference size (mlx-lm type)")
    parser.add_argument("--quantize", action="store_true", help="4-bit (with --arch)")
    parser.add_argument(
        "--quantized-path", choices=("keep", "dequantize", "on-the-fly"), default="keep"
    )
    parser.add_argument(
        "--scored-share", type=float, default=1.0,
        help="share of each row's positions scored in the loss (the reply at its end); "
        "1.0: every position (the reference); chat data on smollm2 measured 0.25",
    )  # fmt: skip
    parser.add_argument("--no-torch", action="store_true", help="skip the Opacus peer")
    parser.add_argument(
        "--kernels-baseline", action="store_true",
        help="also time both steps on MLX's own ops (personal.kernels off), interleaved",
    )  # fmt: skip
    parser.add_argument(
        "--noise-baseline", action="store_true",
        help="also time the DP step with its noise drawn on 1 thread or every core, after or "
        "beside the gradients, and the draw alone",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model, vocab, name = build_model(args)
    rng = np.random.default_rng(0)  # benchmark tokens, not private randomness
    tokens = rng.integers(1, vocab, (args.batch, args.seq + 1), dtype=np.int32)
    if not 0 < args.scored_share <= 1:
        parser.error("--scored-share must be in (0, 1]")
    scored = max(1, math.ceil(args.scored_share * args.seq))
    run_plain, run_dp, dp_step = mlx_steps(model, tokens, scored)
    runs: dict[str, Callable[[], float]] = {
        "nondp": lambda: timed(run_plain),
        "dp": lambda: timed(run_dp),
    }
    warm = [run_plain, run_dp]
    if args.kernels_baseline:  # the same steps traced and run without personal.kernels
        ops_plain, ops_dp = (without_kernels(run) for run in mlx_steps(model, tokens, scored)[:2])
        runs["nondp_mlx_ops"] = lambda: timed(ops_plain)
        runs["dp_mlx_ops"] = lambda: timed(ops_dp)
        warm += [ops_plain, ops_dp]
    if args.noise_baseline:  # the same DP step, its noise drawn as before; the draw alone
        for label, threads, prefetch, vector in NOISE_SETTINGS:
            setting = noise_setting(run_dp, threads, dp_step, prefetch, vector)
            runs[label] = partial(timed, setting)
        size, source = trainable_parameter_count(model), GaussianNoise()

        def draw() -> None:
            source.sample(size, SIGMA * CLIP)

        runs["noise_draw"] = lambda: timed(draw)
        runs["noise_draw_1thread"] = lambda: timed(noise_setting(draw, 1))
        runs["noise_draw_numpy"] = lambda: timed(noise_setting(draw, None, vector=False))
    peer = None
    if name == "reference" and not args.no_torch:
        peer = OpacusPeer(args.batch, args.seq, scored)  # warms itself up
        runs["torch_opacus"] = peer.step
    for run in warm:  # warm-up: compile, allocate
        run()
        run()
    peaks = {"nondp": peak_of(run_plain), "dp": peak_of(run_dp)}
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(args.steps):
        for key, run in runs.items():
            times[key].append(run())
    if peer is not None:
        peer.close()
    median = {key: statistics.median(values) for key, values in times.items()}
    opacus = median.get("torch_opacus")
    result: dict[str, Any] = {
        "model": name,
        "nondp_step_s": round(median["nondp"], 4),
        "dp_step_s": round(median["dp"], 4),
        "torch_opacus_step_s": None if opacus is None else round(opacus, 4),
        "nondp_peak_bytes": peaks["nondp"],
        "dp_peak_bytes": peaks["dp"],
        "dp_over_nondp": round(median["dp"] / median["nondp"], 3),
        "dp_peak_over_nondp": round(peaks["dp"] / peaks["nondp"], 3),
        "dp_over_torch_opacus": None if opacus is None else round(median["dp"] / opacus, 3),
        "kernels": kernels.status().available,
        "batch": args.batch,
        "seq": args.seq,
        "scored_positions": scored,
        "scored_only_logits": output_head(model) is not None,
        "trainable_parameters": trainable_parameter_count(model),
        "blas": blas_status().backend,
        "cpu_count": os.cpu_count(),
        "steps": args.steps,
        "personal": personal.__version__,
    }
    if args.kernels_baseline:
        result["nondp_mlx_ops_step_s"] = round(median["nondp_mlx_ops"], 4)
        result["dp_mlx_ops_step_s"] = round(median["dp_mlx_ops"], 4)
        result["dp_kernels_speedup"] = round(median["dp_mlx_ops"] / median["dp"], 3)
        result["nondp_kernels_speedup"] = round(median["nondp_mlx_ops"] / median["nondp"], 3)
    if args.noise_baseline:
        for label, *_ in NOISE_SETTINGS:
            result[f"{label}_step_s"] = round(median[label], 4)
        for label in ("noise_draw", "noise_draw_1thread", "noise_draw_numpy"):
            result[f"{label}_s"] = round(median[label], 4)
    emit(result, times, args.json)


if __name__ == "__main__":
    main()
