"""The decoder body and the vocabulary projection of an mlx-lm model, apart.

A language model's loss only needs logits where a target is scored: in a personal interaction
the reply, not the system prompt and the request. Projecting every position to the vocabulary
(and taking a softmax over it) costs ``T · D · V`` multiply-adds and ``T · V`` exponentials per
row, the largest element-wise cost of a step on the CPU (docs/performance.md). Splitting the
model lets :func:`personal.privacy.dpsgd.scored_ce_loss` run the body on every position and the
head on the scored ones only.

Only families whose ``Model.__call__`` is exactly ``head(self.model(inputs))`` are split (the
head being ``lm_head`` or the tied ``embed_tokens.as_linear``, with no logit soft-capping or
scaling in between); for any other model :func:`output_head` returns ``None`` and callers
compute full logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

#: mlx-lm ``model_type`` values whose ``Model.__call__`` is ``head(self.model(inputs))``
#: (read in mlx-lm's sources; each is tested against the full forward in tests/model).
SPLIT_FAMILIES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "gemma3_text"}
)

Head = Callable[[mx.array], mx.array]


def model_type(model: nn.Module) -> str | None:
    """The mlx-lm ``model_type`` of ``model`` (``None`` when it names none)."""
    args: Any = getattr(model, "args", None)
    return getattr(args, "model_type", None) or getattr(model, "model_type", None)


def output_head(model: nn.Module) -> Head | None:
    """The map from the body's final hidden states ``(..., D)`` to logits ``(..., V)``.

    Returns:
        ``lm_head`` or the tied embedding's ``as_linear``; ``None`` when ``model`` is not of a
        family known to be ``head(model.model(inputs))`` (compute full logits then).
    """
    if model_type(model) not in SPLIT_FAMILIES or not isinstance(
        getattr(model, "model", None), nn.Module
    ):
        return None
    if "lm_head" in model:
        head: Head = model["lm_head"]
        return head
    embed = getattr(model.model, "embed_tokens", None)
    return embed.as_linear if embed is not None and hasattr(embed, "as_linear") else None


def scored_positions(mask: mx.array) -> tuple[mx.array, mx.array] | None:
    """The scored time indices of each row of a ``(B, T)`` loss mask, left-aligned.

    Returns:
        ``(positions, valid)``, both ``(B, K)`` with ``K`` the most scored positions of a row:
        the indices (padded with 0) and 1.0 where an index is real; ``None`` when nothing is
        scored. Reads the mask on the host: for eager code, not inside ``mx.compile``.
    """
    flags = np.asarray(mask) > 0
    counts = flags.sum(axis=1)
    width = int(counts.max()) if counts.size else 0
    if width == 0:
        return None
    positions = np.zeros((flags.shape[0], width), dtype=np.int32)
    valid = np.zeros((flags.shape[0], width), dtype=np.float32)
    for row, row_flags in enumerate(flags):
        where = np.flatnonzero(row_flags)
        positions[row, : where.size] = where
        valid[row, : where.size] = 1.0
    return mx.array(positions), mx.array(valid)


def split_positions(model: nn.Module, mask: mx.array) -> tuple[mx.array, mx.array] | None:
    """:func:`scored_positions` of ``mask`` when ``model``'s head splits off
    (:func:`output_head`); ``None`` when it does not or nothing is scored (compute every
    position's logits then). Eager code only, as :func:`scored_positions`."""
    return None if output_head(model) is None else scored_positions(mask)


def scored_logits(model: nn.Module, inputs: mx.array, positions: mx.array) -> mx.array:
    """Logits at ``positions`` only: ``model(inputs)[s, positions[s]]`` without the rest.

    Args:
        model: an mlx-lm model for which :func:`output_head` is not ``None``.
        inputs: ``(S, T)`` token ids.
        positions: ``(S, K)`` int32 time indices into ``inputs`` (``K <= T``).

    Returns:
        ``(S, K, V)`` logits.

    Raises:
        ValueError: the model's head cannot be split off (use ``model(inputs)``).
    """
    head = output_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no separable output head.")
    hidden = model.model(inputs)  # (S, T, D): the final normed hidden states
    return head(mx.take_along_axis(hidden, positions[..., None], axis=1))
