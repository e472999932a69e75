"""A base's public population adapter: the warm start of a store that has no adapter yet.

A population adapter is a LoRA adapter in a policy's shape, trained **without DP on public
synthetic users only** (no user's data), and shipped next to the base model it was trained
on. Under ``training.warm_start = "population"`` a store with no active adapter serves it from
day 0, and its first DP round starts from its weights instead of a zero adapter
(:class:`~personal.training.runner.RoundRunner`). It is public, so serving it and starting
from it charge nothing: the ledger is unchanged (docs/privacy.md).

On disk, inside the base model's directory::

    base-v1/population/adapter.safetensors   the LoRA tensors (safetensors)
    base-v1/population/manifest.json         how it was built, the SHA-256 of the weights,
                                             the base fingerprint and LoRA shape it fits

The ``population/`` folder is not part of the base's fingerprint (which covers only the base's
own top-level files), so shipping or rebuilding it never changes the base's identity. A
manifest binds it to one base fingerprint and one LoRA shape: :func:`population_adapter_for`
refuses it on any other (:class:`~personal.errors.PopulationAdapterMismatch`), and refuses
weights whose SHA-256 differs from the manifest's (:class:`~personal.errors.AdapterCorrupt`).
Build one with :func:`personal.training.population.train_population_adapter` and
:func:`write_population_adapter`; the bundled bases' are built by ``make population-adapters``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personal.adapters import codec
from personal.adapters.artifact import check_weights
from personal.errors import (
    AdapterCorrupt,
    AdapterFormatTooNew,
    PopulationAdapterMismatch,
)
from personal.filesafety import atomic_write_bytes

import mlx.core as mx

if TYPE_CHECKING:
    from personal.model.base import BaseModel
    from personal.model.lora import LoRAConfig
    from personal.policy import Policy

FORMAT = "personal-population-adapter"
FORMAT_VERSION = 1
DIRECTORY = "population"
WEIGHTS_NAME = "adapter.safetensors"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class PopulationAdapter:
    """A verified population adapter: its weights and its manifest (plain JSON data).

    Manifest keys: ``format``, ``format_version``, ``base_name``, ``base_fingerprint``,
    ``lora`` (the :class:`~personal.model.lora.LoRAConfig` as a dict), ``weights_sha256``,
    ``parameters``, ``public`` (always true), ``built`` (how: script, seeds, population,
    recipe) and ``measured`` (what the build measured, e.g. general drift).
    """

    path: Path
    manifest: dict[str, Any]
    weights: dict[str, mx.array]

    @property
    def base_fingerprint(self) -> str:
        return str(self.manifest["base_fingerprint"])

    @property
    def digest(self) -> str:
        """``"sha256:<hex>"`` of ``adapter.safetensors``: names this exact warm start."""
        return f"sha256:{self.manifest['weights_sha256']}"

    def describe(self) -> dict[str, Any]:
        """What an adapter trained from it records (``training.warm_start`` of its manifest)."""
        return {
            "kind": "population",
            "digest": self.digest,
            "base_name": self.manifest["base_name"],
        }


def population_dir(model_dir: str | Path, directory: str = DIRECTORY) -> Path:
    """Where a base model directory keeps its population adapter (or, with ``directory``,
    another public adapter in the same format: its adapter bank,
    :mod:`personal.adapters.bank`)."""
    return Path(model_dir) / directory


def _lora_dict(lora: LoRAConfig | Mapping[str, Any]) -> dict[str, Any]:
    data = dict(lora) if isinstance(lora, Mapping) else lora.to_dict()
    if data.get("targets") is not None:
        data["targets"] = list(data["targets"])
    return data


def write_population_adapter(
    model_dir: str | Path,
    weights: Mapping[str, mx.array],
    *,
    base_fingerprint: str,
    base_name: str,
    lora: LoRAConfig | Mapping[str, Any],
    built: Mapping[str, Any],
    measured: Mapping[str, Any] | None = None,
    directory: str = DIRECTORY,
) -> PopulationAdapter:
    """Write ``weights`` as ``model_dir``'s population adapter (each file atomically).

    The bytes are a pure function of the arguments: the same weights and metadata give the
    same files (and the same digest), so a seeded rebuild reproduces them.
    """
    arrays = check_weights(weights)
    meta = {"format": FORMAT, "base_fingerprint": base_fingerprint, "base_name": base_name}
    data = codec.encode(dict(sorted(arrays.items())), dict(sorted(meta.items())))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_name": base_name,
        "base_fingerprint": base_fingerprint,
        "lora": _lora_dict(lora),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "parameters": sum(int(v.size) for v in arrays.values()),
        "public": True,
        "built": dict(built),
        "measured": dict(measured or {}),
    }
    folder = population_dir(model_dir, directory)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(folder / WEIGHTS_NAME, data, mode=0o644)
    atomic_write_bytes(folder / MANIFEST_NAME, text.encode("utf-8"), mode=0o644)
    return PopulationAdapter(folder, manifest, arrays)


def read_population_adapter(
    model_dir: str | Path,
    directory: str = DIRECTORY,
    *,
    what: str = "population adapter",
    rebuild: str = "`make population-adapters`",
) -> PopulationAdapter | None:
    """``model_dir``'s population adapter (or the public adapter in ``directory``, named
    ``what`` in errors, which advise ``rebuild``), hash-verified; ``None`` when it ships none.

    Raises:
        AdapterCorrupt: the manifest is malformed, or the weights fail its SHA-256 or do not
            parse.
        AdapterFormatTooNew: written by a newer version of `personal`.
    """
    folder = population_dir(model_dir, directory)
    manifest_path, weights_path = folder / MANIFEST_NAME, folder / WEIGHTS_NAME
    if not manifest_path.is_file():
        return None
    where = str(folder)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        data = weights_path.read_bytes()
    except (OSError, ValueError) as exc:
        raise AdapterCorrupt(f"{what} {where}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise AdapterCorrupt(f"{what} {where}: manifest.json is not a {FORMAT}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterFormatTooNew(
            f"{what} {where} has format version {version!r}; this `personal` "
            f"reads up to {FORMAT_VERSION}: upgrade personal"
        )
    for key in ("base_fingerprint", "base_name", "weights_sha256"):
        if not isinstance(manifest.get(key), str):
            raise AdapterCorrupt(f"{what} {where}: manifest.json lacks {key!r}")
    if not isinstance(manifest.get("lora"), dict):
        raise AdapterCorrupt(f"{what} {where}: manifest.json lacks 'lora'")
    if hashlib.sha256(data).hexdigest() != manifest["weights_sha256"]:
        raise AdapterCorrupt(
            f"{what} {where}: {WEIGHTS_NAME} fails the SHA-256 in its manifest "
            f"(damaged or replaced); rebuild it ({rebuild}) or reinstall"
        )
    weights, _ = codec.decode(data, where=f"{where}/{WEIGHTS_NAME}")
    return PopulationAdapter(folder, manifest, weights)


def population_adapter_for(base: BaseModel, lora: LoRAConfig) -> PopulationAdapter | None:
    """``base``'s population adapter, checked to fit it and ``lora``; ``None`` if it ships none.

    Raises:
        PopulationAdapterMismatch: built for another base fingerprint or LoRA shape.
        AdapterCorrupt, AdapterFormatTooNew: see :func:`read_population_adapter`.
    """
    adapter = read_population_adapter(base.path)
    if adapter is None:
        return None
    if adapter.base_fingerprint != base.fingerprint:
        raise PopulationAdapterMismatch(
            f"the population adapter in {adapter.path} was built for base "
            f"{adapter.manifest['base_name']!r} ({adapter.base_fingerprint[:19]}), not this "
            f"base {base.name!r} ({base.fingerprint[:19]}): rebuild it for this base "
            "(`make population-adapters`), remove the folder, or set training.warm_start = "
            '"none" (nothing was changed)'
        )
    want = _lora_dict(lora)
    if adapter.manifest["lora"] != want:
        raise PopulationAdapterMismatch(
            f"the population adapter in {adapter.path} has LoRA shape "
            f"{adapter.manifest['lora']}, the policy's training.lora is {want}: the warm start "
            'needs the shape it was built in; set training.warm_start = "none" or build a '
            "population adapter in this shape (nothing was changed)"
        )
    return adapter


def warm_start_for(policy: Policy, base: BaseModel) -> PopulationAdapter | None:
    """The adapter a store under ``policy`` serves on ``base`` while none is active.

    ``None`` under ``training.warm_start = "none"``, and when the base ships no population
    adapter (the documented fallback: a cold start, as with ``"none"``; a base imported from a
    GGUF file, say, ships none unless one is built for it). :attr:`Personalizer.warm_start
    <personal.personalizer.Personalizer.warm_start>` tells which.

    Raises:
        PopulationAdapterMismatch: the base's population adapter does not fit it or the
            policy's LoRA shape.
    """
    if policy.training.warm_start != "population":
        return None
    return population_adapter_for(base, policy.training.lora.to_lora_config())
