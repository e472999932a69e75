"""A base's public adapter bank on disk: what ``training.update = "bank"`` trains on.

The bank (:mod:`personal.model.bank`) is K LoRA adapters trained **without DP on public
synthetic users only**, one per user, stored as the LoRA weights of their rank-K·r mixture with
every coefficient 1, in the population adapter's file format (hash-verified manifest bound to
one base fingerprint and one LoRA shape), next to the base::

    base-v1/bank/adapter.safetensors   lora_a / lora_b of the K members side by side
    base-v1/bank/manifest.json         as a population adapter's, with built.members = K

It is public, so training on it charges nothing beyond the round's own DP release of the
coefficients (docs/privacy.md). ``make adapter-banks`` builds the bundled bases' banks
(``personal_sim.build_adapter_bank``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personal.adapters.population import (
    PopulationAdapter,
    _lora_dict,
    read_population_adapter,
    write_population_adapter,
)
from personal.errors import AdapterBankMismatch, AdapterCorrupt
from personal.model.bank import AdapterBank

if TYPE_CHECKING:
    from personal.model.base import BaseModel
    from personal.model.lora import LoRAConfig
    from personal.policy import Policy

DIRECTORY = "bank"


def write_adapter_bank(
    model_dir: str | Path,
    bank: AdapterBank,
    *,
    base_fingerprint: str,
    base_name: str,
    lora: LoRAConfig | Mapping[str, Any],
    built: Mapping[str, Any],
    measured: Mapping[str, Any] | None = None,
) -> PopulationAdapter:
    """Write ``bank`` as ``model_dir``'s adapter bank (``lora``: the mixture's shape, rank K·r)."""
    return write_population_adapter(
        model_dir, bank.weights(), base_fingerprint=base_fingerprint, base_name=base_name,
        lora=lora, built={**built, "members": bank.members, "member_rank": bank.rank},
        measured=measured, directory=DIRECTORY,
    )  # fmt: skip


def read_adapter_bank(model_dir: str | Path) -> tuple[AdapterBank, PopulationAdapter] | None:
    """``model_dir``'s adapter bank, hash-verified; ``None`` when it ships none.

    Raises:
        AdapterCorrupt: a malformed manifest (no member count), damaged weights.
        AdapterFormatTooNew: written by a newer version of `personal`.
    """
    stored = read_population_adapter(
        model_dir, DIRECTORY, what="adapter bank", rebuild="`make adapter-banks`"
    )
    if stored is None:
        return None
    members = stored.manifest.get("built", {}).get("members")
    if not isinstance(members, int) or members < 1:
        raise AdapterCorrupt(f"adapter bank {stored.path}: manifest.json lacks built.members")
    return AdapterBank.from_weights(stored.weights, members), stored


def bank_for(policy: Policy, base: BaseModel) -> tuple[AdapterBank, PopulationAdapter] | None:
    """The bank a round of ``policy`` trains on ``base``; ``None`` unless
    ``training.update = "bank"``.

    Raises:
        AdapterBankMismatch: the base ships no bank, or one built for another base or for
            another LoRA shape than the policy's ``training.lora``.
    """
    if policy.training.update != "bank":
        return None
    found = read_adapter_bank(base.path)
    if found is None:
        raise AdapterBankMismatch(
            f'the policy trains on an adapter bank (training.update = "bank") but base '
            f"{base.name!r} ships none in {Path(base.path) / DIRECTORY}: build one (`make "
            'adapter-banks` for the bundled bases) or set training.update = "lora" (nothing '
            "was changed)"
        )
    bank, stored = found
    if stored.base_fingerprint != base.fingerprint:
        raise AdapterBankMismatch(
            f"the adapter bank in {stored.path} was built for base "
            f"{stored.manifest['base_name']!r}, not this base {base.name!r}: rebuild it for this "
            'base or set training.update = "lora" (nothing was changed)'
        )
    want = _lora_dict(policy.training.lora.to_lora_config())
    if stored.manifest["lora"] != want:
        raise AdapterBankMismatch(
            f"the adapter bank in {stored.path} has LoRA shape {stored.manifest['lora']} "
            f"({bank.members} members of rank {bank.rank}); the policy's training.lora is "
            f"{want}: set training.lora to the bank's shape (nothing was changed)"
        )
    return bank, stored


__all__ = ["DIRECTORY", "bank_for", "read_adapter_bank", "write_adapter_bank"]
