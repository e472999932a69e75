"""Fixtures of the store tests: cheap scrypt, keys, fresh stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from personal.store import InteractionLog, Passphrase, RawKey, ScryptParams
from personal.store import keys as keys_module

import pytest

CHEAP = ScryptParams(log_n=4, r=1, p=1)


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> ScryptParams:
    """Make every passphrase created without explicit parameters cheap to stretch."""
    monkeypatch.setattr(keys_module, "DEFAULT_SCRYPT", CHEAP)
    return CHEAP


@pytest.fixture
def key() -> Passphrase:
    return Passphrase("correct horse battery staple", CHEAP)


@pytest.fixture
def raw_key() -> RawKey:
    return RawKey(bytes(range(32)))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def log(store_path: Path, key: Passphrase) -> Iterator[InteractionLog]:
    with InteractionLog.create(store_path, key) as opened:
        yield opened
