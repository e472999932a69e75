"""How long does activating another adapter version on a live model take?

One swap is ``registry.activate(version, model=live, base_fingerprint=...)``: take the writer
lock, read the version's manifest and weights from disk, verify the SHA-256, parse the
safetensors, check the base fingerprint, validate and hot-swap the tensors into the live model,
and write the active pointer atomically (temp file, fsync, rename, directory fsync). The base
model is never reloaded. Consecutive swaps alternate between different saved versions.

Two live models, LoRA rank 8 on every linear layer of every block:

* ``swap_ms``: the bundled base-v1 (llama, hidden 128, 4 layers; a random model of the same
  config when the bundled directory is missing or cannot be loaded);
* ``swap_ms_large``: a random ~0.5B-parameter model of a real architecture (Qwen2-0.5B's
  config: hidden 896, 24 layers, intermediate 4864, 14 heads, 2 KV heads, vocab 151936),
  built in memory (nothing is downloaded).

Prints ``{"swap_ms", "swap_ms_large"}`` (medians). Goals: < 20 ms and < 250 ms.

    python benchmarks/adapter_swap.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.adapters import AdapterRegistry
from personal.model.lora import LoRAConfig, fresh_adapter_weights, inject_lora

import mlx.core as mx
from mlx.utils import tree_flatten

BASE_V1_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "intermediate_size": 352,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
QWEN2_05B_CONFIG: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "intermediate_size": 4864,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
}
LORA = LoRAConfig(rank=8)


def random_model(config: dict[str, Any]) -> Any:
    from personal.model.base import model_classes

    model_cls, args_cls = model_classes(config)
    mx.random.seed(0)
    model = model_cls(args_cls.from_dict(config))
    mx.eval(model.parameters())
    return model


def base_v1() -> tuple[Any, str, str]:
    """(live module, fingerprint, description) of the bundled base-v1, or a same-config model."""
    from personal.model.base import BUNDLED_DIR, load_base

    try:
        base = load_base("base-v1")
        return base.model, base.fingerprint, "bundled base-v1"
    except Exception as exc:  # missing or being rebuilt: same shapes, random weights
        config_file = BUNDLED_DIR / "base-v1" / "config.json"
        config = dict(BASE_V1_CONFIG)
        if config_file.is_file():
            config.update(json.loads(config_file.read_text()))
        print(f"(base-v1 not loadable: {exc}; using a random model of its config)", file=sys.stderr)
        return random_model(config), "sha256:random-base-v1", "random base-v1 config"


def time_swaps(model: Any, fingerprint: str, workdir: Path, repeats: int) -> dict[str, float]:
    """Median and spread of activate-with-hot-swap over ``repeats`` swaps between 3 versions."""
    inject_lora(model, LORA)
    registry = AdapterRegistry(workdir / "adapters")
    versions = [
        registry.save(
            fresh_adapter_weights(model, seed=seed),
            base_fingerprint=fingerprint,
            base_name="bench",
            lora=LORA,
        )
        for seed in range(3)
    ]
    registry.activate(versions[0], model=model, base_fingerprint=fingerprint)
    times = []
    for i in range(repeats):
        version = versions[(i + 1) % len(versions)]
        start = time.perf_counter()
        registry.activate(version, model=model, base_fingerprint=fingerprint)
        times.append((time.perf_counter() - start) * 1000)
    manifest = registry.manifest(versions[0])
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "adapter_mb": manifest.weights_bytes / 1e6,
        "adapter_params": manifest.parameters,
        "base_params": sum(v.size for _, v in tree_flatten(model.parameters()))
        - manifest.parameters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, fingerprint, what = base_v1()
        small = time_swaps(model, fingerprint, Path(tmp) / "small", args.repeats)
        del model
        large_model = random_model(QWEN2_05B_CONFIG)
        large = time_swaps(
            large_model, "sha256:random-qwen2-0.5b", Path(tmp) / "large", args.repeats
        )
    result = {
        "swap_ms": round(small["median_ms"], 2),
        "swap_ms_large": round(large["median_ms"], 2),
    }
    if not args.json:
        for name, r in ((what, small), ("random qwen2-0.5B config", large)):
            print(
                f"{name}: {r['base_params'] / 1e6:.1f} M base params, adapter "
                f"{r['adapter_params'] / 1e6:.2f} M params ({r['adapter_mb']:.2f} MB): swap "
                f"median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, max {r['max_ms']:.2f})"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
