"""capture(): logits, hidden states and attention maps equal what the model itself computes."""

from __future__ import annotations

from personal.errors import ConfigError, UnsupportedArchitecture
from personal.model.batching import make_batch
from personal.model.capture import attention_probs, capture, hidden_size, num_heads, num_layers
from personal.model.distill import DistillConfig, distill
from personal.model.lora import LoRAConfig, inject_lora

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx_lm.models import llama
from tiny_models import build_tiny_model, tiny_config

SUPPORTED = ("llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")


def tokens(batch: int, length: int, *, seed: int = 0) -> mx.array:
    return mx.random.randint(5, 384, (batch, length), key=mx.random.key(seed))


def attention_output(attn, x: mx.array, probs: mx.array) -> mx.array:
    """Attention output rebuilt from captured probabilities: o_proj(P · V)."""
    B, T, _ = x.shape
    n_kv = getattr(attn, "n_kv_heads", None) or attn.num_key_value_heads
    values = attn.v_proj(x).reshape(B, T, n_kv, -1).transpose(0, 2, 1, 3)  # (B, Hkv, T, d)
    values = mx.repeat(values, probs.shape[1] // n_kv, axis=1)  # (B, H, T, d)
    return attn.o_proj((probs @ values).transpose(0, 2, 1, 3).reshape(B, T, -1))


@pytest.mark.parametrize("arch", SUPPORTED)
def test_capture_reproduces_the_model(arch: str) -> None:
    model, _ = build_tiny_model(arch, 384, seed=0)
    inputs = tokens(2, 12)
    out = capture(model, inputs, attention_layers=(0, -1))
    np.testing.assert_allclose(np.array(out.logits), np.array(model(inputs)), atol=1e-5)
    assert len(out.hidden_states) == num_layers(model) == 2
    assert out.hidden_states[-1].shape == (2, 12, hidden_size(model))
    assert sorted(out.attentions) == [0, 1]
    for index, probs in out.attentions.items():
        assert probs.shape == (2, num_heads(model), 12, 12)
        np.testing.assert_allclose(np.array(probs.sum(axis=-1)), 1.0, atol=1e-5)
        assert float(mx.triu(probs, k=1).max().item()) == 0.0  # causal
        # The captured map is the one the fused kernel applied: rebuilding the block's
        # attention output from it gives the model's own.
        block = model.model.layers[index]
        x = block.input_layernorm(
            out.hidden_states[index - 1] if index else model.model.embed_tokens(inputs)
        )
        want = block.self_attn(x, "causal")
        got = attention_output(block.self_attn, x, probs)
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)


def test_capture_with_tied_embeddings_quantization_and_lora() -> None:
    config = {**tiny_config("llama", 384), "tie_word_embeddings": True}
    tied = llama.Model(llama.ModelArgs.from_dict(config))
    quantized, _ = build_tiny_model("qwen3", 384, seed=1, quantize=True)
    inject_lora(quantized, LoRAConfig(rank=2), seed=0)
    for model in (tied, quantized):
        inputs = tokens(1, 9, seed=3)
        out = capture(model, inputs, attention_layers=(1,))
        np.testing.assert_allclose(np.array(out.logits), np.array(model(inputs)), atol=1e-5)


def test_right_padding_does_not_change_real_positions() -> None:
    model, _ = build_tiny_model("llama", 384, seed=0)
    short = tokens(1, 7, seed=4)
    padded = mx.concatenate([short, mx.zeros((1, 9), dtype=short.dtype)], axis=1)
    a = capture(model, short, attention_layers=(0,))
    b = capture(model, padded, attention_layers=(0,))
    np.testing.assert_allclose(np.array(b.logits[:, :7]), np.array(a.logits), atol=1e-5)
    np.testing.assert_allclose(
        np.array(b.attentions[0][:, :, :7, :7]), np.array(a.attentions[0]), atol=1e-6
    )


def test_attention_probs_is_differentiable() -> None:
    model, _ = build_tiny_model("qwen2", 384, seed=0)
    x = mx.random.normal((1, 5, 64), key=mx.random.key(0))
    attn = model.model.layers[0].self_attn
    grad = mx.grad(lambda y: attention_probs(attn, y)[..., 0].sum())(x)
    assert bool(mx.all(mx.isfinite(grad)).item()) and float(mx.abs(grad).max().item()) > 0


def test_unsupported_models_and_layers_are_refused() -> None:
    gemma, _ = build_tiny_model("gemma3", 384)
    with pytest.raises(UnsupportedArchitecture, match="gemma3"):
        capture(gemma, tokens(1, 4))
    config = {
        **tiny_config("llama", 384),
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": 4,
    }
    sliding = llama.Model(llama.ModelArgs.from_dict(config))
    with pytest.raises(UnsupportedArchitecture, match="sliding"):
        capture(sliding, tokens(1, 4))
    model, _ = build_tiny_model("llama", 384)
    with pytest.raises(ConfigError, match="out of range"):
        capture(model, tokens(1, 4), attention_layers=(2,))
    with pytest.raises(UnsupportedArchitecture):
        distill(gemma, model, [], optim.SGD(learning_rate=0.1), DistillConfig(feature_weight=1))


def test_logit_distillation_needs_no_capture_so_works_for_any_model() -> None:
    teacher, _ = build_tiny_model("gemma3", 384, seed=1)
    student, _ = build_tiny_model("gemma3", 384, seed=2)
    batch = make_batch(np.array(tokens(4, 9, seed=5)).tolist())
    records = distill(teacher, student, [batch] * 6, optim.Adam(learning_rate=1e-2))
    assert records[-1]["kd"] < records[0]["kd"]
