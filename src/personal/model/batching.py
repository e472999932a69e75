"""Turn token sequences into padded next-token-prediction batches.

Sequences are padded to a multiple of ``pad_multiple`` so that the handful of distinct shapes
MLX sees (and compiles kernels for) stays small as example lengths vary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from personal.model.mlx_typing import scalar

import mlx.core as mx
import numpy as np


@dataclass(frozen=True)
class Batch:
    """A padded batch for next-token prediction.

    Attributes:
        inputs: ``(B, T)`` int32 token ids (``sequence[:-1]``, padded).
        targets: ``(B, T)`` int32 next tokens (``sequence[1:]``, padded).
        mask: ``(B, T)`` float32, 1 where the target counts in the loss.
    """

    inputs: mx.array
    targets: mx.array
    mask: mx.array

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(scalar(self.mask.sum()))


def make_batch(
    sequences: Sequence[Sequence[int]],
    loss_starts: Sequence[int] | None = None,
    *,
    pad_id: int = 0,
    pad_multiple: int = 16,
    max_length: int | None = None,
) -> Batch:
    """Pad token sequences into a :class:`Batch`.

    Args:
        sequences: token ids per example (at least 2 tokens each).
        loss_starts: per example, the index of the first token whose prediction counts in the
            loss (e.g. where the response starts); ``None`` counts every token after the first.
        pad_id: id used for padding (its positions are masked out).
        pad_multiple: pad the time axis up to a multiple of this.
        max_length: truncate sequences to this many tokens first.
    """
    if not sequences:
        raise ValueError("make_batch needs at least one sequence")
    seqs = [list(s[:max_length] if max_length else s) for s in sequences]
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every sequence needs at least 2 tokens (one input, one target)")
    longest = max(len(s) for s in seqs) - 1
    width = -(-longest // pad_multiple) * pad_multiple
    inputs = np.full((len(seqs), width), pad_id, dtype=np.int32)
    targets = np.full((len(seqs), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), width), dtype=np.float32)
    for row, seq in enumerate(seqs):
        n = len(seq) - 1
        inputs[row, :n] = seq[:-1]
        targets[row, :n] = seq[1:]
        # Target t is token t+1: tokens from loss_start on are predicted at t >= loss_start-1.
        start = max(0, (loss_starts[row] if loss_starts is not None else 1) - 1)
        mask[row, start:n] = 1.0
    return Batch(mx.array(inputs), mx.array(targets), mx.array(mask))
