"""The adapter registry: numbered versions, an atomic active pointer, rollback, verify, prune.

::

    STORE/adapters/v000001/       one complete artifact per version (see artifact.py)
    STORE/adapters/v000002/
    STORE/adapters/ACTIVE         {"active": 2, "history": [1], ...}: the one mutable file
    STORE/adapters/.lock          serialises writers (flock; released by the kernel on death)
    STORE/adapters/.tmp-*/        a save in progress (or killed): never read, removed later
    STORE/adapters/.trash-*/      a prune in progress (or killed): never read, removed later

Why a crash (SIGKILL, power loss) can never leave a half-written version or pointer visible:

* **save** writes both files into a fresh ``.tmp-*`` directory, fsyncs each file and the
  directory, then ``rename``\\ s the directory to ``vNNNNNN`` (atomic) and fsyncs the parent.
  A version directory therefore either does not exist or is complete, and is never modified.
* **activate / rollback** write ``ACTIVE.<random>.tmp``, fsync it, ``os.replace`` it over
  ``ACTIVE`` (atomic) and fsync the directory; the pointer names only versions whose hashes
  verified.
* **prune** renames a version to ``.trash-*`` (atomic) before deleting it.

Every flush is :func:`personal.filesafety.full_fsync` (``F_FULLFSYNC`` on macOS).

Versions are immutable, so a reader needs no lock: it sees the old state or the new one.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personal.adapters import codec
from personal.adapters.artifact import (
    Manifest,
    build_manifest,
    check_weights,
    header_metadata,
    manifest_digest,
    read_artifact,
    read_manifest,
    utc_now,
    write_artifact,
)
from personal.adapters.live import check_base, live_target, swap
from personal.adapters.pointer import (
    POINTER_NAME,
    REPAIR,
    Pointer,
    read_pointer,
    rollback_target,
    write_pointer,
)
from personal.errors import (
    AdapterError,
    AdapterFormatTooNew,
    AdapterMismatch,
    AdapterNotFound,
    ConfigError,
    RollbackUnavailable,
)
from personal.filesafety import fsync_dir, leftover_temps, locked

import mlx.core as mx

if TYPE_CHECKING:
    from personal.model.lora import LoRAConfig


_LOCK_NAME = ".lock"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")


@dataclass(frozen=True)
class VersionInfo:
    """One row of :meth:`AdapterRegistry.list` (``manifest`` is None when it is unreadable)."""

    version: int
    active: bool
    manifest: Manifest | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "version": self.version,
            "active": self.active,
            "base_fingerprint": m.base_fingerprint if m else None,
            "base_name": m.base_name if m else None,
            "created": m.created if m else None,
            "sha256": m.weights_sha256 if m else None,
            "parent": m.parent if m else None,
            "parameters": m.parameters if m else None,
            "problem": self.problem,
        }


@dataclass
class RegistryReport:
    """What :meth:`AdapterRegistry.verify` found: ``ok`` is False if anything is wrong."""

    verified: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    active: int | None = None
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "active": self.active,
            "verified": self.verified,
            "problems": self.problems,
            "leftovers": self.leftovers,
        }


class AdapterRegistry:
    """The versioned adapters of one store (or of any directory).

    Example::

        registry = AdapterRegistry(store_dir / "adapters")
        v = registry.save(get_adapter_weights(model), base_fingerprint=base.fingerprint,
                          base_name=base.name, lora=config, parent=registry.active_version)
        registry.activate(v, model=base)          # pointer swap + hot swap into the live model
        registry.rollback(model=base)             # back to the previous version
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def for_store(cls, store: str | os.PathLike[str]) -> AdapterRegistry:
        """The registry of the store directory ``store`` (``store/adapters``)."""
        store = Path(store)
        if not store.is_dir():
            raise AdapterNotFound(f"No store directory at {store}; create it with `personal init`.")
        return cls(store / "adapters")

    def __repr__(self) -> str:
        return f"AdapterRegistry({str(self.path)!r})"

    # --- reading (no lock: versions are immutable, the pointer is replaced atomically) --------

    def versions(self) -> list[int]:
        """Every complete version, ascending (in-progress and crashed saves are not listed)."""
        if not self.path.is_dir():
            return []
        found = (_VERSION_DIR.match(entry.name) for entry in os.scandir(self.path))
        return sorted(int(m.group(1)) for m in found if m)

    def pointer(self) -> Pointer:
        """The parsed ``ACTIVE`` file (an empty pointer when nothing was activated yet)."""
        return read_pointer(self.path)

    @property
    def active_version(self) -> int | None:
        """The active version, or None."""
        return self.pointer().active

    @property
    def active(self) -> Manifest | None:
        """The active version's manifest, or None."""
        version = self.active_version
        return None if version is None else self.manifest(version)

    @property
    def previous_version(self) -> int | None:
        """The version :meth:`rollback` returns to: the last earlier activation still present."""
        return rollback_target(self.pointer(), set(self.versions()))[0]

    def manifest(self, version: int) -> Manifest:
        """The validated manifest of ``version`` (weights not read)."""
        return read_manifest(self._existing_dir(version), version=version)

    def load(self, version: int | None = None) -> tuple[dict[str, mx.array], Manifest]:
        """``(weights, manifest)`` of ``version`` (default: the active one), hash-verified."""
        if version is None:
            version = self.active_version
            if version is None:
                raise AdapterNotFound(
                    f"No adapter is active in {self.path}; activate one with "
                    "`personal adapters activate STORE VERSION`."
                )
        return read_artifact(self._existing_dir(version), version=version)

    def load_into(
        self,
        model: Any,
        version: int | None = None,
        *,
        base_fingerprint: str | None = None,
    ) -> Manifest:
        """Hot-swap ``version`` (default: active) into a live model, without reloading the base.

        ``model`` is a :class:`~personal.model.base.BaseModel` (its fingerprint is used) or an
        ``nn.Module`` with LoRA layers plus ``base_fingerprint``. Nothing changes on failure.

        Raises:
            AdapterBaseMismatch: the version was trained on another base.
            AdapterMismatch: its tensors do not fit the model's LoRA layers.
        """
        module, fingerprint = live_target(model, base_fingerprint)
        weights, manifest = self.load(version)
        check_base(manifest, fingerprint)
        try:
            swap(module, weights)
        except AdapterMismatch as exc:  # a changed training.lora: say the way out
            raise AdapterMismatch(
                f"{exc}. Version {manifest.version} was trained with LoRA rank "
                f"{manifest.lora.get('rank')}: if the policy's training.lora changed, put it "
                "back, or run `personal adapters deactivate STORE` to train a fresh adapter "
                "(the old versions stay for rollback)"
            ) from None
        return manifest

    def list(self) -> list[VersionInfo]:
        """Every version with its manifest (or the problem reading it), ascending."""
        active = self._pointer_or_none()
        rows = []
        for version in self.versions():
            try:
                rows.append(VersionInfo(version, version == active, self.manifest(version)))
            except AdapterError as exc:
                rows.append(VersionInfo(version, version == active, None, str(exc)))
        return rows

    def verify(self) -> RegistryReport:
        """Check every version's hash and manifest and the pointer; never raises for damage."""
        report = RegistryReport()
        present = self.versions()
        for version in present:
            try:
                self.load(version)
                report.verified.append(version)
            except AdapterError as exc:
                report.problems.append(f"version {version}: {exc}")
        try:
            pointer = self.pointer()
        except AdapterError as exc:
            report.problems.append(str(exc))
        else:
            report.active = pointer.active
            if pointer.active is not None and pointer.active not in present:
                report.problems.append(f"the active version {pointer.active} is missing; {REPAIR}")
        if self.path.is_dir():
            report.leftovers = sorted(
                e.name
                for e in os.scandir(self.path)
                if e.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) or e.name.endswith(".tmp")
            )
        return report

    # --- writing (one writer at a time) ---------------------------------------------------------

    def save(
        self,
        weights: Mapping[str, mx.array],
        *,
        base_fingerprint: str,
        base_name: str,
        lora: LoRAConfig | Mapping[str, Any],
        parent: int | None = None,
        policy_digest: str | None = None,
        ledger_head: str | None = None,
        training: Mapping[str, Any] | None = None,
        gates: Mapping[str, Any] | None = None,
        created: str | None = None,
    ) -> int:
        """Store ``weights`` as the next version (not activated); returns its number.

        Args:
            weights: the adapter, ``get_adapter_weights(model)``.
            base_fingerprint, base_name: the base model it was trained on.
            lora: its LoRA configuration (``LoRAConfig`` or its ``to_dict()``).
            parent: the version it was trained from (usually the active one), or None.
            policy_digest, ledger_head: the policy and privacy-ledger head of the round.
            training, gates: JSON summaries of the round and of the gates that accepted it.
            created: UTC ISO time ending in ``Z`` (default: now).
        """
        for name, value in (("base_fingerprint", base_fingerprint), ("base_name", base_name)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{name} must be a non-empty string, got {value!r}.")
        arrays = check_weights(weights)
        with self._locked():
            version = self._next_version()
            fields: dict[str, Any] = {
                "version": version,
                "parent": parent,
                "created": created or utc_now(),
                "base_fingerprint": base_fingerprint,
                "base_name": base_name,
                "lora": lora,
                "policy_digest": policy_digest,
                "ledger_head": ledger_head,
                "training": training,
                "gates": gates,
            }
            # The header holds the digest of the whole manifest but the weights' own hash.
            digest = manifest_digest(build_manifest(arrays, b"-", **fields))
            meta = header_metadata(version, base_fingerprint, base_name, digest)
            data = codec.encode(arrays, meta)
            manifest = build_manifest(arrays, data, **fields)
            tmp = self.path / f"{_TMP_PREFIX}{version:06d}-{secrets.token_hex(4)}"
            tmp.mkdir(mode=0o700)
            write_artifact(tmp, data, manifest)  # full fsync of both files
            fsync_dir(tmp)
            os.rename(tmp, self._dir(version))
            fsync_dir(self.path)
        return version

    def activate(
        self, version: int, *, model: Any = None, base_fingerprint: str | None = None
    ) -> Manifest:
        """Make ``version`` the active one (atomic), and hot-swap it into ``model`` if given.

        The version is hash-verified first. With ``base_fingerprint`` (or a ``BaseModel`` as
        ``model``) a version trained on another base is refused. On any error neither the
        pointer nor the model changes. The previous active version is kept for rollback.
        """
        with self._locked():
            pointer = self._pointer_for_update()
            history = pointer.history
            if pointer.active is not None and pointer.active != version:
                history = (*history, pointer.active)
            return self._switch(version, history, model, base_fingerprint)

    def rollback(
        self,
        to: int | None = None,
        *,
        model: Any = None,
        base_fingerprint: str | None = None,
    ) -> Manifest:
        """Re-activate the previous version (or ``to``), like an undo of :meth:`activate`.

        The version rolled back from is not remembered as a rollback target: rolling back
        twice goes two activations back.

        Raises:
            RollbackUnavailable: no earlier activated version is left (``to`` not given).
        """
        with self._locked():
            if to is None:
                pointer = self.pointer()
                to, index = rollback_target(pointer, set(self.versions()))
                if to is None:
                    raise RollbackUnavailable(
                        f"No earlier activated version is left in {self.path} to roll back "
                        "to; name one with `personal adapters activate STORE VERSION`."
                    )
                history = pointer.history[:index]
            else:
                pointer = self._pointer_for_update()
                history = pointer.history
                if to in history:
                    history = history[: len(history) - 1 - history[::-1].index(to)]
            return self._switch(to, history, model, base_fingerprint)

    def deactivate(self) -> None:
        """Serve no adapter (the base alone) from now on; :meth:`rollback` undoes it.

        The live model is not touched: reset or remove its LoRA layers yourself.
        """
        with self._locked():
            pointer = self._pointer_for_update()
            if pointer.active is not None:
                self._write_pointer(None, (*pointer.history, pointer.active))

    def prune(self, keep: int) -> builtins.list[int]:
        """Delete all but the ``keep`` newest versions; returns the versions deleted.

        Never deletes the active version nor the rollback target (:attr:`previous_version`),
        even when they are older than the ``keep`` newest.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"prune keeps at least 1 version; got keep={keep!r}.")
        with self._locked():
            pointer = self.pointer()  # a damaged pointer must stop a prune, not guide it
            present = self.versions()
            protected = set(present[-keep:]) | {pointer.active}
            protected.add(rollback_target(pointer, set(present))[0])
            doomed = [v for v in present if v not in protected]
            trash = []
            for version in doomed:
                target = self.path / f"{_TRASH_PREFIX}{version:06d}-{secrets.token_hex(4)}"
                os.rename(self._dir(version), target)
                trash.append(target)
            if trash:
                fsync_dir(self.path)
            for target in trash:
                shutil.rmtree(target, ignore_errors=True)
        return doomed

    # --- internals ------------------------------------------------------------------------------

    def _dir(self, version: int) -> Path:
        return self.path / f"v{version:06d}"

    def _existing_dir(self, version: int) -> Path:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError(f"An adapter version is an integer >= 1, got {version!r}.")
        directory = self._dir(version)
        if not directory.is_dir():
            have = self.versions()
            raise AdapterNotFound(
                f"No adapter version {version} in {self.path} (versions: "
                f"{', '.join(map(str, have)) or 'none'}); `personal adapters list STORE` "
                "shows them."
            )
        return directory

    def _next_version(self) -> int:
        pointer = self._pointer_or_empty()
        known = [*self.versions(), *pointer.history]
        if pointer.active is not None:
            known.append(pointer.active)
        return max(known, default=0) + 1

    def _pointer_or_none(self) -> int | None:
        try:
            return self.pointer().active
        except AdapterError:
            return None

    def _pointer_or_empty(self) -> Pointer:
        try:
            return self.pointer()
        except AdapterFormatTooNew:
            raise
        except AdapterError:
            return Pointer()

    def _pointer_for_update(self) -> Pointer:
        # A damaged pointer is replaced by the write (that is how it is repaired); one from a
        # newer version of personal is not silently downgraded.
        return self._pointer_or_empty()

    def _switch(
        self, version: int, history: tuple[int, ...], model: Any, base_fingerprint: str | None
    ) -> Manifest:
        module = None
        if model is not None:
            module, base_fingerprint = live_target(model, base_fingerprint)
        weights, manifest = self.load(version)
        if base_fingerprint is not None:
            check_base(manifest, base_fingerprint)
        previous = swap(module, weights) if module is not None else None
        try:
            self._write_pointer(version, history)
        except BaseException:
            if module is not None and previous is not None:
                swap(module, previous)
            raise
        return manifest

    def _write_pointer(self, active: int | None, history: tuple[int, ...]) -> None:
        write_pointer(self.path, Pointer(active, history, utc_now()))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.path.is_dir():
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_dir(self.path.parent)
        with locked(self.path / _LOCK_NAME):
            self._clean_leftovers()
            yield

    def _clean_leftovers(self) -> None:
        """Remove what killed writers left (only ever called while holding the lock)."""
        for entry in os.scandir(self.path):
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(entry.path, ignore_errors=True)
        (self.path / (POINTER_NAME + ".tmp")).unlink(missing_ok=True)  # before filesafety
        for tmp in leftover_temps(self.path / POINTER_NAME):
            tmp.unlink(missing_ok=True)
