"""Putting a stored adapter into a live model: the base-fingerprint check and the hot swap."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from personal.adapters.artifact import Manifest
from personal.errors import AdapterBaseMismatch, ConfigError

import mlx.core as mx

if TYPE_CHECKING:
    import mlx.nn as nn


def check_base(manifest: Manifest, base_fingerprint: str) -> None:
    """Refuse a version trained on another base (:class:`AdapterBaseMismatch`)."""
    if manifest.base_fingerprint != base_fingerprint:
        raise AdapterBaseMismatch(
            f"Adapter version {manifest.version} was trained on base {manifest.base_name!r} "
            f"({manifest.base_fingerprint}), but the live base is {base_fingerprint}. An adapter "
            "never loads onto another base: migrate it to the new base, or activate a version "
            "trained on this one. Nothing was changed."
        )


def live_target(model: Any, base_fingerprint: str | None) -> tuple[nn.Module, str]:
    """(module, fingerprint) from a BaseModel or from a module plus an explicit fingerprint."""
    inner = getattr(model, "model", None)
    fingerprint = getattr(model, "fingerprint", None)
    if inner is not None and isinstance(fingerprint, str):
        if base_fingerprint is not None and base_fingerprint != fingerprint:
            raise ConfigError(
                f"base_fingerprint {base_fingerprint} contradicts the BaseModel's own "
                f"{fingerprint}; pass one or the other."
            )
        return inner, fingerprint
    if base_fingerprint is None:
        raise ConfigError(
            "Swapping into a bare module needs base_fingerprint= (the live base's "
            "BaseModel.fingerprint), or pass the BaseModel itself."
        )
    return model, base_fingerprint


def swap(module: nn.Module, weights: Mapping[str, mx.array]) -> dict[str, mx.array]:
    """Hot-swap (validated before any change); returns the weights it replaced."""
    from personal.model.lora import get_adapter_weights, set_adapter_weights

    previous = get_adapter_weights(module)
    set_adapter_weights(module, weights)
    return previous
