"""Tampering: every modified, moved or swapped record is detected, named, and contained."""

from __future__ import annotations

import shutil
from pathlib import Path

from personal.errors import TamperDetected, WrongKey
from personal.store import Interaction, InteractionLog, Passphrase

import pytest
from store_helpers import flip, raw_db


@pytest.fixture
def three(log: InteractionLog) -> InteractionLog:
    log.append_many(
        [
            Interaction("first", "one", unit="u1", source="app"),
            Interaction("second", "two", unit="u2", source="app"),
            Interaction("third", "three", unit="u3", source="app"),
        ]
    )
    return log


def _set(store_path: Path, column: str, value: object, rid: int = 2) -> None:
    with raw_db(store_path) as conn:
        conn.execute(f"UPDATE records SET {column} = ? WHERE id = ?", [value, rid])


def _column(store_path: Path, column: str, rid: int = 2) -> object:
    with raw_db(store_path) as conn:
        return conn.execute(f"SELECT {column} FROM records WHERE id = ?", [rid]).fetchone()[0]


def _assert_only_record_2_is_bad(log: InteractionLog) -> None:
    with pytest.raises(TamperDetected, match="record 2 failed authentication"):
        log.get(2)
    assert [r.prompt for r in (log.get(1), log.get(3))] == ["first", "third"]
    with pytest.raises(TamperDetected, match="record 2"):
        list(log.iter_records())
    skipped: list[int] = []
    kept = [r.id for r in log.iter_records(on_bad=lambda rid, exc: skipped.append(rid))]
    assert (kept, skipped) == ([1, 3], [2])
    report = log.verify()
    assert not report.ok
    assert [b.id for b in report.bad_records] == [2]
    assert report.integrity == ["ok"]


def test_every_byte_of_a_sealed_record_is_authenticated(three: InteractionLog, store_path: Path):
    blob = _column(store_path, "sealed")
    assert isinstance(blob, bytes) and len(blob) == 1 + 12 + 64 + 16  # version|nonce|ct|tag
    for i in range(len(blob)):
        _set(store_path, "sealed", flip(blob, i))
        with pytest.raises(TamperDetected, match="record 2"):
            three.get(2)
    _set(store_path, "sealed", blob[:-1])  # truncated tag
    with pytest.raises(TamperDetected, match="record 2"):
        three.get(2)
    _set(store_path, "sealed", blob)
    assert three.get(2).prompt == "second"


@pytest.mark.parametrize("column", ["unit", "ts", "source"])
def test_every_byte_of_the_cleartext_columns_is_bound(
    three: InteractionLog, store_path: Path, column: str
) -> None:
    text = _column(store_path, column)
    data = text.encode()
    for i in range(len(data)):
        flipped = bytes([data[i] ^ 0x01]) if data[i] ^ 0x01 else b"x"
        _set(store_path, column, (data[:i] + flipped + data[i + 1 :]).decode())
        with pytest.raises(TamperDetected, match="record 2"):
            three.get(2)
    _set(store_path, column, text)
    assert three.get(2).prompt == "second"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("key_epoch", 2),
        ("key_epoch", 99),
        ("key_epoch", "one"),
        ("sealed", "text"),
        ("sealed", b""),
        ("unit", b"\xff\xfe"),
        ("ts", "yesterday"),
    ],
)
def test_tampered_columns_of_any_type_are_detected(
    three: InteractionLog, store_path: Path, column: str, value: object
) -> None:
    if column == "key_epoch" and value == 2:  # a real, different key
        three.store.seal_many("elsewhere", [(1, (), b"")])
    _set(store_path, column, value)
    _assert_only_record_2_is_bad(three)


def test_a_changed_record_id_is_detected(three: InteractionLog, store_path: Path) -> None:
    with raw_db(store_path) as conn:
        conn.execute("UPDATE records SET id = 7 WHERE id = 2")
    with pytest.raises(TamperDetected, match="record 7"):
        three.get(7)
    assert [b.id for b in three.verify().bad_records] == [7]


