"""What :meth:`AdapterRegistry.list` and :meth:`AdapterRegistry.verify` return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from personal.adapters.artifact import Manifest


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
