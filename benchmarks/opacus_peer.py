"""The PyTorch + PEFT + Opacus DP step, in a process of its own: the peer ``dp_step.py`` beats.

A user who picks PyTorch instead of ``personal`` runs it like this: a fresh process with
torch's own thread count and BLAS, no MLX, nothing of ours loaded. So this script imports
neither ``personal`` nor ``mlx``, and ``dp_step.py`` starts it with the environment it had
before ``import personal`` configured OpenBLAS.

Same model, batch and LoRA as the MLX side (``reference_config.py``): ``LlamaForCausalLM``
(SDPA attention), PEFT LoRA on the same seven linears (``lora_alpha = scale · r``), Opacus 1.6
``GradSampleModule`` (hooks mode: per-sample gradients of the LoRA ``nn.Linear`` layers, the
only trainable modules) and ``DPOptimizer`` (clip, Gaussian noise, Adam).

Protocol (so the parent can interleave it with its own steps): the peer builds the model, runs
two warm-up steps and prints ``ready``; then for every ``step`` line on stdin it runs one DP
step and prints its wall time in seconds; it exits at end of input.

    python benchmarks/opacus_peer.py --batch 16 --seq 128
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
from reference_config import CLIP, LEARNING_RATE, RANK, REFERENCE, SCALE, SIGMA, TARGETS


def build_step(batch: int, seq: int, scored: int) -> Callable[[], None]:
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

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
    lora = LoraConfig(
        r=RANK, lora_alpha=SCALE * RANK, lora_dropout=0.0, target_modules=list(TARGETS)
    )
    model = get_peft_model(LlamaForCausalLM(config), lora)
    model.train()
    module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = DPOptimizer(
        torch.optim.Adam(params, lr=LEARNING_RATE),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=batch,
        loss_reduction="mean",
    )
    rng = np.random.default_rng(0)  # the same tokens as the MLX side
    tokens = rng.integers(1, REFERENCE["vocab_size"], (batch, seq + 1), dtype=np.int32)
    ids = torch.from_numpy(tokens.astype(np.int64))
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    targets[:, : seq - scored] = -100  # the prompt: ignored by the loss, as users label it

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = module(input_ids=inputs).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--scored", type=int, help="positions scored at each row's end")
    args = parser.parse_args()
    # Opacus's hooks fire with frozen inputs (embeddings): PyTorch warns on every backward.
    warnings.simplefilter("ignore")
    step = build_step(args.batch, args.seq, args.scored or args.seq)
    step()
    step()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            continue
        start = time.perf_counter()
        step()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


if __name__ == "__main__":
    main()
