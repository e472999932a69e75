"""Tiny random models of every architecture we support, built inline (no downloads).

Dimensions are chosen so that every quantization group (32) divides every input width.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from personal.model.base import model_classes, save_base
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten
from mlx_lm.utils import quantize_model

_COMMON = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
}

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2"},
    "qwen3": {"model_type": "qwen3", "head_dim": 16},
    "gemma3": {
        "model_type": "gemma3_text",
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "sliding_window": 32,
        "sliding_window_pattern": 2,
    },
    "mixtral": {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 128,
    },
    "qwen3_moe": {
        "model_type": "qwen3_moe",
        "head_dim": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 64,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "norm_topk_prob": True,
    },
}

ARCHITECTURES = tuple(TINY_CONFIGS)


def tiny_config(arch: str, vocab_size: int) -> dict[str, Any]:
    config = {**copy.deepcopy(_COMMON), **copy.deepcopy(TINY_CONFIGS[arch])}
    config["vocab_size"] = vocab_size
    return config


def build_tiny_model(arch: str, vocab_size: int, *, seed: int = 0, quantize: bool = False):
    """(model, config) with random weights; optionally 4-bit quantized (group size 32)."""
    config = tiny_config(arch, vocab_size)
    model_cls, args_cls = model_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    mx.eval(model.parameters())
    if quantize:
        model, config = quantize_model(model, config, group_size=32, bits=4)
    return model, config


def save_tiny_model(
    out_dir: Path, arch: str, tokenizer_dir: Path, vocab_size: int, **kwargs: Any
) -> Path:
    model, config = build_tiny_model(arch, vocab_size, **kwargs)
    return save_base(model, config, tokenizer_dir, out_dir)


def perturb_lora_b(model: nn.Module, scale: float = 0.05) -> nn.Module:
    """Give every LoRA B a small random value (fresh adapters have B = 0), so that every LoRA
    tensor has a gradient; returns the model."""
    updates = [
        (name, scale * mx.random.normal(value.shape, key=mx.random.key(i)))
        for i, (name, value) in enumerate(get_adapter_weights(model).items())
        if name.endswith("lora_b")
    ]
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())
    return model


def tiny_lora_model(
    arch: str,
    vocab_size: int,
    *,
    quantize: bool = False,
    tied: bool = False,
    seed: int = 0,
    layers: int | None = None,
    adapted: int | None = None,
) -> nn.Module:
    """A tiny model of ``arch`` (tied embeddings, 4-bit and ``layers`` blocks on request) with
    rank-2 LoRA on its default layers of the last ``adapted`` blocks (all by default), every
    LoRA B perturbed (so every LoRA tensor has a gradient)."""
    if tied or layers is not None:
        config = tiny_config(arch, vocab_size)
        config["tie_word_embeddings"] = tied
        if layers is not None:
            config["num_hidden_layers"] = layers
        model_cls, args_cls = model_classes(config)
        mx.random.seed(seed)
        model = model_cls(args_cls.from_dict(config))
        if quantize:
            nn.quantize(model, group_size=32, bits=4)
    else:
        model, _ = build_tiny_model(arch, vocab_size, seed=seed, quantize=quantize)
    inject_lora(model, LoRAConfig(rank=2, num_layers=adapted), seed=seed)
    return perturb_lora_b(model)
