"""``personal generate`` (answer through the active adapter) and ``personal adapters export``
(the active adapter in the formats of mlx-lm and PEFT).

Registered by :mod:`personal.cli.train` (``register``); ``export`` joins the ``adapters``
group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personal.cli.common import ENV_KEY, key_file_option, passphrase, store_argument, store_base
from personal.errors import AdapterError

import click
import numpy as np


@click.command("generate")
@store_argument
@click.argument("prompt")
@click.option(
    "--base", default=None, help="Base model (name or directory) [default: the store's base]."
)
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--memory/--no-memory",
    default=None,
    help="Recall the most relevant past interactions (personal memory; charges no ε, but the "
    "reply may quote them and is not a DP output) [default: on when the base supports it]. "
    "Builds the index on first use.",
)
@click.option(
    "--recall",
    type=click.IntRange(min=1),
    default=None,
    help="How many past interactions --memory recalls [default: 8 in cache mode, 3 in "
    "context mode]; implies --memory.",
)
@click.option(
    "--memory-mode",
    type=click.Choice(["cache", "context"]),
    default="cache",
    show_default=True,
    help="cache: the recalled replies as a token cache mixed into every next-token "
    "distribution; context: as earlier chat turns in the prompt (docs/memory.md).",
)
@key_file_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: text, confidence, adapter, memory ids."
)
def generate_command(
    store: Path,
    prompt: str,
    base: str | None,
    max_tokens: int,
    memory: bool | None,
    recall: int | None,
    memory_mode: Any,
    key_file: Path | None,
    as_json: bool,
) -> None:
    """Answer PROMPT through STORE's active adapter (the bare base when none is active).

    --json adds the confidence signal (mean token log-probability, in (0, 1] as a probability)
    an app uses to hand hard requests to a bigger model, and the ids of the past interactions
    personal memory recalled (on by default; --no-memory turns it off)."""
    from personal.personalizer import Personalizer

    key = passphrase(key_file, ENV_KEY, "Passphrase", confirm=False)
    base = base or store_base(store, key)
    with Personalizer.open(store, base, None, key) as personalizer:
        wanted: bool | int | None = recall if recall is not None else memory
        reply = personalizer.generate(
            prompt, memory=wanted, memory_mode=memory_mode, max_tokens=max_tokens
        )
        active = personalizer.active_adapter
    if as_json:
        data = {
            "text": reply.text,
            "confidence": reply.confidence,
            "adapter_version": active.version if active is not None else None,
            "memory_ids": list(reply.memory_ids),
        }
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(reply.text)


def _layer_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1])


def _module_key(name: str) -> str:
    """``self_attn.q_proj`` for ``model.layers.3.self_attn.q_proj.lora_a``."""
    parts = name.split(".")
    return ".".join(parts[parts.index("layers") + 2 : -1])


def export_mlx_lm(weights: dict[str, Any], manifest: Any, out: Path) -> list[str]:
    """``adapters.safetensors`` + ``adapter_config.json`` as ``mlx_lm.generate --adapter-path``
    and ``mlx_lm.utils.load(..., adapter_path=)`` read them (the same LoRALinear layers)."""
    import mlx.core as mx

    lora = manifest.lora
    layers = sorted({_layer_of(n) for n in weights})
    config = {
        "fine_tune_type": "lora",
        # mlx-lm adapts the last num_layers blocks (-1: all), as personal's num_layers does.
        "num_layers": -1 if lora.get("num_layers") is None else int(lora["num_layers"]),
        "lora_parameters": {
            "rank": int(lora["rank"]),
            "scale": float(lora["scale"]),
            "dropout": float(lora.get("dropout") or 0.0),
            "keys": sorted({_module_key(n) for n in weights}),
        },
        "personal": {
            "version": manifest.version,
            "base_fingerprint": manifest.base_fingerprint,
            "base_name": manifest.base_name,
            "layers": layers,
        },
    }
    mx.save_safetensors(
        str(out / "adapters.safetensors"), {k: mx.array(v) for k, v in weights.items()}
    )
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ["adapters.safetensors", "adapter_config.json"]


def export_peft(weights: dict[str, Any], manifest: Any, out: Path) -> list[str]:
    """``adapter_model.safetensors`` + ``adapter_config.json`` for ``PeftModel.from_pretrained``
    on the same weights in transformers: ``lora_A.weight = lora_aᵀ``, ``lora_B.weight =
    lora_bᵀ``, ``lora_alpha = scale · rank`` (PEFT scales by alpha / r)."""
    from safetensors.numpy import save_file

    lora = manifest.lora
    tensors: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        if value.ndim != 2:
            raise AdapterError(
                f"{name} is a {value.ndim}-d LoRA tensor (a mixture-of-experts layer): PEFT's "
                "format has no equivalent; export --format mlx-lm instead"
            )
        prefix, leaf = name.rsplit(".", 1)
        peft = "lora_A" if leaf == "lora_a" else "lora_B"
        array = np.asarray(value, dtype=np.float32).T.copy()
        tensors[f"base_model.model.{prefix}.{peft}.weight"] = array
    rank = int(lora["rank"])
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": manifest.base_name,
        "r": rank,
        "lora_alpha": float(lora["scale"]) * rank,
        "lora_dropout": float(lora.get("dropout") or 0.0),
        "target_modules": sorted({_module_key(n).rsplit(".", 1)[-1] for n in weights}),
        "layers_to_transform": sorted({_layer_of(n) for n in weights}),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ["adapter_model.safetensors", "adapter_config.json"]


@click.command("export")
@store_argument
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mlx-lm", "peft"]),
    default="mlx-lm",
    show_default=True,
    help="mlx-lm: for mlx_lm.generate --adapter-path; peft: for "
    "PeftModel.from_pretrained on the same base in transformers.",
)
@click.option("--version", "version", type=int, default=None, help="Default: the active one.")
def export_command(store: Path, out: Path, fmt: str, version: int | None) -> None:
    """Write STORE's adapter (default: the active one) to the directory OUT in the format of
    mlx-lm or PEFT. Adapters are DP outputs: no key is needed (docs/adapters.md)."""
    from personal.adapters.registry import AdapterRegistry

    weights, manifest = AdapterRegistry.for_store(store).load(version)
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} exists and is not empty: give a new directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    writer = export_mlx_lm if fmt == "mlx-lm" else export_peft
    try:
        files = writer({k: np.asarray(v) for k, v in weights.items()}, manifest, out)
    except BaseException:
        for name in ("adapters.safetensors", "adapter_model.safetensors", "adapter_config.json"):
            (out / name).unlink(missing_ok=True)  # only what this command writes
        if created:
            out.rmdir()
        raise
    click.echo(
        f"exported adapter version {manifest.version} (base {manifest.base_name}, "
        f"{manifest.base_fingerprint[:19]}) as {fmt}: {', '.join(files)} in {out}"
    )


def register(group: click.Group) -> None:
    """Add ``generate`` to the group and ``export`` to its ``adapters`` group."""
    from personal.cli.adapters import adapters_group

    group.add_command(generate_command)
    adapters_group.add_command(export_command)
