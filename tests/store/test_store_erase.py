"""Erasure leaves no trace in the database files; crypto-shredding destroys data keys."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from personal.errors import RecordNotFound
from personal.store import Interaction, InteractionLog, Passphrase

import pytest
from store_helpers import file_bytes, raw_db

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _sealed(store_path: Path, rid: int) -> bytes:
    with raw_db(store_path) as conn:
        return conn.execute("SELECT sealed FROM records WHERE id = ?", [rid]).fetchone()[0]


def _fill(log: InteractionLog, size: int) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for unit in ("erased-unit-marker", "kept-unit-marker"):
        batch = [
            Interaction(f"{unit} prompt {i} " + "x" * size, "r", unit=unit, ts=T0)
            for i in range(20)
        ]
        ids[unit] = log.append_many(batch)
    return ids


@pytest.mark.parametrize("size", [100, 20_000])  # in-page cells and overflow pages
def test_erased_records_leave_no_bytes_in_the_db_or_wal(
    log: InteractionLog, store_path: Path, size: int
) -> None:
    ids = _fill(log, size)
    erased = [_sealed(store_path, rid) for rid in ids["erased-unit-marker"]]
    kept = [_sealed(store_path, rid) for rid in ids["kept-unit-marker"]]
    before = file_bytes(store_path)
    assert all(c[20:52] in before for c in erased + kept)  # the scan can see ciphertexts
    assert b"prompt" not in before  # and never saw plaintext

    report = log.erase("erased-unit-marker")
    assert report.records == 20 and report.purged
    assert (store_path / "store.db-wal").stat().st_size == 0
    after = file_bytes(store_path)
    assert not any(c[20:52] in after for c in erased)
    assert b"erased-unit-marker" not in after  # nor its cleartext unit id (incl. index pages)
    # Kept records were re-sealed under a fresh key (their old epoch was destroyed).
    resealed = [_sealed(store_path, rid) for rid in ids["kept-unit-marker"]]
    assert all(c[20:52] in after for c in resealed) and resealed != kept
    assert b"kept-unit-marker" in after
    assert [r.unit for r in log][:1] == ["kept-unit-marker"]


def test_erasure_by_date_leaves_no_bytes(log: InteractionLog, store_path: Path) -> None:
    old = log.append("old", "r", unit="old-unit-marker", ts=T0)
    new = log.append("new", "r", unit="new-unit-marker", ts=T0 + timedelta(days=30))
    old_blob, new_blob = _sealed(store_path, old), _sealed(store_path, new)
    assert log.erase(before=T0 + timedelta(days=1)).records == 1
    after = file_bytes(store_path)
    assert old_blob[20:52] not in after and b"old-unit-marker" not in after
    assert _sealed(store_path, new)[20:52] in after  # re-sealed under a fresh key
    assert log.get(new).prompt == "new" and new_blob != _sealed(store_path, new)


def test_shredded_data_keys_leave_no_bytes(store_path: Path, key: Passphrase) -> None:
    with InteractionLog.create(store_path, key, epoch_period=timedelta(microseconds=1)) as log:
        log.append_many(Interaction("old", "r") for _ in range(3))
        with raw_db(store_path) as conn:
            wrapped = conn.execute("SELECT wrapped FROM store_dek WHERE epoch = 1").fetchone()[0]
        assert wrapped in file_bytes(store_path)
        cut = datetime.now(UTC)
        log.append("new", "r")
        assert log.shred_epochs_before(cut).epochs_shredded == [1]
        assert wrapped not in file_bytes(store_path)


def test_a_reader_holding_a_snapshot_delays_the_purge(
    log: InteractionLog, store_path: Path
) -> None:
    ids = _fill(log, 100)
    blob = _sealed(store_path, ids["erased-unit-marker"][0])
    reader = sqlite3.connect(store_path / "store.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM records").fetchone()  # pins a snapshot
    log.store.db.execute("PRAGMA busy_timeout = 50")
    try:
        assert log.erase("erased-unit-marker").purged is False
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert log.store.checkpoint() is True
    assert blob[20:52] not in file_bytes(store_path)


def test_erased_rows_put_back_from_an_old_copy_never_open(
    log: InteractionLog, store_path: Path, tmp_path: Path
) -> None:
    """Issue 19, item 5: a copy taken before the erasure must not bring erased rows back."""
    ids = _fill(log, 100)
    log.store.checkpoint()
    backup = tmp_path / "backup.db"
    with raw_db(store_path) as conn:
        conn.execute("VACUUM INTO ?", [str(backup)])
    assert log.erase("erased-unit-marker").records == 20
    with raw_db(store_path) as conn:
        conn.execute("ATTACH ? AS old", [str(backup)])
        conn.execute(
            "INSERT INTO records SELECT * FROM old.records WHERE unit = 'erased-unit-marker'"
        )
    report = log.verify()
    assert not report.ok
    assert sorted(b.id for b in report.bad_records) == ids["erased-unit-marker"]
    assert all("shredded" in b.error for b in report.bad_records)
    with pytest.raises(RecordNotFound):
        log.get(ids["erased-unit-marker"][0])
    skipped: list[int] = []
    exported = [r["unit"] for r in log.export(on_bad=lambda rid, exc: skipped.append(rid))]
    assert set(exported) == {"kept-unit-marker"} and sorted(skipped) == ids["erased-unit-marker"]
