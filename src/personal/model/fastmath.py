"""Element-wise maths that MLX's CPU kernels make slow, rewritten from fast primitives.

On the CPU, MLX evaluates ``exp`` (and ``logsumexp``, ``softmax`` and ``sigmoid``, which use it)
element by element at about 25 ns an element, 25× numpy's vectorised ``exp``; multiply-adds
fuse and vectorise inside ``mx.compile``. The softmax of a cross-entropy over the vocabulary is
a large such cost in a training step (``T · V`` exponentials per row, twice: forward and
backward). :func:`fast_exp` computes ``exp`` as ``2ⁿ · eʳ`` with the exponent bits written
directly and ``eʳ`` a degree-7 polynomial after a Cody-Waite reduction (relative error below
2⁻²² on the float32 range, tested), and :func:`cross_entropy` uses it for the forward and a
hand-written backward (``softmax − one_hot``), so nothing in the loss calls the slow kernel.
Measured in docs/performance.md; results equal ``mlx.nn.losses.cross_entropy`` within float32
tolerance.
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

#: ``PERSONAL_FAST_MATH=1`` opts in to the fast cross-entropy. Off by default: measured on the
#: reference step it made the whole step slower (DP 3.56 s vs 2.99 s) and raised peak memory
#: (1.84 GB vs 1.35 GB), although the loss alone is 2-3x faster (docs/performance.md).
FAST_ENV = "PERSONAL_FAST_MATH"

_LOG2E = 1.4426950408889634
# ln 2 split Cody-Waite style: n · _LN2_HI is exact in float32 for |n| < 2^9, so the reduced
# argument keeps full precision even for large |x|.
_LN2_HI, _LN2_LO = 0.693145751953125, 1.428606765330187e-06
# Taylor coefficients of e^r, highest degree first (degree 7: error < 1e-8 on |r| <= ln2/2).
_POLY = (1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 1 / 2, 1.0, 1.0)


def fast_exp(x: mx.array) -> mx.array:
    """``exp(x)`` in float32 from multiply-adds and exponent bits (fuses under ``mx.compile``).

    ``x = n · ln 2 + r`` with ``|r| <= ln2 / 2``; ``e^r`` by a degree-7 polynomial, ``2^n``
    written into the exponent bits. Inputs below ``-87.3`` give ``2^-126`` (about 1e-38)
    instead of a subnormal or zero and inputs above ``88`` give about ``3e38`` instead of
    infinity; a NaN stays NaN. Inside a softmax (the only use here) arguments are ``<= 0``
    after the max is subtracted, so the clamp never changes a sum that matters.
    """
    x = mx.clip(x.astype(mx.float32), -87.33, 88.0)  # clip keeps a NaN a NaN
    n = mx.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    p = mx.array(_POLY[0], dtype=mx.float32)
    for c in _POLY[1:]:
        p = p * r + c
    return p * ((n.astype(mx.int32) + 127) << 23).view(mx.float32)  # e^r · 2^n


def _cross_entropy_forward(logits: mx.array, targets: mx.array) -> tuple[mx.array, mx.array]:
    peak = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    total = fast_exp(logits - peak).sum(axis=-1, keepdims=True)
    lse = peak + mx.log(total)  # (..., 1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)
    return (lse - picked).squeeze(-1), lse


@mx.custom_function
def fast_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-position cross-entropy with :func:`fast_exp` forward and a hand-written backward."""
    return _cross_entropy_forward(logits, targets)[0]


@fast_cross_entropy.vjp
def _cross_entropy_vjp(
    primals: tuple[mx.array, mx.array], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, mx.array]:
    logits, targets = primals
    _, lse = _cross_entropy_forward(logits, targets)
    scale = cotangent[..., None]
    grad = fast_exp(logits - lse) * scale  # softmax · g
    index = targets[..., None]
    picked = mx.take_along_axis(grad, index, axis=-1) - scale  # minus one_hot · g
    grad = mx.put_along_axis(grad, index, picked, axis=-1)
    return grad.astype(logits.dtype), mx.zeros_like(targets)


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-position cross-entropy ``logsumexp(logits) − logits[target]`` (no reduction).

    The fast path has the same values and gradients as ``mlx.nn.losses.cross_entropy(...,
    reduction="none")`` within float32 tolerance, with :func:`fast_exp` in place of ``exp``.

    MLX's own unless ``PERSONAL_FAST_MATH=1`` is in the environment (read at trace time).

    Args:
        logits: ``(..., V)`` float32 scores.
        targets: ``(...)`` integer class indices.
    """
    if os.environ.get(FAST_ENV, "") in ("", "0"):
        return nn.losses.cross_entropy(logits, targets, reduction="none")
    loss = fast_cross_entropy(logits, targets)  # mx.custom_function's stub returns object
    if not isinstance(loss, mx.array):
        raise TypeError(f"fast_cross_entropy returned {type(loss).__name__}, not an array")
    return loss
