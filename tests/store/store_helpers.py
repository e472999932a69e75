"""Helpers shared by the store tests (a unique module name: tests use rootdir discovery)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def raw_db(store_path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to a store's database, as an attacker would open it."""
    conn = sqlite3.connect(store_path / "store.db", isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def flip(data: bytes, index: int) -> bytes:
    """``data`` with the bits of byte ``index`` inverted."""
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


def file_bytes(store_path: Path) -> bytes:
    """The raw bytes of the database and its WAL (what a disk image would show)."""
    out = b""
    for name in ("store.db", "store.db-wal"):
        path = store_path / name
        if path.exists():
            out += path.read_bytes()
    return out
