"""personal: continual, differentially private on-device personalization of a small LM.

Importing this package first makes MLX fast on Linux (see :mod:`personal.runtime`); import it
before ``mlx``. The public API is re-exported here lazily, so ``import personal`` stays cheap
and never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from personal.runtime import configure_blas

configure_blas()

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_EXPORTS = {
    "PersonalError": "personal.errors",
    "BaseModel": "personal.model.base",
    "load_base": "personal.model.base",
    "bundled_models": "personal.model.base",
    "fingerprint_directory": "personal.model.fingerprint",
    "LoRAConfig": "personal.model.lora",
    "inject_lora": "personal.model.lora",
    "remove_lora": "personal.model.lora",
    "fuse_lora": "personal.model.lora",
    "get_adapter_weights": "personal.model.lora",
    "set_adapter_weights": "personal.model.lora",
    "generate": "personal.model.generate",
    "Generation": "personal.model.generate",
    "Personalizer": "personal.personalizer",
    "PublicData": "personal.public",
    "SelfGenerated": "personal.public",
    "Policy": "personal.policy",
    "load_policy": "personal.policy",
    "InteractionLog": "personal.store",
    "Store": "personal.store",
    "Passphrase": "personal.store",
    "KeyringKey": "personal.store",
    "RawKey": "personal.store",
    "Ledger": "personal.privacy.ledger",
    "AdapterRegistry": "personal.adapters.registry",
}

__all__ = [  # literal, so type checkers and linters see the re-exports; a test keeps it = _EXPORTS
    "AdapterRegistry",
    "BaseModel",
    "Generation",
    "InteractionLog",
    "KeyringKey",
    "Ledger",
    "LoRAConfig",
    "Passphrase",
    "PersonalError",
    "Personalizer",
    "Policy",
    "PublicData",
    "RawKey",
    "SelfGenerated",
    "Store",
    "__version__",
    "bundled_models",
    "fingerprint_directory",
    "fuse_lora",
    "generate",
    "get_adapter_weights",
    "inject_lora",
    "load_base",
    "load_policy",
    "remove_lora",
    "set_adapter_weights",
]

if TYPE_CHECKING:  # what a type checker sees; at run time __getattr__ imports lazily
    from personal.adapters.registry import (
        AdapterRegistry,
    )
    from personal.errors import (
        PersonalError,
    )
    from personal.model.base import (
        BaseModel,
        bundled_models,
        load_base,
    )
    from personal.model.fingerprint import (
        fingerprint_directory,
    )
    from personal.model.generate import (
        Generation,
        generate,
    )
    from personal.model.lora import (
        LoRAConfig,
        fuse_lora,
        get_adapter_weights,
        inject_lora,
        remove_lora,
        set_adapter_weights,
    )
    from personal.personalizer import (
        Personalizer,
    )
    from personal.policy import (
        Policy,
        load_policy,
    )
    from personal.privacy.ledger import (
        Ledger,
    )
    from personal.public import (
        PublicData,
        SelfGenerated,
    )
    from personal.store import (
        InteractionLog,
        KeyringKey,
        Passphrase,
        RawKey,
        Store,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'personal' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
