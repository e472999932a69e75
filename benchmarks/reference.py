"""The reference LoRA configuration the step benchmarks share (`lora_step.py`, `dp_step.py`).

llama-style, hidden 512, intermediate 1408, 8 layers, 8 heads, vocab 8192; LoRA rank 8 and
scale 20 on all seven linear layers of every block. Random weights (seed 0): no download.
"""

from __future__ import annotations

import personal  # noqa: F401  (must precede mlx: loads the fast BLAS)
from personal.model.fastmath import accelerate
from personal.model.lora import LoRAConfig, inject_lora

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import llama
from reference_config import RANK, REFERENCE, SCALE, TARGETS


def reference_model() -> nn.Module:
    """The reference llama with LoRA injected (only the adapter is trainable), in train mode."""
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(REFERENCE))
    mx.eval(model.parameters())
    accelerate(model)  # as load_base does for every base: the fast CPU kernels (Linux)
    inject_lora(model, LoRAConfig(rank=RANK, scale=SCALE, targets=TARGETS))
    model.train()
    return model
