"""Versioned LoRA adapters: artifacts on disk and the registry that activates them.

See docs/adapters.md. The public surface::

    from personal.adapters import AdapterRegistry, Manifest

    registry = AdapterRegistry.for_store(store_dir)      # or AdapterRegistry(any_directory)
    v = registry.save(weights, base_fingerprint=..., base_name=..., lora=config)
    registry.activate(v, model=base)                     # atomic; hot-swaps the live model
    registry.rollback(model=base)
"""

from __future__ import annotations

from personal.adapters.artifact import FORMAT_VERSION, Manifest, read_artifact
from personal.adapters.live import check_base
from personal.adapters.pointer import Pointer
from personal.adapters.registry import AdapterRegistry, RegistryReport, VersionInfo

__all__ = [
    "FORMAT_VERSION",
    "AdapterRegistry",
    "Manifest",
    "Pointer",
    "RegistryReport",
    "VersionInfo",
    "check_base",
    "read_artifact",
]
