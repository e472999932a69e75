"""The reference LoRA configuration the step benchmarks share (`lora_step.py`, `dp_step.py`).

llama-style, hidden 512, intermediate 1408, 8 layers, 8 heads, vocab 8192; LoRA rank 8 and
scale 20 on all seven linear layers of every block. Random weights (seed 0): no download.
"""

from __future__ import annotations

import personal  # noqa: F401  (must precede mlx: loads the fast BLAS)
from personal.model.lora import LoRAConfig, inject_lora

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama

REFERENCE = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def reference_model() -> nn.Module:
    """The reference llama with LoRA injected (only the adapter is trainable), in train mode."""
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(REFERENCE))
    mx.eval(model.parameters())
    inject_lora(model, LoRAConfig(rank=8, scale=20.0, targets=TARGETS))
    model.train()
    return model
