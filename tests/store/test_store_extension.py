"""Other components (the privacy ledger, ...) building their tables on the store's API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from personal.errors import TamperDetected
from personal.store import InteractionLog, Migrations, Passphrase, Store
from personal.store.crypto import Sealed

import pytest
from sqlite_utils import Database

LEDGER = Migrations("test_ledger")


@LEDGER(1)
def _create(db: Database) -> None:
    db.execute(
        "CREATE TABLE test_ledger (id INTEGER PRIMARY KEY, unit TEXT NOT NULL,"
        " key_epoch INTEGER NOT NULL, sealed BLOB NOT NULL)"
    )


def _write(store: Store, unit: str, plaintext: bytes) -> int:
    with store.atomic() as db:
        rid = store.allocate_ids("test_ledger", 1)
        sealed = store.seal("test_ledger", rid, {"unit": unit}, plaintext)
        db.execute(
            "INSERT INTO test_ledger VALUES (?, ?, ?, ?)", [rid, unit, sealed.epoch, sealed.blob]
        )
    return rid


def _read(store: Store, rid: int) -> bytes:
    unit, epoch, blob = store.db.execute(
        "SELECT unit, key_epoch, sealed FROM test_ledger WHERE id = ?", [rid]
    ).fetchone()
    return store.open_sealed("test_ledger", rid, {"unit": unit}, Sealed(epoch, blob))


def test_a_component_seals_its_own_rows(store_path: Path, key: Passphrase) -> None:
    with Store.create(store_path, key) as store:
        assert store.apply_migrations(LEDGER) == [1]
        first = _write(store, "u1", b"entry one")
        second = _write(store, "u2", b"entry two")
        assert (first, second) == (1, 2)
        with pytest.raises(RuntimeError), store.atomic():
            _write(store, "u3", b"rolled back")
            raise RuntimeError
        assert _write(store, "u3", b"three") == 3  # nothing with id 3 was ever committed
        store.db.execute("DELETE FROM test_ledger WHERE id = 3")
        assert _write(store, "u3", b"three") == 4  # committed ids are never handed out again
    with Store.open(store_path, key) as store:
        assert store.apply_migrations(LEDGER) == []
        assert [_read(store, rid) for rid in (1, 2, 4)] == [b"entry one", b"entry two", b"three"]
        store.db.execute("UPDATE test_ledger SET unit = 'u2' WHERE id = 1")
        with pytest.raises(TamperDetected, match="test_ledger row 1 failed authentication"):
            _read(store, 1)


def test_shredding_the_log_never_touches_another_domain(store_path: Path, key: Passphrase):
    with InteractionLog.create(store_path, key) as log:
        log.store.apply_migrations(LEDGER)
        log.append("private", "r")
        rid = _write(log.store, "u1", b"ledger entry")
        report = log.shred_epochs_before(datetime.now(UTC) + timedelta(days=1))
        assert report.records == 1 and report.epochs_shredded == [1]
        assert _read(log.store, rid) == b"ledger entry"
        domains = {e["domain"]: e["state"] for e in log.store.keys.epochs()}
        assert domains == {"records": "shredded", "test_ledger": "current"}
