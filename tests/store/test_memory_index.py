"""The memory index in the store: sealed per record, written with it, erased with it, verified.

Real SQLite files, real AES-GCM; the raw bytes of the database and its WAL are scanned for
what an erased record's index row held.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from personal.errors import MemoryIndexDamaged
from personal.integrity import repair_store, verify_store
from personal.memory import Memory
from personal.store import Interaction, InteractionLog, Passphrase, RawKey
from personal.store import memory as mi

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_helpers import file_bytes, flip, raw_db

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _row(store_path: Path, rid: int) -> tuple[int, bytes] | None:
    with raw_db(store_path) as conn:
        row = conn.execute(f"SELECT key_epoch, sealed FROM {mi.TABLE} WHERE id = ?", [rid])
        return row.fetchone()


def _ids(store_path: Path, table: str) -> list[int]:
    with raw_db(store_path) as conn:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


@pytest.fixture
def indexed(log: InteractionLog) -> InteractionLog:
    log.append_many(
        [
            Interaction("call my mom", "Calling Maria (mom).", unit="u1", ts=T0),
            Interaction("play some jazz", "Playing Coltrane.", unit="u2", ts=T0),
            Interaction("remind me at 6", "Reminder set for 6 pm.", unit="u3", ts=T0),
        ]
    )
    assert mi.enable(log) == mi.BuildReport(3, [])
    return log


# --- terms -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1).filter(lambda t: "\t" not in t and "\n" not in t),
                       st.integers(1, 10**6)))  # fmt: skip
def test_term_counts_round_trip(counts: dict[str, int]) -> None:
    assert mi.decode_terms(mi.encode_terms(counts)) == counts


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_every_token_of_any_text_round_trips(prompt: str, response: str) -> None:
    counts = mi.count_terms(prompt, response)
    assert mi.decode_terms(mi.encode_terms(counts)) == dict(counts)
    assert all(t and len(t) <= mi.MAX_TERM and "\t" not in t for t in counts)


def test_terms_fold_case_and_drop_punctuation() -> None:
    assert mi.terms("Call MOM, at 6:30!") == ["call", "mom", "at", "6", "30"]
    assert mi.count_terms("Ana ana", "ANA?") == Counter({"ana": 3})
    with pytest.raises(ValueError):
        mi.decode_terms(b"\x02x")


# --- writing -----------------------------------------------------------------------------------


def test_a_store_keeps_no_index_until_enabled(log: InteractionLog) -> None:
    log.append("hi", "hello")
    assert not mi.enabled(log.store.db) and mi.check(log) == []
    assert mi.enable(log) == mi.BuildReport(1, [])
    assert mi.enable(log) is None  # already kept


def test_appends_write_index_rows_sealed_under_the_log_keys(
    indexed: InteractionLog, store_path: Path
) -> None:
    ids = indexed.append_many([Interaction("zebra crossing", "ok"), Interaction("a", "b")])
    assert _ids(store_path, mi.TABLE) == _ids(store_path, "records") == [1, 2, 3, *ids]
    epoch, blob = _row(store_path, ids[0])  # type: ignore[misc]
    assert indexed.store.keys.epochs("records")[-1]["epoch"] == epoch
    assert b"zebra" not in file_bytes(store_path)  # terms are sealed
    assert mi.open_row(indexed.store, ids[0], epoch, blob) == {"zebra": 1, "crossing": 1, "ok": 1}
    assert mi.check(indexed) == []


def test_a_failed_append_writes_no_index_row(indexed: InteractionLog, store_path: Path) -> None:
    with pytest.raises(Exception, match="interaction 1"):
        indexed.append_many([Interaction("fine", "ok"), Interaction("bad", 5)])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), indexed.atomic():
        indexed.append("rolled back", "with its index row")
        raise RuntimeError
    assert _ids(store_path, mi.TABLE) == [1, 2, 3] and mi.check(indexed) == []


def test_index_rows_are_a_fraction_of_the_log(log: InteractionLog) -> None:
    text = "the quick brown fox jumps over the lazy dog " * 20
    log.append_many(Interaction(text, text) for _ in range(200))
    mi.enable(log)
    stats = Memory(log).stats()
    assert stats.entries == stats.records == 200
    assert stats.index_bytes_ratio < 1.0


# --- erasure -----------------------------------------------------------------------------------


def _fill(log: InteractionLog) -> dict[str, list[int]]:
    ids = {}
    for unit, word in (("erased-unit", "xylophonist"), ("kept-unit", "harmonica")):
        ids[unit] = log.append_many(
            Interaction(f"{word} lesson {i}", "booked", unit=unit, ts=T0 + timedelta(days=i))
            for i in range(10)
        )
    return ids


def _blobs(store_path: Path, ids: list[int]) -> list[bytes]:
    return [_row(store_path, rid)[1] for rid in ids]  # type: ignore[index]


@pytest.mark.parametrize("how", ["unit", "before", "source"])
def test_erasure_removes_index_rows_from_the_db_and_wal(
    log: InteractionLog, store_path: Path, how: str
) -> None:
    mi.enable(log)
    ids = _fill(log)
    erased = _blobs(store_path, ids["erased-unit"])
    before = file_bytes(store_path)
    assert all(b[20:52] in before for b in erased)  # the scan sees index ciphertexts
    assert b"xylophonist" not in before  # and never the term itself
    if how == "unit":
        report = log.erase("erased-unit")
    elif how == "before":  # the erased unit's records are the older ones here
        with log.atomic() as db:
            db.execute("UPDATE records SET ts = ? WHERE unit = 'erased-unit'", ["2020"])
        report = log.erase(before=T0)
    else:
        with log.atomic() as db:
            db.execute("UPDATE records SET source = 'gone' WHERE unit = 'erased-unit'")
        report = log.erase(source="gone")
    assert report.records == 10 and report.purged
    after = file_bytes(store_path)
    assert not any(b[20:52] in after for b in erased)
    assert _ids(store_path, mi.TABLE) == _ids(store_path, "records") == ids["kept-unit"]
    assert mi.check(log) == []
    assert [h for h, _ in Memory(log).search("xylophonist")] == []
    assert len(Memory(log).search("harmonica", k=20)) == 10


def test_crypto_shredding_removes_index_rows(store_path: Path, key: Passphrase) -> None:
    with InteractionLog.create(store_path, key, epoch_period=timedelta(microseconds=1)) as log:
        old = log.append_many(Interaction(f"xylophonist {i}", "r") for i in range(3))
        mi.enable(log)  # index rows of the old records are sealed under a later epoch
        cut = datetime.now(UTC)
        new = log.append("harmonica", "r")
        blobs = _blobs(store_path, old)
        report = log.shred_epochs_before(cut)
        assert report.records == 3
        assert not any(b[20:52] in file_bytes(store_path) for b in blobs)
        assert _ids(store_path, mi.TABLE) == [new] and mi.check(log) == []


def test_erased_index_rows_put_back_from_an_old_copy_never_open(
    log: InteractionLog, store_path: Path, tmp_path: Path
) -> None:
    mi.enable(log)
    ids = _fill(log)
    log.store.checkpoint()
    backup = tmp_path / "backup.db"
    with raw_db(store_path) as conn:
        conn.execute("VACUUM INTO ?", [str(backup)])
    log.erase("erased-unit")
    with raw_db(store_path) as conn:
        conn.execute("ATTACH ? AS old", [str(backup)])
        conn.execute(
            f"INSERT INTO {mi.TABLE} SELECT * FROM old.{mi.TABLE} WHERE id IN "
            "(SELECT id FROM old.records WHERE unit = 'erased-unit')"
        )
    problems = mi.check(log)
    assert sorted({p.row for p in problems}) == ids["erased-unit"]
    assert all("memory rebuild" in p.error for p in problems)
    with pytest.raises(MemoryIndexDamaged, match="personal memory rebuild STORE"):
        Memory(log).search("xylophonist")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    units=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=20),
    erase=st.sets(st.sampled_from("abcdef"), min_size=1),
    rebuild_first=st.booleans(),
)
def test_erase_always_removes_the_entry(
    tmp_path_factory: pytest.TempPathFactory, units: list[str], erase: set[str], rebuild_first: bool
) -> None:
    path = tmp_path_factory.mktemp("erase") / "store"
    with InteractionLog.create(path, RawKey(bytes(32))) as log:
        mi.enable(log)
        ids = log.append_many(
            Interaction(f"term{u}{i} shared", "reply", unit=u) for i, u in enumerate(units)
        )
        if rebuild_first:  # index rows under another epoch than their records
            mi.rebuild(log)
        memory = Memory(log)
        memory.refresh()
        log.erase(sorted(erase))
        kept = [rid for rid, u in zip(ids, units, strict=True) if u not in erase]
        assert _ids(path, mi.TABLE) == _ids(path, "records") == kept
        assert mi.check(log) == []
        found = {rid for rid, _ in memory.search("shared", k=100)}
        assert found == set(kept)
        for i, u in enumerate(units):
            hits = [rid for rid, _ in memory.search(f"term{u}{i}")]
            assert hits == ([] if u in erase else [ids[i]])


# --- verification ------------------------------------------------------------------------------


def _set_row(store_path: Path, rid: int, blob: bytes) -> None:
    with raw_db(store_path) as conn:
        conn.execute(f"UPDATE {mi.TABLE} SET sealed = ? WHERE id = ?", [blob, rid])


def test_every_byte_of_an_index_row_is_authenticated(
    indexed: InteractionLog, store_path: Path
) -> None:
    _, blob = _row(store_path, 2)  # type: ignore[misc]
    for i in range(len(blob)):
        _set_row(store_path, 2, flip(blob, i))
        assert [p.row for p in mi.check(indexed)] == [2]
    _set_row(store_path, 2, blob)
    assert mi.check(indexed) == []


@pytest.mark.parametrize("damage", ["flip", "missing", "orphan", "moved", "truncated"])
def test_a_damaged_index_gets_a_named_error_and_a_rebuild_fixes_it(
    indexed: InteractionLog, store_path: Path, damage: str
) -> None:
    epoch, blob = _row(store_path, 2)  # type: ignore[misc]
    with raw_db(store_path) as conn:
        if damage == "flip":
            conn.execute(f"UPDATE {mi.TABLE} SET sealed = ? WHERE id = 2", [flip(blob, 30)])
        elif damage == "missing":
            conn.execute(f"DELETE FROM {mi.TABLE} WHERE id = 2")
        elif damage == "orphan":
            conn.execute(f"INSERT INTO {mi.TABLE} VALUES (99, ?, ?)", [epoch, blob])
        elif damage == "moved":  # rows 1 and 2 swapped
            _, other = _row(store_path, 1)  # type: ignore[misc]
            conn.execute(f"UPDATE {mi.TABLE} SET sealed = ? WHERE id = 1", [blob])
            conn.execute(f"UPDATE {mi.TABLE} SET sealed = ? WHERE id = 2", [other])
        else:
            conn.execute(f"UPDATE {mi.TABLE} SET sealed = ? WHERE id = 2", [blob[:20]])
    named = {
        "flip": "memory index row 2 failed authentication",
        "missing": "record 2 has no memory index row",
        "orphan": "memory index row 99 belongs to no record",
        "moved": "memory index row 1 failed authentication",
        "truncated": "memory index row 2 failed authentication",
    }[damage]
    problems = mi.check(indexed)
    assert any(named in p.error for p in problems), problems
    with pytest.raises(MemoryIndexDamaged, match="run `personal memory rebuild STORE`"):
        Memory(indexed).search("mom")
    report = verify_store(indexed)
    assert not report.ok
    assert {b.table for b in report.bad_rows} == {mi.TABLE} and all(
        b.derived for b in report.bad_rows
    )
    assert mi.rebuild(indexed).entries == 3
    assert mi.check(indexed) == [] and verify_store(indexed).ok
    assert [rid for rid, _ in Memory(indexed).search("mom")] == [1]


def test_an_index_row_from_another_store_fails(
    indexed: InteractionLog, store_path: Path, tmp_path: Path, key: Passphrase
) -> None:
    other_path = tmp_path / "other"
    with InteractionLog.create(other_path, key) as other:
        other.append_many(Interaction(f"other {i}", "r") for i in range(3))
        mi.enable(other)
    with raw_db(store_path) as conn:
        conn.execute("ATTACH ? AS other", [str(other_path / "store.db")])
        conn.execute(f"DELETE FROM {mi.TABLE} WHERE id = 3")
        conn.execute(f"INSERT INTO {mi.TABLE} SELECT * FROM other.{mi.TABLE} WHERE id = 3")
    assert [p.row for p in mi.check(indexed)] == [3]
    with pytest.raises(MemoryIndexDamaged, match="memory index row 3"):
        Memory(indexed).search("reminder")


def test_repair_rebuilds_a_damaged_index(indexed: InteractionLog, store_path: Path) -> None:
    with raw_db(store_path) as conn:
        conn.execute(f"DELETE FROM {mi.TABLE} WHERE id = 1")
    report = repair_store(indexed)
    assert report.ok and any("memory index: rebuilt" in line for line in report.repaired)
    assert mi.check(indexed) == []


def test_rotating_keys_keeps_the_index_readable(
    indexed: InteractionLog, store_path: Path, key: Passphrase
) -> None:
    new = Passphrase("a new passphrase", key.params)
    indexed.store.rotate_keys(new)
    indexed.close()
    with InteractionLog.open(store_path, new) as log:
        assert mi.check(log) == [] and [rid for rid, _ in Memory(log).search("jazz")] == [2]


def test_drop_deletes_the_index(indexed: InteractionLog, store_path: Path) -> None:
    blobs = _blobs(store_path, [1, 2, 3])
    assert mi.drop(indexed) == 3
    assert not mi.enabled(indexed.store.db) and mi.check(indexed) == []
    assert not any(b[20:52] in file_bytes(store_path) for b in blobs)
    indexed.append("after the drop", "no index row")
    with pytest.raises(MemoryIndexDamaged, match="keeps no memory index"):
        Memory(indexed).search("drop")
    assert mi.enable(indexed) == mi.BuildReport(4, [])
