"""Evaluation helpers: per-example loss, perplexity and next-token accuracy.

All metrics are token-weighted over the batch mask (padding and prompt tokens excluded), so a
long example counts more than a short one, as in perplexity reported by mlx-lm. Logits are
computed at the scored positions only when the model's output head can be split off
(:mod:`personal.model.head`), which on a real chat base skips most of the vocabulary work.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from personal.model.batching import Batch
from personal.model.fastmath import cross_entropy
from personal.model.fit import masked_ce_loss
from personal.model.head import scored_logits, split_positions
from personal.model.mlx_typing import scalar

import mlx.core as mx
import mlx.nn as nn


def _scored(model: nn.Module, batch: Batch) -> tuple[mx.array, mx.array, mx.array] | None:
    """``(logits, targets, mask)`` at the scored positions only, ``(B, K, V)``, ``(B, K)``,
    ``(B, K)`` with ``K`` the most scored positions of a row; ``None`` when the model's head
    cannot be split off (:func:`~personal.model.head.output_head`) or nothing is scored.

    A prompt's positions (a chat template's system prompt and the request) are most of an
    interaction on a real base, and projecting them to the vocabulary and taking a softmax
    there is most of an evaluation's element-wise cost: the loss never reads them.
    """
    scored = split_positions(model, batch.mask)
    if scored is None:
        return None
    index, valid = scored
    logits = scored_logits(model, batch.inputs, index).astype(mx.float32)
    return logits, mx.take_along_axis(batch.targets, index, axis=1), valid


def scored_mean_loss(model: nn.Module, batch: Batch) -> mx.array:
    """The token-weighted mean cross-entropy over the batch mask (``masked_ce_loss``), with
    logits at scored positions only where the head splits off. Differentiable; eager code
    only (the mask is read on the host), e.g. the public replay and pull gradients."""
    scored = _scored(model, batch)
    if scored is None:
        return masked_ce_loss(model, batch)
    logits, targets, mask = scored
    return (cross_entropy(logits, targets) * mask).sum() / mx.maximum(mask.sum(), 1.0)


def token_losses(model: nn.Module, batch: Batch) -> mx.array:
    """Cross-entropy of every target token, ``(B, T)``; zero where the mask is zero."""
    logits = model(batch.inputs)  # (B, T, V)
    losses = nn.losses.cross_entropy(logits.astype(mx.float32), batch.targets, reduction="none")
    return losses * batch.mask


def per_example_loss(model: nn.Module, batch: Batch) -> mx.array:
    """Mean token loss of each example, ``(B,)`` (0 for an example with no masked tokens).

    Logits are computed at scored positions only where the model allows it (see
    :func:`_scored`); the values equal the full computation's within float32 rounding.
    """
    scored = _scored(model, batch)
    if scored is None:
        losses = token_losses(model, batch).sum(axis=1)
    else:
        logits, targets, mask = scored
        losses = (cross_entropy(logits, targets) * mask).sum(axis=1)
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
        scored = _scored(model, batch)
        if scored is None:
            logits = model(batch.inputs).astype(mx.float32)  # (B, T, V)
            targets, mask = batch.targets, batch.mask
        else:
            logits, targets, mask = scored  # (B, K, V): the scored positions only
        losses = cross_entropy(logits, targets)
        correct = (mx.argmax(logits, axis=-1) == targets).astype(mx.float32)
        loss_sum, correct_sum = (losses * mask).sum(), (correct * mask).sum()
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
