"""Test helpers for step guards: a scripted guard and a public batch any drift makes worse."""

from __future__ import annotations

from personal.model.batching import Batch, make_batch

import mlx.core as mx
import mlx.nn as nn
import numpy as np


class Scripted:
    """A guard that rejects the first ``rejections`` updates it sees, then accepts."""

    def __init__(self, rejections: int, max_halvings: int = 3) -> None:
        self.left, self.max_halvings, self.seen = rejections, max_halvings, 0

    def accepts(self, model: nn.Module) -> bool:
        self.seen += 1
        self.left -= 1
        return self.left < 0


def greedy_public_batch(model: nn.Module, vocab: int) -> Batch:
    """Eight "public" sequences in the manner of self-generated public data: random prompts
    of 6 tokens answered greedily by the (bare) model, scored on the answers, so that any
    drift from the model raises their loss."""
    rng = np.random.default_rng(11)
    rows = [rng.integers(1, vocab, 6).tolist() for _ in range(8)]
    for _ in range(10):
        logits = model(mx.array(rows))[:, -1, :]
        for row, token in zip(rows, np.array(mx.argmax(logits, axis=-1)).tolist(), strict=True):
            row.append(int(token))
    return make_batch(rows, [6] * 8)
