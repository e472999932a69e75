"""The training maths routed through the fast CPU kernels (:mod:`personal.kernels`).

Three places spend most of a CPU training step in MLX's slow element-wise ``exp``: the softmax
over the vocabulary in the loss, the attention softmax and SiLU in every block. Here:

* :func:`cross_entropy`: ``logsumexp(logits) − logits[target]``, the loss every training path
  uses (:mod:`personal.model.fit`, :mod:`personal.privacy.dpsgd`), with the kernels'
  ``logsumexp`` (its gradient is their ``softmax``).
* :func:`accelerate`: points an mlx-lm model's attention and SwiGLU at :func:`attention` and
  :func:`swiglu`, which compute the same functions with the kernels' ``softmax`` and ``sigmoid``.

Where the kernels don't apply (not float32, not the CPU, not Linux, or unavailable) MLX's own
ops run: the same values within float32 rounding, and the same gradients (tests/model).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from personal import kernels

import mlx.core as mx
import mlx.nn as nn


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-position cross-entropy ``logsumexp(logits) − logits[target]`` (no reduction).

    The same function as ``mlx.nn.losses.cross_entropy(..., reduction="none")``; float32 on the
    CPU goes through :func:`personal.kernels.logsumexp`.

    Args:
        logits: ``(..., V)`` scores.
        targets: ``(...)`` integer class indices.
    """
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return kernels.logsumexp(logits) - picked


def swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """``silu(gate) · x`` (mlx-lm's ``swiglu``) with the kernels' sigmoid."""
    return gate * kernels.sigmoid(gate) * x


def _causal_mask(queries: int, keys: int) -> mx.array:
    # Query i (the last `queries` of `keys` positions) sees keys 0 .. keys - queries + i, as
    # mx.fast.scaled_dot_product_attention's "causal" (aligned to the bottom right).
    rows = mx.arange(keys - queries, keys)[:, None]
    return rows >= mx.arange(keys)[None, :]


def _apply_mask(scores: mx.array, mask: mx.array, kv_heads: int, groups: int) -> mx.array:
    """``scores`` (B, H_kv, groups, L, S) masked by ``mask`` broadcastable to (B, H, L, S)."""
    mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape)) if mask.ndim < 4 else mask
    if mask.shape[1] == 1 or groups == 1:
        mask = mx.expand_dims(mask, 2)  # (B, 1 or H_kv, 1, L, S)
    else:
        mask = mask.reshape(mask.shape[0], kv_heads, groups, *mask.shape[2:])
    if mask.dtype == mx.bool_:
        return mx.where(mask, scores, mx.array(-mx.inf, dtype=scores.dtype))
    return scores + mask


def attention(
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    *,
    scale: float,
    mask: mx.array | str | None = None,
) -> mx.array:
    """Scaled dot-product attention, as ``mx.fast.scaled_dot_product_attention`` computes it
    (grouped-query heads, a ``"causal"``, boolean or additive mask), with the kernels' softmax.

    Shapes: queries ``(B, H, L, D)``, keys and values ``(B, H_kv, S, D)`` with ``H_kv`` dividing
    ``H``; returns ``(B, H, L, D)``.
    """
    batch, heads, length, dim = queries.shape
    kv_heads, keys_length = keys.shape[1], keys.shape[2]
    groups = heads // kv_heads
    # Grouped heads share their key/value head: (B, H_kv, groups, L, D) against (B, H_kv, 1, S, D).
    q = (queries * scale).reshape(batch, kv_heads, groups, length, dim)
    scores = q @ mx.expand_dims(keys, 2).swapaxes(-1, -2)  # (B, H_kv, groups, L, S)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}")
        mask = _causal_mask(length, keys_length)
    if mask is not None:
        scores = _apply_mask(scores, mask, kv_heads, groups)
    weights = kernels.softmax(scores)
    out = weights @ mx.expand_dims(values, 2)  # (B, H_kv, groups, L, D)
    return out.reshape(batch, heads, length, values.shape[-1])


def _fast_sdpa(original: Callable[..., mx.array]) -> Callable[..., mx.array]:
    """mlx-lm's ``scaled_dot_product_attention(q, k, v, cache, scale, mask, sinks=None)`` with
    :func:`attention` where it applies; quantized caches and attention sinks keep ``original``."""

    def scaled_dot_product_attention(
        queries: mx.array,
        keys: mx.array,
        values: mx.array,
        cache: Any,
        scale: float,
        mask: mx.array | str | None,
        sinks: mx.array | None = None,
    ) -> mx.array:
        if sinks is not None or hasattr(cache, "bits") or not kernels.applies(queries):
            return original(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)
        return attention(queries, keys, values, scale=scale, mask=mask)

    scaled_dot_product_attention._personal_original = original  # type: ignore[attr-defined]
    return scaled_dot_product_attention


def _fast_swiglu(original: Callable[..., mx.array]) -> Callable[..., mx.array]:
    def fast(gate: mx.array, x: mx.array) -> mx.array:
        return swiglu(gate, x) if kernels.applies(gate) else original(gate, x)

    fast._personal_original = original  # type: ignore[attr-defined]
    return fast


def accelerate(model: nn.Module) -> bool:
    """Route ``model``'s attention and SwiGLU through the fast kernels; True if they apply.

    mlx-lm's model modules (and ``switch_layers``, for MoE experts) call the functions
    ``scaled_dot_product_attention`` and ``swiglu`` by their module-level names, so in every
    ``mlx_lm.models`` module that ``model``'s layers come from, those names are rebound (once
    per module and process) to wrappers that use the kernels for float32 CPU arrays and the
    original function for anything else. The functions computed are unchanged (float32
    rounding aside), so other models of the same architecture in the process compute what
    they did before.
    """
    if not kernels.status().available:
        return False
    names = {type(model).__module__} | {type(m).__module__ for _, m in model.named_modules()}
    for module_name in sorted(n for n in names if n.startswith("mlx_lm.models.")):
        module = sys.modules.get(module_name)
        for name, wrap in (("scaled_dot_product_attention", _fast_sdpa), ("swiglu", _fast_swiglu)):
            current = getattr(module, name, None)
            if callable(current) and not hasattr(current, "_personal_original"):
                setattr(module, name, wrap(current))
    return True
