"""Time ``personal.model.evaluate.evaluate`` with logits at scored positions only against
every position's logits, in one run, on a base's own public gate set.

The general-loss gate, the validation of a round and the simulator's daily measures all call
``evaluate`` (or ``per_example_loss``) on chat-formatted text. On a real base most positions are
the template's system prompt and the request, which the loss never reads; projecting them to the
vocabulary (49 152 entries on SmolLM2) and taking a softmax there was most of an evaluation's
element-wise work. ``evaluate`` now projects only where a target is scored (when the model's
head splits off, :mod:`personal.model.head`); ``full`` below is the previous computation,
kept here as the baseline. Runs are interleaved (full, scored, repeat); medians.

    python benchmarks/evaluate.py --json                      # base-v1, its public gate set
    python benchmarks/evaluate.py --json --base smollm2-135m-instruct --pull

Prints ``{"full_s", "scored_s", "speedup", "loss_full", "loss_scored", "scored_share", ...}``;
with ``--pull`` also one gradient of the pull to the base on one public batch
(``continual.distill_to_base_loss``, which every DP step of a round adds) both ways:
``pull_full_s``, ``pull_scored_s``, ``pull_speedup``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import personal
from personal.model.base import load_base
from personal.model.batching import Batch
from personal.model.distill import logit_kd_loss
from personal.model.evaluate import evaluate
from personal.model.lora import (
    LoRAConfig,
    fresh_adapter_weights,
    inject_lora,
    lora_off,
    set_adapter_weights,
)
from personal.model.mlx_typing import scalar
from personal.public import public_batches, public_source
from personal.training.continual import distill_to_base_loss

import mlx.core as mx
import mlx.nn as nn
from interleave import emit, interleaved_medians


def full_evaluate(model: nn.Module, batches: list[Batch]) -> float:
    """The token-weighted loss from every position's logits (the computation before)."""
    total, tokens = 0.0, 0
    for batch in batches:
        logits = model(batch.inputs).astype(mx.float32)  # (B, T, V)
        losses = nn.losses.cross_entropy(logits, batch.targets, reduction="none")
        correct = (mx.argmax(logits, axis=-1) == batch.targets).astype(mx.float32)
        loss_sum, correct_sum = (losses * batch.mask).sum(), (correct * batch.mask).sum()
        mx.eval(loss_sum, correct_sum)
        total += scalar(loss_sum)
        tokens += batch.num_tokens
    return total / tokens


def full_pull(model: nn.Module, batch: Batch) -> mx.array:
    """KL(p_base ‖ p_model) from every position's logits (the pull's computation before)."""
    with lora_off(model):
        base_logits = mx.stop_gradient(model(batch.inputs))
    return logit_kd_loss(model(batch.inputs), base_logits, batch.mask)


def pull_gradient(loss: Callable[[nn.Module, Batch], mx.array], model: nn.Module, batch: Batch):
    """One gradient of the pull to the base, evaluated (what a DP step adds per step)."""
    value, grads = nn.value_and_grad(model, loss)(model, batch)
    mx.eval(value, grads)
    return value.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="base-v1")
    parser.add_argument("--examples", type=int, default=32, help="gate examples evaluated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--public-data", metavar="JSONL", help="gate text from a file (default: self-generated)"
    )
    parser.add_argument(
        "--pull", action="store_true",
        help="also time one gradient of the pull to the base (a DP round's public KL term)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base = load_base(args.base)
    base.model.eval()
    # The library's default public data: the base's own answers to generic prompts (cached).
    gate = list(public_source(args.public_data).for_base(base).gate)[: args.examples]
    batches = public_batches(base.tokenizer, gate)
    scored_tokens = sum(b.num_tokens for b in batches)
    positions = sum(int(b.inputs.size) for b in batches)
    runs: dict[str, Any] = {
        "full": lambda: full_evaluate(base.model, batches),
        "scored": lambda: evaluate(base.model, batches).loss,
    }
    if args.pull:  # one public batch's pull gradient, on a non-zero adapter (as mid-round)
        inject_lora(base.model, LoRAConfig(rank=8))
        adapter = fresh_adapter_weights(base.model, seed=0)
        set_adapter_weights(
            base.model, {k: v + 0.01 if k.endswith("lora_b") else v for k, v in adapter.items()}
        )
        pull = batches[0]
        runs["pull_full"] = lambda: pull_gradient(full_pull, base.model, pull)
        runs["pull_scored"] = lambda: pull_gradient(distill_to_base_loss, base.model, pull)
    losses = {key: run() for key, run in runs.items()}  # warm-up, and the values compared
    median, times = interleaved_medians(runs, args.repeats)
    result = {
        "base": base.name,
        "examples": len(gate),
        "positions": positions,
        "scored_share": round(scored_tokens / positions, 3),
        "full_s": round(median["full"], 4),
        "scored_s": round(median["scored"], 4),
        "speedup": round(median["full"] / median["scored"], 3),
        "loss_full": losses["full"],
        "loss_scored": losses["scored"],
        **(
            {
                "pull_full_s": round(median["pull_full"], 4),
                "pull_scored_s": round(median["pull_scored"], 4),
                "pull_speedup": round(median["pull_full"] / median["pull_scored"], 3),
                "pull_kl_full": losses["pull_full"],
                "pull_kl_scored": losses["pull_scored"],
            }
            if args.pull
            else {}
        ),
        "repeats": args.repeats,
        "personal": personal.__version__,
    }
    emit(result, times, args.json)


if __name__ == "__main__":
    main()
