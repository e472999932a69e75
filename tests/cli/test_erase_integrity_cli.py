"""``erase`` checks the database before it erases and never reports a partial erase as success;
``personal repair`` rebuilds a damaged index (issue 19, item 8)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from personal.store import InteractionLog, Passphrase, ScryptParams, erasure
from personal.store import keys as keys_module

import pytest
from test_store_cli import PASS, run


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with InteractionLog.create(path, Passphrase(PASS)) as log:
        for unit in ("unit-AAAA", "unit-BBBB", "unit-CCCC"):
            log.append(f"hello from {unit}", "hi", unit=unit)
    return path


def _patch_index_key(store: Path, old: bytes, new: bytes) -> None:
    """Patch one key on the unit index's page in the file (the table's row keeps ``old``)."""
    conn = sqlite3.connect(store / "store.db")
    (root,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'records_unit'"
    ).fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    data = bytearray((store / "store.db").read_bytes())
    start = (root - 1) * size
    at = data.index(old, start, start + size)
    data[at : at + len(old)] = new
    (store / "store.db").write_bytes(bytes(data))


def _units(store: Path) -> list[str]:
    result = run("export", str(store))
    assert result.exit_code == 0, result.output
    return [json.loads(line)["unit"] for line in result.stdout.splitlines()]


def test_erase_refuses_a_damaged_index_and_erases_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _patch_index_key(store, b"unit-AAAA", b"unit-AAAB")
    result = run("erase", str(store), "--unit", "unit-AAAA")
    assert result.exit_code == 2, result.output
    assert "nothing was erased" in result.output and "integrity check" in result.output
    assert "erased" not in result.output.replace("nothing was erased", "")
    assert "Traceback" not in result.output
    assert _units(store) == ["unit-AAAA", "unit-BBBB", "unit-CCCC"]

    repaired = run("repair", str(store))
    assert repaired.exit_code == 0, repaired.output
    assert "indexes: rebuilt" in repaired.output
    assert run("verify", str(store)).exit_code == 0
    erased = run("erase", str(store), "--unit", "unit-AAAA")
    assert erased.exit_code == 0 and "erased 1 record(s)" in erased.output
    assert _units(store) == ["unit-BBBB", "unit-CCCC"]


def test_an_erase_that_would_leave_a_matching_record_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even past the check (an index damaged between the check and the delete), the erasure
    counts what is left by a full scan and rolls back rather than report success."""
    from personal.errors import StoreCorrupt

    store = _store(tmp_path)
    _patch_index_key(store, b"unit-BBBB", b"unit-BBBC")
    with InteractionLog.open(store, Passphrase(PASS)) as log:
        monkeypatch.setattr(erasure, "check_before_erasing", lambda store: None)
        with pytest.raises(StoreCorrupt, match="nothing was erased: 1 matching record"):
            log.erase("unit-BBBB")
    assert _units(store) == ["unit-AAAA", "unit-BBBB", "unit-CCCC"]
