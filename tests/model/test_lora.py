"""LoRA injection, exact trainable counts, hot swap, remove, fuse, QLoRA and MoE."""

from __future__ import annotations

from personal.errors import AdapterMismatch, ConfigError, NoLoRALayers
from personal.model.base import load_base
from personal.model.lora import (
    LoRAConfig,
    fresh_adapter_weights,
    fuse_lora,
    get_adapter_weights,
    inject_lora,
    lora_config_of,
    remove_lora,
    set_adapter_weights,
    trainable_parameter_count,
)

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import ARCHITECTURES, tiny_config

TOKENS = mx.array([[1, 3, 40, 41, 42, 43, 44, 4, 50, 51]])
RANK = 4


def _expected_trainable(arch: str) -> int:
    """Independent count from the config: r·(in + out) per adapted linear, routers excluded."""
    c = tiny_config(arch, 384)
    h, inter = c["hidden_size"], c["intermediate_size"]
    head_dim = c.get("head_dim", h // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim
    attention = (h + q) + 2 * (h + kv) + (q + h)
    if "num_local_experts" in c:  # mixtral: experts w1, w2, w3
        mlp = c["num_local_experts"] * 3 * (h + inter)
    elif "num_experts" in c:  # qwen moe: switch gate/up/down (+ shared expert for qwen2)
        mlp = c["num_experts"] * 3 * (h + c["moe_intermediate_size"])
        if "shared_expert_intermediate_size" in c:
            mlp += 3 * (h + c["shared_expert_intermediate_size"])
    else:
        mlp = 3 * (h + inter)
    return RANK * c["num_hidden_layers"] * (attention + mlp)


def _adapter_with_values(model, seed: int) -> dict[str, mx.array]:
    rng = np.random.default_rng(seed)
    return {
        k: mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32))
        for k, v in get_adapter_weights(model).items()
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_exact_trainable_count_and_identity_at_init(tiny_model_factory, arch):
    base = load_base(tiny_model_factory(arch))
    before = base.model(TOKENS)
    inject_lora(base.model, LoRAConfig(rank=RANK))
    assert trainable_parameter_count(base.model) == _expected_trainable(arch)
    # B starts at zero, so a fresh adapter computes exactly the base model.
    assert mx.array_equal(base.model(TOKENS), before)


@pytest.mark.parametrize("arch", ["llama", "mixtral", "qwen2_moe"])
def test_quantized_bases_take_lora(tiny_model_factory, arch):
    base = load_base(tiny_model_factory(arch, quantize=True))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    assert trainable_parameter_count(base.model) == _expected_trainable(arch)
    set_adapter_weights(base.model, _adapter_with_values(base.model, 1))
    assert base.model(TOKENS).shape == (1, 10, 384)


def test_routers_are_never_adapted(tiny_model_factory):
    base = load_base(tiny_model_factory("qwen2_moe"))
    names = inject_lora(base.model, LoRAConfig(rank=RANK))
    assert not [n for n in names if n.endswith("mlp.gate") or "shared_expert_gate" in n]
    assert any("switch_mlp" in n for n in names) and any("shared_expert." in n for n in names)


