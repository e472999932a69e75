"""LoRA for mlx-lm models: inject, read/write weights, hot swap, remove, fuse.

We reuse mlx-lm's ``LoRALinear`` / ``LoRASwitchLinear`` layers (so adapters stay compatible with
mlx-lm tooling, and quantized bases work as QLoRA) and add what mlx-lm lacks for a product that
swaps adapters on a live model: deterministic initialisation, an explicit target policy that
never touches MoE routers, and a swap that validates *everything* before changing *anything*.

The adapter of a model is the flat dict ``{"model.layers.0.self_attn.q_proj.lora_a": array, ...}``
of every LoRA tensor; nothing else is trainable.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, cast

from personal.errors import AdapterMismatch, ConfigError, NoLoRALayers
from personal.model.mlx_typing import flat_params

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from mlx_lm.tuner.lora import LoRALinear, LoRASwitchLinear

_LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear)
_SWITCH_TYPES = (SwitchLinear, QuantizedSwitchLinear)
_LORA_TYPES = (LoRALinear, LoRASwitchLinear)
_LORA_KEYS = ("lora_a", "lora_b")
_BLOCK_PATH = re.compile(r"^.*?layers\.\d+\.")


@dataclass(frozen=True)
class LoRAConfig:
    """Where and how LoRA is injected.

    Attributes:
        rank: rank r of the low-rank update (trainable parameters per linear: r·(in + out)).
        scale: multiplier of the update, ``y = W x + scale · B A x`` (mlx-lm's convention; the
            PEFT convention is ``scale = alpha / rank``, see :meth:`from_alpha`).
        dropout: dropout on the LoRA input while training.
        targets: module-path suffixes inside a block to adapt (e.g. ``("self_attn.q_proj",
            "mlp.down_proj")``); ``None`` adapts every linear layer of attention and MLP,
            MoE expert layers included, routers excluded.
        num_layers: adapt only the last N blocks; ``None`` adapts all.
    """

    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    num_layers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be an integer >= 1, got {self.rank!r}.")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ConfigError(f"LoRA scale must be a finite number > 0, got {self.scale!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}.")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"num_layers must be >= 1 or None, got {self.num_layers!r}.")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
            if not self.targets:
                raise ConfigError("targets must name at least one module (or be None).")

    @classmethod
    def from_alpha(cls, rank: int, alpha: float, **kwargs: Any) -> LoRAConfig:
        """Build from PEFT-style ``lora_alpha``: ``scale = alpha / rank``."""
        return cls(rank=rank, scale=alpha / rank, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets) if self.targets is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoRAConfig:
        known = {"rank", "scale", "dropout", "targets", "num_layers"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"Unknown LoRA config keys {sorted(unknown)}; allowed: {known}.")
        targets = data.get("targets")
        return cls(**{**data, "targets": tuple(targets) if targets is not None else None})


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of an mlx-lm model (``model.layers`` for every architecture we use)."""
    layers = getattr(model, "layers", None)
    if layers is None and hasattr(model, "model"):
        layers = getattr(model.model, "layers", None)
    if not isinstance(layers, list) or not layers:
        raise AdapterMismatch(
            f"{type(model).__name__} exposes no list of transformer blocks (`.layers`); "
            "LoRA injection supports mlx-lm decoder models."
        )
    return layers


def _is_router(block: nn.Module, path: str) -> bool:
    """A Linear that is a direct sibling of MoE expert layers is a router (or shared-expert gate).

    Adapting a router changes which experts run; private data would then steer routing, and
    mlx-lm's LoRA tooling leaves routers alone too.
    """
    parent_path, _, _ = path.rpartition(".")
    parent = block
    for part in parent_path.split(".") if parent_path else []:
        parent = parent[int(part)] if isinstance(parent, list) else getattr(parent, part)
    if not isinstance(parent, nn.Module):
        return False
    return any(
        any(isinstance(m, _SWITCH_TYPES) for _, m in child.named_modules())
        for child in parent.children().values()
        if isinstance(child, nn.Module)
    )


