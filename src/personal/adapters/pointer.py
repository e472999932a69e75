"""The registry's one mutable file, ``ACTIVE``.

``ACTIVE`` is a small JSON object::

    {"format": "personal-adapter-pointer", "format_version": 1,
     "active": 7, "history": [3, 5, 6], "updated": "2025-05-01T10:00:00.000000Z"}

``history`` lists earlier activations, oldest first (at most :data:`HISTORY_LIMIT`);
:func:`rollback_target` walks it backwards. It is replaced atomically and durably by
:func:`personal.filesafety.atomic_write_bytes`: write ``ACTIVE.<random>.tmp``, fsync
(``F_FULLFSYNC`` on macOS), ``os.replace``, fsync the directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personal.errors import AdapterFormatTooNew, InvalidManifest
from personal.filesafety import atomic_write_bytes

POINTER_NAME = "ACTIVE"
POINTER_FORMAT = "personal-adapter-pointer"
POINTER_FORMAT_VERSION = 1
HISTORY_LIMIT = 64
REPAIR = (
    "rewrite the pointer with `personal adapters activate STORE VERSION` "
    "(`personal adapters verify STORE` lists the versions that are intact)."
)


@dataclass(frozen=True)
class Pointer:
    """The content of ``ACTIVE``: the active version and earlier activations (oldest first)."""

    active: int | None = None
    history: tuple[int, ...] = ()
    updated: str | None = None


def read_pointer(directory: Path) -> Pointer:
    """The parsed ``directory/ACTIVE`` (an empty pointer when there is none)."""
    path = directory / POINTER_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Pointer()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{path} is unreadable ({exc}); {REPAIR}") from None
    return parse_pointer(text, path)


def write_pointer(directory: Path, pointer: Pointer) -> None:
    """Replace ``directory/ACTIVE`` atomically and durably."""
    data = {
        "format": POINTER_FORMAT,
        "format_version": POINTER_FORMAT_VERSION,
        "active": pointer.active,
        "history": list(pointer.history[-HISTORY_LIMIT:]),
        "updated": pointer.updated,
    }
    atomic_write_bytes(directory / POINTER_NAME, (json.dumps(data, indent=2) + "\n").encode())


def parse_pointer(text: str, path: Path) -> Pointer:
    """Validate the pointer strictly (:class:`InvalidManifest` says how to repair it)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidManifest(f"{path} is not valid JSON; {REPAIR}") from None
    if not isinstance(data, dict) or data.get("format") != POINTER_FORMAT:
        raise InvalidManifest(f"{path} is not an adapter pointer; {REPAIR}")
    fmt = data.get("format_version")
    if isinstance(fmt, int) and fmt > POINTER_FORMAT_VERSION:
        raise AdapterFormatTooNew(
            f"{path} was written by a newer version of personal (pointer format {fmt}); "
            "upgrade personal."
        )
    active, history = data.get("active"), data.get("history")
    if (
        set(data) != {"format", "format_version", "active", "history", "updated"}
        or fmt != POINTER_FORMAT_VERSION
        or not (active is None or _is_version(active))
        or not isinstance(history, list)
        or not all(_is_version(v) for v in history)
        or not isinstance(data["updated"], str)
    ):
        raise InvalidManifest(f"{path} is malformed; {REPAIR}")
    return Pointer(active, tuple(history), data["updated"])


def _is_version(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def rollback_target(pointer: Pointer, present: set[int]) -> tuple[int | None, int]:
    """(version, its index in the history) of the latest earlier activation still present."""
    for index in range(len(pointer.history) - 1, -1, -1):
        version = pointer.history[index]
        if version != pointer.active and version in present:
            return version, index
    return None, 0
