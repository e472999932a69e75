"""Evaluation helpers: per-example loss, perplexity and next-token accuracy.

All metrics are token-weighted over the batch mask (padding and prompt tokens excluded), so a
long example counts more than a short one, as in perplexity reported by mlx-lm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from personal.model.batching import Batch
from personal.model.mlx_typing import scalar

import mlx.core as mx
import mlx.nn as nn


def token_losses(model: nn.Module, batch: Batch) -> mx.array:
    """Cross-entropy of every target token, ``(B, T)``; zero where the mask is zero."""
    logits = model(batch.inputs)  # (B, T, V)
    losses = nn.losses.cross_entropy(logits.astype(mx.float32), batch.targets, reduction="none")
    return losses * batch.mask


def per_example_loss(model: nn.Module, batch: Batch) -> mx.array:
    """Mean token loss of each example, ``(B,)`` (0 for an example with no masked tokens)."""
    losses = token_losses(model, batch).sum(axis=1)
    counts = batch.mask.sum(axis=1)
    return losses / mx.maximum(counts, 1.0)


@dataclass(frozen=True)
class EvalResult:
    """Token-weighted metrics over a set of batches."""

    loss: float
    accuracy: float
    tokens: int
    examples: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def to_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "accuracy": self.accuracy,
            "tokens": self.tokens,
            "examples": self.examples,
        }


def evaluate(model: nn.Module, batches: Iterable[Batch]) -> EvalResult:
    """Loss, perplexity and next-token accuracy of ``model`` over ``batches``."""
    total_loss = total_correct = 0.0
    tokens = examples = 0
    for batch in batches:
        logits = model(batch.inputs).astype(mx.float32)  # (B, T, V)
        losses = nn.losses.cross_entropy(logits, batch.targets, reduction="none")
        correct = (mx.argmax(logits, axis=-1) == batch.targets).astype(mx.float32)
        loss_sum, correct_sum = (losses * batch.mask).sum(), (correct * batch.mask).sum()
        mx.eval(loss_sum, correct_sum)
        total_loss += scalar(loss_sum)
        total_correct += scalar(correct_sum)
        tokens += batch.num_tokens
        examples += batch.size
    if tokens == 0:
        raise ValueError("evaluate() got no target tokens (empty batches or all-zero masks)")
    return EvalResult(total_loss / tokens, total_correct / tokens, tokens, examples)


def perplexity(model: nn.Module, batches: Iterable[Batch]) -> float:
    """exp(token-weighted mean loss)."""
    return evaluate(model, batches).perplexity


def next_token_accuracy(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Fraction of target tokens the greedy prediction gets right."""
    return evaluate(model, batches).accuracy