def test_hot_swap_a_b_a_is_bit_identical(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    a, b = _adapter_with_values(base.model, 1), _adapter_with_values(base.model, 2)
    set_adapter_weights(base.model, a)
    logits_a = np.array(base.model(TOKENS))
    set_adapter_weights(base.model, b)
    logits_b = np.array(base.model(TOKENS))
    set_adapter_weights(base.model, a)
    assert not np.array_equal(logits_a, logits_b)
    assert np.array_equal(np.array(base.model(TOKENS)), logits_a)


def test_swap_does_not_touch_base_weights(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    w = base.model.model.layers[0].self_attn.q_proj.linear.weight
    set_adapter_weights(base.model, _adapter_with_values(base.model, 3))
    assert base.model.model.layers[0].self_attn.q_proj.linear.weight is w


@pytest.mark.parametrize(
    "corrupt",
    ["drop", "extra", "shape", "dtype"],
)
def test_bad_swap_raises_and_changes_nothing(tiny_model_factory, corrupt):
    base = load_base(tiny_model_factory("llama"))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    good = _adapter_with_values(base.model, 1)
    set_adapter_weights(base.model, good)
    before = np.array(base.model(TOKENS))
    bad = dict(_adapter_with_values(base.model, 2))
    name = sorted(bad)[-1]  # modify the last one, so a partial apply would be visible
    if corrupt == "drop":
        del bad[name]
    elif corrupt == "extra":
        bad["model.layers.9.self_attn.q_proj.lora_a"] = bad[name]
    elif corrupt == "shape":
        bad[name] = mx.zeros((bad[name].shape[0] + 1, *bad[name].shape[1:]))
    else:
        bad[name] = bad[name].astype(mx.float16)
    with pytest.raises(AdapterMismatch, match="nothing was changed"):
        set_adapter_weights(base.model, bad)
    assert np.array_equal(np.array(base.model(TOKENS)), before)


def test_swap_into_model_without_lora(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    with pytest.raises(NoLoRALayers):
        set_adapter_weights(base.model, {})


def test_targets_and_num_layers(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    names = inject_lora(base.model, LoRAConfig(rank=2, targets=("q_proj", "v_proj"), num_layers=1))
    assert names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert trainable_parameter_count(base.model) == 2 * ((64 + 64) + (64 + 32))
    config = lora_config_of(base.model)
    assert config.rank == 2 and config.targets == ("self_attn.q_proj", "self_attn.v_proj")


def test_unknown_target_is_a_clear_error(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    with pytest.raises(AdapterMismatch, match="No linear layer matched"):
        inject_lora(base.model, LoRAConfig(targets=("qkv_proj",)))


def test_double_injection_refused(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    inject_lora(base.model)
    with pytest.raises(AdapterMismatch, match="already has LoRA"):
        inject_lora(base.model)


def test_injection_is_deterministic(tiny_model_factory):
    weights = []
    for _ in range(2):
        base = load_base(tiny_model_factory("llama"))
        inject_lora(base.model, LoRAConfig(rank=RANK), seed=7)
        weights.append(get_adapter_weights(base.model))
    assert all(mx.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_remove_restores_base(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    before = np.array(base.model(TOKENS))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    set_adapter_weights(base.model, _adapter_with_values(base.model, 1))
    assert remove_lora(base.model) == 14
    assert get_adapter_weights(base.model) == {}
    assert np.array_equal(np.array(base.model(TOKENS)), before)


@pytest.mark.parametrize("arch,quantize", [("llama", False), ("mixtral", False), ("llama", True)])
def test_fuse_matches_unfused(tiny_model_factory, arch, quantize):
    base = load_base(tiny_model_factory(arch, quantize=quantize))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    set_adapter_weights(base.model, _adapter_with_values(base.model, 1))
    unfused = np.array(base.model(TOKENS))
    fuse_lora(base.model, dequantize=True)
    assert get_adapter_weights(base.model) == {}
    np.testing.assert_allclose(np.array(base.model(TOKENS)), unfused, atol=2e-4, rtol=1e-4)


def test_fresh_adapter_is_identity(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    before = np.array(base.model(TOKENS))
    inject_lora(base.model, LoRAConfig(rank=RANK))
    set_adapter_weights(base.model, _adapter_with_values(base.model, 1))
    set_adapter_weights(base.model, fresh_adapter_weights(base.model, seed=3))
    assert np.array_equal(np.array(base.model(TOKENS)), before)


@pytest.mark.parametrize(
    "kwargs", [{"rank": 0}, {"scale": -1.0}, {"dropout": 1.0}, {"num_layers": 0}, {"targets": ()}]
)
def test_invalid_config(kwargs):
    with pytest.raises(ConfigError):
        LoRAConfig(**kwargs)


def test_config_round_trip_and_alpha():
    config = LoRAConfig.from_alpha(8, 16.0, targets=("q_proj",), dropout=0.1)
    assert config.scale == 2.0
    assert LoRAConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="Unknown"):
        LoRAConfig.from_dict({"rank": 4, "alpha": 3})
