"""Fixtures of the CLI tests: cheap scrypt for every store they create."""

from __future__ import annotations

from personal.store import ScryptParams
from personal.store import keys as keys_module

import pytest

CHEAP = ScryptParams(log_n=4, r=1, p=1)


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> ScryptParams:
    """Passphrases made without explicit parameters stretch cheaply: every CLI command opens
    the store again, and the default cost (~0.5 s a time) added up to ~35 s of CPU per run.
    The cost is recorded in the store, so opening it stays cheap. tests/test_quickstart.py
    runs the default cost; tests/store/test_store_keys.py how the cost is recorded."""
    monkeypatch.setattr(keys_module, "DEFAULT_SCRYPT", CHEAP)
    return CHEAP