def _targets_in_block(block: nn.Module, config: LoRAConfig) -> list[tuple[str, nn.Module]]:
    found = []
    for path, module in block.named_modules():
        if not isinstance(module, _LINEAR_TYPES + _SWITCH_TYPES):
            continue
        if config.targets is None:
            if isinstance(module, _LINEAR_TYPES) and _is_router(block, path):
                continue
        elif not any(path == t or path.endswith("." + t) for t in config.targets):
            continue
        found.append((path, module))
    return sorted(found, key=lambda item: item[0])


def _make_lora(module: nn.Module, config: LoRAConfig, key: mx.array) -> nn.Module:
    r, dropout, scale = config.rank, config.dropout, config.scale
    if isinstance(module, _SWITCH_TYPES):
        lora = LoRASwitchLinear.from_base(module, r=r, dropout=dropout, scale=scale)
        fan_in_axis = -1
    else:  # mlx-lm annotates nn.Linear; it converts nn.QuantizedLinear too
        lora = LoRALinear.from_base(cast(nn.Linear, module), r=r, dropout=dropout, scale=scale)
        fan_in_axis = 0
    # Deterministic init (mlx-lm draws from the global RNG): A ~ U(±1/sqrt(in)), B = 0, so a
    # fresh adapter computes exactly the base model.
    bound = 1.0 / math.sqrt(lora.lora_a.shape[fan_in_axis])
    lora.lora_a = mx.random.uniform(-bound, bound, lora.lora_a.shape, key=key)
    return lora


def inject_lora(model: nn.Module, config: LoRAConfig | None = None, *, seed: int = 0) -> list[str]:
    """Freeze ``model`` and wrap its target linear layers with LoRA, in place.

    Args:
        model: an mlx-lm model (dense, MoE, or quantized).
        config: where and how; defaults to :class:`LoRAConfig` ().
        seed: seeds the A matrices (B starts at zero), so injection is reproducible.

    Returns:
        The full module paths that were wrapped, e.g. ``"model.layers.0.self_attn.q_proj"``.

    Raises:
        AdapterMismatch: the model already has LoRA, or no module matched ``config.targets``.
    """
    config = config or LoRAConfig()
    if lora_modules(model):
        raise AdapterMismatch("The model already has LoRA layers; call remove_lora() first.")
    blocks = transformer_blocks(model)
    start = 0 if config.num_layers is None else max(0, len(blocks) - config.num_layers)
    prefix = _blocks_prefix(model, blocks)
    model.freeze()
    key = mx.random.key(seed)
    wrapped: list[str] = []
    for index in range(start, len(blocks)):
        block = blocks[index]
        updates = []
        for path, module in _targets_in_block(block, config):
            key, sub = mx.random.split(key)
            updates.append((path, _make_lora(module, config, sub)))
            wrapped.append(f"{prefix}.{index}.{path}")
        if updates:
            block.update_modules(tree_unflatten(updates))
    if not wrapped:
        raise AdapterMismatch(
            f"No linear layer matched LoRA targets {config.targets!r}; "
            f"valid paths look like {_example_paths(blocks[-1])}."
        )
    mx.eval(model.parameters())
    return wrapped


def _blocks_prefix(model: nn.Module, blocks: list[nn.Module]) -> str:
    for name, value in model.named_modules():
        if value is blocks[0]:
            return name.rpartition(".")[0]
    return "layers"


def _example_paths(block: nn.Module) -> list[str]:
    return [p for p, m in block.named_modules() if isinstance(m, _LINEAR_TYPES + _SWITCH_TYPES)]


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Full path -> LoRA layer for every LoRA layer in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, _LORA_TYPES)}


