"""Time one DP-SGD step against the non-DP step and against PyTorch + Opacus, in one run.

Reference configuration of ``benchmarks/lora_step.py``: llama, hidden 512, intermediate 1408,
8 layers, 8 heads, vocab 8192; sequence 128, batch 16; LoRA rank 8, scale 20 on all seven
linear layers of every block; Adam.

* ``nondp_step_s``: :func:`personal.model.train.make_train_step` (compiled, batched gradient).
* ``dp_step_s``: :func:`personal.privacy.dpsgd.make_dp_step` on 16 one-example units: vmap
  per-example gradients, per-unit clipping, CSPRNG noise with snapping, division by the
  expected batch size, Adam. Everything a real step does, noise included.
* ``torch_opacus_step_s``: the same model in PyTorch (``transformers.LlamaForCausalLM``), the
  same LoRA through PEFT (``r=8, lora_alpha=160`` so that alpha/r = 20, same seven targets),
  and Opacus 1.6: ``GradSampleModule`` (hooks mode) computes per-sample gradients
  of the LoRA ``nn.Linear`` layers (the only trainable modules: embedding, norms and rotary
  parts are frozen, so Opacus never needs hooks for them) and ``DPOptimizer`` clips, noises
  and steps Adam. Default (non-secure) Opacus noise; ``torch.set_num_threads(cpu count)``.

Steps are interleaved (non-DP, DP, Opacus, repeat) so that load from other processes hits all
three alike; medians are reported. Peak bytes are MLX's allocator peak over one step of each.

    python benchmarks/dp_step.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable

import personal
from personal.model.batching import Batch
from personal.model.lora import trainable_parameter_count
from personal.model.train import make_train_step
from personal.privacy.dpsgd import DPConfig, make_dp_step
from personal.privacy.sampler import UnitBatch, pack_token_units
from personal.runtime import blas_status, peak_memory_bytes, reset_peak_memory

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from reference import REFERENCE, TARGETS, reference_model

SIGMA, CLIP = 1.0, 1.0


def mlx_steps(tokens: np.ndarray) -> tuple[Callable[[], None], Callable[[], None], int]:
    """(non-DP step, DP step, trainable parameter count) on one MLX model."""
    model = reference_model()
    batch_size, width = tokens.shape[0], tokens.shape[1] - 1
    plain_opt = optim.Adam(learning_rate=1e-4)
    plain = make_train_step(model, plain_opt)
    toks = mx.array(tokens)
    batch = Batch(toks[:, :-1], toks[:, 1:], mx.ones((batch_size, width)))
    dp = make_dp_step(model, optim.Adam(learning_rate=1e-4), DPConfig(SIGMA, CLIP))
    units: UnitBatch = pack_token_units(
        [[row.tolist()] for row in tokens], float(batch_size), width=width
    )

    def run_plain() -> None:
        mx.eval(plain(batch), model.parameters(), plain_opt.state)

    def run_dp() -> None:
        dp(units)

    return run_plain, run_dp, trainable_parameter_count(model)


def opacus_step(tokens: np.ndarray) -> Callable[[], None]:
    """The same step in PyTorch + PEFT + Opacus (imported here: torch is heavy)."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    # Opacus's hooks fire with frozen inputs (embeddings): PyTorch warns on every backward.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=REFERENCE["hidden_size"],
        intermediate_size=REFERENCE["intermediate_size"],
        num_hidden_layers=REFERENCE["num_hidden_layers"],
        num_attention_heads=REFERENCE["num_attention_heads"],
        num_key_value_heads=REFERENCE["num_key_value_heads"],
        vocab_size=REFERENCE["vocab_size"],
        rms_norm_eps=REFERENCE["rms_norm_eps"],
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=8, lora_alpha=160, lora_dropout=0.0, target_modules=list(TARGETS))
    model = get_peft_model(base, lora)
    model.train()
    # GradSampleModule is Opacus's hook-based ("hooks" mode) per-sample gradient wrapper.
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = DPOptimizer(
        torch.optim.Adam(params, lr=1e-4),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=tokens.shape[0],
        loss_reduction="mean",
    )
    ids = torch.from_numpy(tokens.astype(np.int64))
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = module(input_ids=inputs).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()

    return run


def peak_of(step: Callable[[], None]) -> int:
    reset_peak_memory()
    step()
    return peak_memory_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--no-torch", action="store_true", help="skip the Opacus baseline")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)  # benchmark tokens, not private randomness
    tokens = rng.integers(1, REFERENCE["vocab_size"], (args.batch, args.seq + 1), dtype=np.int32)
    run_plain, run_dp, trainable = mlx_steps(tokens)
    runs = {"nondp": run_plain, "dp": run_dp}
    if not args.no_torch:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus's secure-mode and hook notices
            runs["torch_opacus"] = opacus_step(tokens)
    for run in runs.values():  # warm-up: compile, allocate
        run()
        run()
    peaks = {name: peak_of(runs[name]) for name in ("nondp", "dp")}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    opacus = median.get("torch_opacus")
    result = {
        "nondp_step_s": round(median["nondp"], 4),
        "dp_step_s": round(median["dp"], 4),
        "torch_opacus_step_s": None if opacus is None else round(opacus, 4),
        "nondp_peak_bytes": peaks["nondp"],
        "dp_peak_bytes": peaks["dp"],
        "dp_over_nondp": round(median["dp"] / median["nondp"], 3),
        "dp_peak_over_nondp": round(peaks["dp"] / peaks["nondp"], 3),
        "trainable_parameters": trainable,
        "blas": blas_status().backend,
        "cpu_count": os.cpu_count(),
        "steps": args.steps,
        "personal": personal.__version__,
    }
    if not args.json:
        for name, values in times.items():
            print(name, " ".join(f"{v:.3f}" for v in values))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
