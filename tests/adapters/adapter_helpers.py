"""Small adapters for registry tests (no model needed) and a live tiny model with LoRA."""

from __future__ import annotations

from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)

import mlx.core as mx

LORA = {"rank": 4, "scale": 20.0, "dropout": 0.0, "targets": None, "num_layers": None}
FP = "sha256:" + "a" * 64
OTHER_FP = "sha256:" + "b" * 64


def weights_for(version: int, *, width: int = 16, rank: int = 4) -> dict[str, mx.array]:
    """A deterministic few-KB adapter whose values encode ``version``."""
    out = {}
    for layer in range(2):
        base = f"model.layers.{layer}.self_attn.q_proj"
        out[f"{base}.lora_a"] = mx.full((width, rank), float(version) + layer / 8)
        out[f"{base}.lora_b"] = mx.full((rank, width), -float(version) - layer / 8)
    return out


def save(registry: Any, version_tag: int = 1, **kwargs: Any) -> int:
    fields = {"base_fingerprint": FP, "base_name": "base-test", "lora": LORA, **kwargs}
    return registry.save(weights_for(version_tag), **fields)


def same(a: dict[str, mx.array], b: dict[str, mx.array]) -> bool:
    """Bit-identical (names, dtypes, shapes, bytes)."""
    import numpy as np

    if set(a) != set(b):
        return False
    for name in a:
        x, y = a[name], b[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.dtype == mx.bfloat16:
            x, y = x.view(mx.uint16), y.view(mx.uint16)
        if np.array(x).tobytes() != np.array(y).tobytes():
            return False
    return True