@contextlib.contextmanager
def lora_off(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its bare base: every LoRA update scaled to 0, restored on exit."""
    modules = list(lora_modules(model).values())
    scales = [m.scale for m in modules]
    for m in modules:
        m.scale = 0.0
    try:
        yield
    finally:
        for m, scale in zip(modules, scales, strict=True):
            m.scale = scale


def lora_config_of(model: nn.Module) -> LoRAConfig | None:
    """The rank/scale/dropout in effect (``targets`` as the wrapped suffixes), or None."""
    layers = lora_modules(model)
    if not layers:
        return None
    first = next(iter(layers.values()))
    rank = first.lora_a.shape[-1] if isinstance(first, LoRALinear) else first.lora_a.shape[1]
    suffixes = sorted({_BLOCK_PATH.sub("", name) for name in layers})
    return LoRAConfig(
        rank=int(rank),
        scale=float(first.scale),
        dropout=round(1.0 - float(first.dropout._p_1), 6),
        targets=tuple(suffixes),
    )


def get_adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The adapter as a flat ``name -> array`` dict (every ``lora_a`` / ``lora_b``)."""
    return {
        name: value
        for name, value in flat_params(model.parameters())
        if name.rpartition(".")[2] in _LORA_KEYS
    }


def set_adapter_weights(model: nn.Module, weights: Mapping[str, mx.array]) -> None:
    """Hot-swap an adapter into a live model without touching the base weights.

    Every name, shape and dtype is checked before anything is assigned, so a bad adapter
    raises :class:`~personal.errors.AdapterMismatch` and leaves the model exactly as it was.
    """
    current = get_adapter_weights(model)
    if not current:
        raise NoLoRALayers("The model has no LoRA layers to swap into; call inject_lora().")
    _check_compatible(current, weights)
    new = [(name, mx.array(value)) for name, value in weights.items()]
    model.update(tree_unflatten(new))
    mx.eval([value for _, value in new])


def _check_compatible(current: Mapping[str, mx.array], weights: Mapping[str, Any]) -> None:
    missing = sorted(set(current) - set(weights))
    unexpected = sorted(set(weights) - set(current))
    if missing or unexpected:
        raise AdapterMismatch(
            f"Adapter does not fit this model: {len(missing)} missing tensors "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}. It was trained "
            "with other LoRA targets or for another architecture; nothing was changed."
        )
    for name, value in weights.items():
        shape, want = tuple(getattr(value, "shape", ())), tuple(current[name].shape)
        if shape != want:
            raise AdapterMismatch(
                f"Adapter tensor {name} has shape {shape}, the model expects {want} "
                "(another LoRA rank or base size); nothing was changed."
            )
        dtype = getattr(value, "dtype", None)
        if dtype != current[name].dtype:
            raise AdapterMismatch(
                f"Adapter tensor {name} has dtype {dtype}, the model expects "
                f"{current[name].dtype}; nothing was changed."
            )


def fresh_adapter_weights(model: nn.Module, *, seed: int = 0) -> dict[str, mx.array]:
    """A newly initialised adapter for ``model`` (B = 0: computes exactly the base model)."""
    key = mx.random.key(seed)
    fresh = {}
    for name, value in get_adapter_weights(model).items():
        if name.endswith("lora_b"):
            fresh[name] = mx.zeros(value.shape, dtype=value.dtype)
        else:
            key, sub = mx.random.split(key)
            fan_in = value.shape[-1] if value.ndim == 3 else value.shape[0]
            bound = 1.0 / math.sqrt(fan_in)
            fresh[name] = mx.random.uniform(-bound, bound, value.shape, key=sub).astype(value.dtype)
    return fresh


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars (the adapter, after :func:`inject_lora`)."""
    return sum(v.size for _, v in flat_params(model.trainable_parameters()))


def _replace_lora(model: nn.Module, make: Any) -> int:
    layers = lora_modules(model)
    if not layers:
        raise NoLoRALayers("The model has no LoRA layers.")
    model.update_modules(tree_unflatten([(name, make(m)) for name, m in layers.items()]))
    return len(layers)


def remove_lora(model: nn.Module) -> int:
    """Put the original base layers back (the adapter is dropped); returns layers restored."""
    return _replace_lora(model, lambda m: m.linear)


def fuse_lora(model: nn.Module, *, dequantize: bool = False) -> int:
    """Merge the adapter into the base weights for export (quantized bases are re-quantized
    unless ``dequantize``); returns the number of layers fused."""
    count = _replace_lora(model, lambda m: m.fuse(dequantize=dequantize))
    mx.eval(model.parameters())
    return count


def adapter_names(weights: Iterable[str]) -> list[str]:
    """Sorted module paths an adapter covers (``...q_proj`` for ``...q_proj.lora_a``)."""
    return sorted({name.rpartition(".")[0] for name in weights})