def test_swapped_ciphertexts_are_detected_in_both_rows(three: InteractionLog, store_path: Path):
    with raw_db(store_path) as conn:
        a, b = (r[0] for r in conn.execute("SELECT sealed FROM records WHERE id IN (1, 2)"))
        conn.execute("UPDATE records SET sealed = ? WHERE id = 1", [b])
        conn.execute("UPDATE records SET sealed = ? WHERE id = 2", [a])
    for rid in (1, 2):
        with pytest.raises(TamperDetected, match=f"record {rid}"):
            three.get(rid)
    assert three.get(3).prompt == "third"
    assert [b.id for b in three.verify().bad_records] == [1, 2]


def test_swapped_rows_with_their_cleartext_are_detected(three: InteractionLog, store_path: Path):
    with raw_db(store_path) as conn:
        rows = conn.execute("SELECT unit, ts, source, key_epoch, sealed FROM records").fetchall()
        conn.execute("DELETE FROM records WHERE id IN (1, 3)")
        conn.execute("INSERT INTO records VALUES (1, ?, ?, ?, ?, ?)", rows[2])
        conn.execute("INSERT INTO records VALUES (3, ?, ?, ?, ?, ?)", rows[0])
    assert [b.id for b in three.verify().bad_records] == [1, 3]


def test_a_record_copied_from_another_store_is_detected(
    three: InteractionLog, store_path: Path, tmp_path: Path, key: Passphrase
) -> None:
    with InteractionLog.create(tmp_path / "other", key) as other:
        other.append("second", "two", unit="u2", source="app", ts=three.get(2).ts)
    with raw_db(tmp_path / "other") as conn:
        foreign = conn.execute("SELECT sealed FROM records WHERE id = 1").fetchone()[0]
    _set(store_path, "sealed", foreign)
    _assert_only_record_2_is_bad(three)


def test_a_tampered_data_key_is_named_and_contained(store_path: Path, key: Passphrase) -> None:
    with InteractionLog.create(store_path, key, max_encryptions=2) as log:
        log.append_many(Interaction(f"p{i}", "r") for i in range(4))  # epochs 1 and 2
    with raw_db(store_path) as conn:
        wrapped = conn.execute("SELECT wrapped FROM store_dek WHERE epoch = 1").fetchone()[0]
        conn.execute("UPDATE store_dek SET wrapped = ? WHERE epoch = 1", [flip(wrapped, 3)])
    with InteractionLog.open(store_path, key) as log:
        with pytest.raises(
            TamperDetected,
            match="record 1 failed authentication: the wrapped data key of key epoch 1",
        ):
            log.get(1)
        assert [log.get(i).prompt for i in (3, 4)] == ["p2", "p3"]
        report = log.verify()
        assert [e for e, _ in report.bad_epochs] == [1]
        assert [b.id for b in report.bad_records] == [1, 2]


def test_a_tampered_key_check_value_fails_closed(store_path: Path, key: Passphrase) -> None:
    InteractionLog.create(store_path, key).close()
    with raw_db(store_path) as conn:
        check = conn.execute("SELECT check_ct FROM store_kek").fetchone()[0]
        conn.execute("UPDATE store_kek SET check_ct = ?", [flip(check, 0)])
    with pytest.raises(WrongKey):
        InteractionLog.open(store_path, key)


def test_nothing_readable_is_stored(three: InteractionLog, store_path: Path) -> None:
    three.append("a very recognisable prompt", "and a recognisable response")
    three.store.checkpoint()
    shutil.copy(store_path / "store.db", store_path.parent / "copy.db")
    data = (store_path.parent / "copy.db").read_bytes()
    for secret in (b"recognisable", b"first", b"three"):
        assert secret not in data
    assert b"u1" in data  # the unit is cleartext metadata, by design
