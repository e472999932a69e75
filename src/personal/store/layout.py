"""The files of a store directory: the ``store.json`` marker and the database's name.

::

    STORE/store.json   format marker + store id (non-secret; written last at creation)
    STORE/store.db     SQLite (WAL): key metadata (store_kek, store_dek) and every table
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personal.errors import SchemaTooNew, StoreCorrupt, StoreNotFound
from personal.filesafety import atomic_write_text, leftover_temps

FORMAT = "personal-store"
FORMAT_VERSION = 1
DB_NAME = "store.db"
MARKER_NAME = "store.json"


def read_marker(path: Path) -> str:
    """Check that ``path`` is a store this version can open; returns its store id."""
    marker = path / MARKER_NAME
    if not path.is_dir():
        raise StoreNotFound(f"no store at {path}: create one with `personal init {path}`")
    if not marker.exists():
        if (path / DB_NAME).exists():  # never advise removing a directory that holds data
            raise StoreCorrupt(
                f"{marker} is missing but {path / DB_NAME} is there: restore {MARKER_NAME} "
                "from a backup of this store (it names the store id the database is bound "
                "to). Do not remove the directory: it holds the data"
            )
        raise StoreNotFound(
            f"{path} is not a personal store (no {MARKER_NAME} and no {DB_NAME}); if creating "
            "it was interrupted, create it again in an empty directory"
        )
    try:
        data: Any = json.loads(marker.read_text())
        fmt, version, store_id = data["format"], int(data["version"]), str(data["store_id"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise StoreCorrupt(f"{marker} is unreadable: restore it from a backup") from None
    if fmt != FORMAT:
        raise StoreNotFound(f"{path} is not a personal store ({MARKER_NAME} says {fmt!r})")
    if version > FORMAT_VERSION:
        raise SchemaTooNew(
            f"{path} was written in store format {version}; this version of personal reads "
            f"up to {FORMAT_VERSION}: upgrade personal to open it"
        )
    return store_id


def write_marker(path: Path, store_id: str) -> None:
    """Write ``store.json`` atomically (temporary file, fsync, rename, fsync directory).

    Owner-only (0600), like the database.
    """
    marker = {"format": FORMAT, "version": FORMAT_VERSION, "store_id": store_id}
    atomic_write_text(path / MARKER_NAME, json.dumps(marker, indent=2) + "\n")


def remove_partial(path: Path) -> None:
    """Remove what an interrupted creation left in ``path`` (which was empty)."""
    # ``store.json.tmp``: the temporary name of versions before personal.filesafety.
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", MARKER_NAME + ".tmp"):
        (path / name).unlink(missing_ok=True)
    for tmp in leftover_temps(path / MARKER_NAME):
        tmp.unlink(missing_ok=True)
