"""The training maths through personal.kernels equals MLX's own: the loss, attention, SwiGLU
and whole per-example DP gradients on tiny dense, 4-bit and MoE models (float32 tolerance)."""

from __future__ import annotations

import sys

from personal import kernels
from personal.model import fastmath
from personal.model.fastmath import accelerate, attention, cross_entropy
from personal.model.lora import LoRAConfig, inject_lora
from personal.model.per_example import per_example_grads
from personal.privacy.dpsgd import example_ce_loss
from personal.privacy.sampler import pack_token_units

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_tiny_model, perturb_lora_b

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux CPU kernels")


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    vocab=st.integers(2, 300),
    spread=st.floats(0.01, 60.0),
    seed=st.integers(0, 2**16),
    on=st.booleans(),
)
def test_cross_entropy_and_its_gradient_equal_mlx(
    rows: int, vocab: int, spread: float, seed: int, on: bool
) -> None:
    rng = np.random.default_rng(seed)
    logits = mx.array((rng.standard_normal((rows, 3, vocab)) * spread).astype(np.float32))
    targets = mx.array(rng.integers(0, vocab, (rows, 3)).astype(np.int32))
    weights = mx.array(rng.random((rows, 3)).astype(np.float32))

    def ours(x: mx.array) -> mx.array:
        return (cross_entropy(x, targets) * weights).sum()

    def theirs(x: mx.array) -> mx.array:
        return (nn.losses.cross_entropy(x, targets, reduction="none") * weights).sum()

    with kernels.use(on):
        value, grad = mx.value_and_grad(ours)(logits)
        compiled = mx.compile(mx.value_and_grad(lambda x: ours(x)))(logits)
    want_value, want_grad = mx.value_and_grad(theirs)(logits)
    np.testing.assert_allclose(value.item(), want_value.item(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.array(grad), np.array(want_grad), rtol=1e-5, atol=4e-6)
    np.testing.assert_allclose(np.array(compiled[1]), np.array(want_grad), rtol=1e-5, atol=4e-6)


@settings(max_examples=30, deadline=None)
@given(
    kv_heads=st.sampled_from([1, 2, 4]),
    groups=st.sampled_from([1, 2]),
    length=st.integers(1, 9),
    extra_keys=st.integers(0, 5),
    mask_kind=st.sampled_from(["none", "causal", "bool", "additive", "per-head"]),
    seed=st.integers(0, 2**16),
)
def test_attention_and_its_gradients_equal_mlx_fast_sdpa(
    kv_heads: int, groups: int, length: int, extra_keys: int, mask_kind: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    heads, keys_length, dim, batch = kv_heads * groups, length + extra_keys, 8, 2

    def normal(*shape: int) -> mx.array:
        return mx.array(rng.standard_normal(shape).astype(np.float32))

    q, k, v = (
        normal(batch, heads, length, dim),
        normal(batch, kv_heads, keys_length, dim),
        normal(batch, kv_heads, keys_length, dim),
    )
    mask: mx.array | str | None = {
        "none": None,
        "causal": "causal",
        # every query keeps key 0, so no row is fully masked
        "bool": mx.array(rng.random((batch, 1, length, keys_length)) > 0.4)
        | (mx.arange(keys_length) == 0),
        "additive": normal(length, keys_length),
        "per-head": normal(batch, heads, length, keys_length),
    }[mask_kind]
    w = normal(batch, heads, length, dim)
    scale = dim**-0.5

    def ours(*a: mx.array) -> mx.array:
        return (attention(*a, scale=scale, mask=mask) * w).sum()

    def theirs(*a: mx.array) -> mx.array:
        return (mx.fast.scaled_dot_product_attention(*a, scale=scale, mask=mask) * w).sum()

    got = mx.value_and_grad(ours, argnums=(0, 1, 2))(q, k, v)
    want = mx.value_and_grad(theirs, argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got[0].item(), want[0].item(), rtol=1e-5, atol=1e-4)
    for g, h in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(np.array(g), np.array(h), rtol=1e-4, atol=1e-5)


VOCAB, WIDTH = 96, 24


@linux
@pytest.mark.parametrize(
    ("arch", "quantize"), [("llama", False), ("qwen2", False), ("llama", True), ("mixtral", False)]
)
def test_per_example_dp_gradients_are_the_same_with_and_without_the_kernels(
    arch: str, quantize: bool
) -> None:
    model, _ = build_tiny_model(arch, VOCAB, seed=3, quantize=quantize)
    assert accelerate(model)
    module = sys.modules[type(model).__module__]
    sdpa = module.scaled_dot_product_attention
    assert hasattr(sdpa, "_personal_original")
    accelerate(model)  # idempotent: wraps once
    assert module.scaled_dot_product_attention is sdpa
    if arch == "mixtral":  # MoE experts: switch_layers' SwiGLU too
        assert hasattr(sys.modules["mlx_lm.models.switch_layers"].swiglu, "_personal_original")
    inject_lora(model, LoRAConfig(rank=2))
    perturb_lora_b(model)
    rng = np.random.default_rng(0)
    rows = [[rng.integers(1, VOCAB, n).tolist()] for n in (20, 7, 13, 24)]
    arrays = pack_token_units(rows, 2.0, width=WIDTH).arrays
    with kernels.use(True):
        losses, grads = per_example_grads(model, example_ce_loss, arrays)
    with kernels.use(False):
        want_losses, want_grads = per_example_grads(model, example_ce_loss, arrays)
    np.testing.assert_allclose(np.array(losses), np.array(want_losses), rtol=1e-5)
    for name, value in want_grads.items():
        scale = float(mx.abs(value).max()) + 1e-12
        np.testing.assert_allclose(np.array(grads[name]), np.array(value), atol=1e-5 * scale)


def test_attention_sinks_and_quantized_caches_keep_mlx_lm_s_function() -> None:
    calls: list[str] = []

    def original(q, k, v, cache, scale, mask, sinks=None):  # type: ignore[no-untyped-def]
        calls.append("original")
        return q

    wrapped = fastmath._fast_sdpa(original)
    q = mx.zeros((1, 2, 3, 4))
    wrapped(q, q, q, None, 1.0, None, sinks=mx.zeros((2,)))

    class QuantizedCache:
        bits = 4

    wrapped(q, q, q, QuantizedCache(), 1.0, None)
    with kernels.use(False):
        wrapped(q, q, q, None, 1.0, "causal")
    assert calls == ["original"] * 3
