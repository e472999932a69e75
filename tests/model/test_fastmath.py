"""The fast exponential and cross-entropy equal MLX's own within float32 tolerance."""

from __future__ import annotations

from personal.model.fastmath import FAST_ENV, cross_entropy, fast_cross_entropy, fast_exp

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def test_fast_exp_is_float32_exact_over_the_softmax_range() -> None:
    x = mx.linspace(-87.0, 87.0, 200_001)
    got, want = np.array(fast_exp(x)), np.exp(np.array(x, dtype=np.float64))
    assert np.max(np.abs(got - want) / want) < 2.0**-22


def test_fast_exp_edges() -> None:
    got = fast_exp(mx.array([float("nan"), -1e30, 0.0, -np.inf])).tolist()
    assert np.isnan(got[0]) and 0 < got[1] < 1e-37 and got[2] == 1.0 and 0 <= got[3] < 1e-37


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 6),
    vocab=st.integers(2, 300),
    spread=st.floats(0.01, 60.0),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_and_its_gradient_equal_mlx(
    rows: int, vocab: int, spread: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    logits = mx.array((rng.standard_normal((rows, 3, vocab)) * spread).astype(np.float32))
    targets = mx.array(rng.integers(0, vocab, (rows, 3)).astype(np.int32))
    weights = mx.array(rng.random((rows, 3)).astype(np.float32))

    def ours(x: mx.array) -> mx.array:
        return (fast_cross_entropy(x, targets) * weights).sum()

    def theirs(x: mx.array) -> mx.array:
        return (nn.losses.cross_entropy(x, targets, reduction="none") * weights).sum()

    value, grad = mx.value_and_grad(ours)(logits)
    want_value, want_grad = mx.value_and_grad(theirs)(logits)
    np.testing.assert_allclose(value.item(), want_value.item(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.array(grad), np.array(want_grad), rtol=1e-5, atol=4e-6)
    compiled = mx.compile(mx.value_and_grad(ours))(logits)
    np.testing.assert_allclose(np.array(compiled[1]), np.array(want_grad), rtol=1e-5, atol=4e-6)


def test_exact_math_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    logits, targets = mx.array([[0.0, 1.0, 2.0]]), mx.array([2])
    monkeypatch.setenv(FAST_ENV, "0")
    exact = cross_entropy(logits, targets)
    monkeypatch.setenv(FAST_ENV, "1")
    assert abs(exact.item() - cross_entropy(logits, targets).item()) < 1e-6
