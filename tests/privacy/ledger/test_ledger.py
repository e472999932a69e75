"""The persisted privacy ledger: charges, hash chain, seals, anchor, rollback, random schedules."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from personal.errors import (
    BudgetExhausted,
    LedgerAnchorMissing,
    LedgerIntegrityError,
    LedgerRollback,
    LifetimeContractFixed,
    NoEligibleUnits,
    PrivacyError,
    PrivacyParameterError,
    RoundNotOpen,
    UnitOverBudget,
    WrongKey,
)
from personal.privacy.filter import Charge, RenyiFilter
from personal.privacy.ledger import Ledger
from personal.privacy.ledger import anchor as anchor_module
from personal.privacy.ledger.chain import units_digest
from personal.store import RawKey, Store

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EPS, DELTA = 2.0, 1e-5
KEY = RawKey(bytes(range(32)))
CHEAP = Charge(purpose="training", sample_rate=0.1, noise_multiplier=2.0, steps=5)
CONTEXT = {
    "base_fingerprint": "sha256:base-v1",
    "clip_norm": 1.0,
    "accountant": "rdp",
    "adapter_version": 3,
    "policy_digest": "sha256:policy",
}
UNITS = [f"u{i}" for i in range(6)]


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def opened(path: Path, key: RawKey = KEY, **store_kw) -> Iterator[Ledger]:
    """A store (created if absent) and its ledger; the store is closed afterwards."""
    store = Store.open(path, key, **store_kw) if path.exists() else Store.create(path, key)
    try:
        yield Ledger.open(store, epsilon=EPS, delta=DELTA)
    finally:
        store.close()


def run(ledger: Ledger, units=UNITS, charge: Charge = CHEAP, status: str = "completed") -> int:
    selection = ledger.select(charge, units)
    round_id = ledger.begin_round(charge, selection.eligible, **CONTEXT)
    ledger.finish_round(round_id, status, {"completed_steps": charge.steps})
    return round_id


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path / "store.db", isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]


def copy_db(src: Path, dst: Path) -> None:
    """Copy the database files (db, WAL) of a closed store, as a backup would."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("store.db-wal", "store.db-shm"):
        (dst / name).unlink(missing_ok=True)
    for name in ("store.db", "store.db-wal"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store whose ledger has every kind of entry (built once)."""
    path = tmp_path_factory.mktemp("template") / "store"
    with opened(path) as ledger:
        run(ledger)
        run(ledger, UNITS[:3], status="aborted")
        ledger.record_uncharged(
            "migration", reason="distilled", base_fingerprint="sha256:v2", policy_digest="sha256:p"
        )
        run(ledger, UNITS[2:])
    return path


# --- the protocol ------------------------------------------------------------------------------


def test_rounds_round_trip_across_close_and_reopen(path: Path) -> None:
    with opened(path) as ledger:
        assert ledger.head.seq == 1  # the genesis entry
        first = run(ledger)
        second = run(ledger, UNITS[:2])
        head, eps = ledger.head, ledger.epsilons()
        assert (first, second) == (1, 2) and head.seq == 5
    with opened(path) as ledger:
        assert ledger.head == head and ledger.epsilons() == eps
        assert set(eps) == set(UNITS) and eps["u0"] > eps["u5"] > 0
        rounds = ledger.rounds(with_units=True)
        assert [r.round_id for r in rounds] == [1, 2]
        r = rounds[1]
        assert (r.purpose, r.noise_multiplier, r.sample_rate, r.steps) == ("training", 2.0, 0.1, 5)
        assert (r.clip_norm, r.accountant, r.status, r.charged) == (1.0, "rdp", "completed", True)
        assert (r.base_fingerprint, r.adapter_version, r.policy_digest) == (
            "sha256:base-v1",
            3,
            "sha256:policy",
        )
        assert r.units == ("u0", "u1") and r.eligible_units == 2
        assert r.units_digest == units_digest(["u1", "u0"])  # order-independent
        assert (r.epsilon, r.delta) == (EPS, DELTA) and r.summary == {"completed_steps": 5}
        report = ledger.verify()
        assert report.ok, report.problems
        assert (report.entries, report.rounds, report.units) == (5, 2, 6)
        assert report.head == report.anchor == head
    assert (path / "ledger.anchor").exists()


def test_the_charge_is_durable_before_the_round_runs(path: Path) -> None:
    with opened(path) as ledger:
        round_id = ledger.begin_round(CHEAP, ["a", "b"], **CONTEXT)
        charged = ledger.epsilon_of("a")
        assert charged > 0 and ledger.epsilon_of("never") == 0.0
        with opened(path) as other:  # another connection, as after a crash mid-round
            assert other.epsilon_of("a") == charged
            assert other.rounds()[0].status == "charged"
            assert other.verify().notes == [
                "rounds charged but not finished (running or interrupted): [1]"
            ]
        ledger.finish_round(round_id, "completed")


def test_aborted_rounds_stay_charged(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"], status="aborted")
        run(ledger, ["b"], status="completed")
        assert ledger.epsilon_of("a") == ledger.epsilon_of("b") > 0
        assert [r.status for r in ledger.rounds()] == ["aborted", "completed"]
        assert ledger.verify().ok


def test_finishing_a_round_that_is_not_open(path: Path) -> None:
    with opened(path) as ledger:
        round_id = run(ledger, ["a"])
        head = ledger.head
        with pytest.raises(RoundNotOpen, match="already finished"):
            ledger.finish_round(round_id, "aborted")
        with pytest.raises(RoundNotOpen, match="not a charged round"):
            ledger.finish_round(99)
        free = ledger.record_uncharged(
            "migration", reason="r", base_fingerprint="f", policy_digest="sha256:p"
        )
        with pytest.raises(RoundNotOpen):
            ledger.finish_round(free)
        with pytest.raises(PrivacyParameterError):
            ledger.finish_round(round_id, "refunded")
        with pytest.raises(PrivacyParameterError):
            ledger.finish_round(round_id, "completed", {"not json": object()})
        assert ledger.head.seq == head.seq + 1  # only the uncharged entry was appended


def test_bad_rounds_are_refused_and_charge_nothing(path: Path) -> None:
    costly = Charge(purpose="training", sample_rate=0.5, noise_multiplier=1.0, steps=20)
    with opened(path) as ledger:
        head = ledger.head
        with pytest.raises(NoEligibleUnits, match="log some first"):
            ledger.select(CHEAP, [])
        with pytest.raises(BudgetExhausted, match="nothing was charged"):
            ledger.select(costly, ["a", "b"])  # one such round alone exceeds ε = 2
        with pytest.raises(UnitOverBudget, match=r"select\(\.\.\.\)\.eligible"):
            ledger.begin_round(costly, ["a"], **CONTEXT)
        with pytest.raises(NoEligibleUnits):
            ledger.begin_round(CHEAP, [], **CONTEXT)
        with pytest.raises(PrivacyParameterError, match="twice"):
            ledger.begin_round(CHEAP, ["a", "a"], **CONTEXT)
        with pytest.raises(PrivacyParameterError):
            ledger.begin_round(CHEAP, ["a"], **{**CONTEXT, "clip_norm": 0.0})
        with pytest.raises(PrivacyParameterError):
            ledger.begin_round(CHEAP, ["a"], **{**CONTEXT, "accountant": "gdp"})
        with pytest.raises(PrivacyParameterError):
            ledger.begin_round(CHEAP, ["a"], **{**CONTEXT, "base_fingerprint": ""})
        assert ledger.head == head and ledger.epsilons() == {}


def test_excluded_units_are_reported_and_not_charged(path: Path) -> None:
    with opened(path) as ledger:
        while True:
            try:
                selection = ledger.select(CHEAP, ["old"])
            except BudgetExhausted:
                break
            ledger.begin_round(CHEAP, selection.eligible, **CONTEXT)
        spent = ledger.epsilon_of("old")
        selection = ledger.select(CHEAP, ["old", "new"])
        assert selection.eligible == ("new",) and selection.excluded == ("old",)
        run(ledger, ["old", "new"])
        assert ledger.epsilon_of("old") == spent <= EPS


def test_a_zero_charge_migration_is_on_the_record(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
        before = ledger.epsilons()
        round_id = ledger.record_uncharged(
            "migration",
            reason="distilled from the old adapter on public prompts: post-processing",
            base_fingerprint="sha256:base-v2",
            adapter_version=4,
            policy_digest="sha256:p",
        )
        assert ledger.epsilons() == before
        r = ledger.rounds()[-1]
        assert (r.round_id, r.purpose, r.charged, r.steps, r.eligible_units) == (
            round_id,
            "migration",
            False,
            0,
            0,
        )
        assert r.reason.startswith("distilled") and r.status == "completed"
        with pytest.raises(PrivacyParameterError, match="reason"):
            ledger.record_uncharged(
                "migration", reason=" ", base_fingerprint="f", policy_digest="d"
            )
        with pytest.raises(PrivacyParameterError, match="purpose"):
            ledger.record_uncharged("gossip", reason="r", base_fingerprint="f", policy_digest="p")
        assert ledger.verify().ok


def test_two_handles_on_one_store_share_the_chain(path: Path) -> None:
    with opened(path) as a, opened(path) as b:
        run(a, ["x"])
        assert b.epsilon_of("x") == a.epsilon_of("x")  # b catches up with a's entries
        run(b, ["x", "y"])
        run(a, ["y"])
        assert a.head == b.head and a.epsilons() == b.epsilons()
        assert a.verify().ok and b.verify().ok


def test_int_and_str_units_stay_distinct(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, [1, "1"])
        run(ledger, [1])
    with opened(path) as ledger:
        eps = ledger.epsilons()
        assert set(eps) == {1, "1"} and eps[1] > eps["1"]


# --- tampering ---------------------------------------------------------------------------------


def _copy(template: Path, into: str) -> Path:
    dst = Path(into) / "store"
    shutil.copytree(template, dst)
    return dst


def _entry(path: Path, seq: int, column: str) -> bytes:
    with raw(path) as conn:
        row = conn.execute(f"SELECT {column} FROM ledger_entries WHERE seq = ?", [seq])
        return bytes(row.fetchone()[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.integers(1, 8),
    column=st.sampled_from(["sealed", "entry_hash", "prev_hash"]),
    where=st.floats(0, 1, exclude_max=True),
)
def test_flipping_any_byte_of_any_entry_is_detected(
    template: Path, seq: int, column: str, where: float
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _copy(template, tmp)
        value = _entry(path, seq, column)
        with raw(path) as conn:
            conn.execute(
                f"UPDATE ledger_entries SET {column} = ? WHERE seq = ?",
                [flip(value, int(where * len(value))), seq],
            )
        with pytest.raises(LedgerIntegrityError), opened(path):
            pass


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_entries SET created_at = '2020-01-01T00:00:00.000000Z' WHERE seq = 2",
        "UPDATE ledger_entries SET round_id = 7 WHERE seq = 3",
        "UPDATE ledger_entries SET kind = 'finish' WHERE seq = 2",
        "UPDATE ledger_entries SET key_epoch = key_epoch + 1 WHERE seq = 4",
    ],
)
def test_editing_cleartext_columns_is_detected(template: Path, tmp_path: Path, sql: str) -> None:
    path = _copy(template, str(tmp_path))
    with raw(path) as conn:
        conn.execute(sql)
    with pytest.raises(LedgerIntegrityError, match="damaged"), opened(path):
        pass


def test_deleting_or_reordering_entries_is_detected(template: Path, tmp_path: Path) -> None:
    middle = _copy(template, str(tmp_path / "middle"))
    with raw(middle) as conn:
        conn.execute("DELETE FROM ledger_entries WHERE seq = 3")
    with pytest.raises(LedgerIntegrityError, match="entry 3 is missing"), opened(middle):
        pass
    last = _copy(template, str(tmp_path / "last"))
    with raw(last) as conn:
        conn.execute("DELETE FROM ledger_entries WHERE seq = (SELECT MAX(seq) FROM ledger_entries)")
    with pytest.raises(LedgerRollback), opened(last):
        pass
    swapped = _copy(template, str(tmp_path / "swapped"))
    with raw(swapped) as conn:
        conn.execute("UPDATE ledger_entries SET seq = -1 WHERE seq = 2")
        conn.execute("UPDATE ledger_entries SET seq = 2 WHERE seq = 3")
        conn.execute("UPDATE ledger_entries SET seq = 3 WHERE seq = -1")
    with pytest.raises(LedgerIntegrityError, match="does not link"), opened(swapped):
        pass
    everything = _copy(template, str(tmp_path / "all"))
    with raw(everything) as conn:
        conn.execute("DELETE FROM ledger_entries")
    with pytest.raises(LedgerIntegrityError, match="every entry was deleted"), opened(everything):
        pass


def test_a_deleted_entry_with_recomputed_hashes_is_detected(template: Path, tmp_path: Path):
    """Hashes are unkeyed, so an attacker can relink the chain; the anchor and seals catch it."""
    from personal.privacy.ledger.chain import ROW_COLUMNS, Row, row_hash

    path = _copy(template, str(tmp_path))
    with raw(path) as conn:
        rows = [Row(*r) for r in conn.execute(f"SELECT {ROW_COLUMNS} FROM ledger_entries")]
        conn.execute("DELETE FROM ledger_entries WHERE seq >= 3")
        prev = rows[1].entry_hash
        for i, r in enumerate(rows[3:], start=3):  # entry 3 dropped, the rest renumbered
            new = r._replace(seq=i, prev_hash=prev)
            new = new._replace(entry_hash=row_hash(new))
            conn.execute(f"INSERT INTO ledger_entries VALUES ({', '.join('?' * 8)})", list(new))
            prev = new.entry_hash
    with pytest.raises(LedgerIntegrityError), opened(path):
        pass


def test_verify_reports_tampering_under_an_open_ledger(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
        sealed = _entry(path, 2, "sealed")
        with raw(path) as conn:
            conn.execute(
                "UPDATE ledger_entries SET sealed = ? WHERE seq = 2",
                [flip(sealed, len(sealed) - 1)],
            )
        report = ledger.verify()
        assert not report.ok
        assert any("entry 2" in p for p in report.problems)
        with pytest.raises(LedgerIntegrityError):
            ledger.rounds()


def test_the_unit_cache_is_only_a_cache(template: Path, tmp_path: Path) -> None:
    with opened(template) as ledger:
        expected = ledger.epsilons()
    gone = _copy(template, str(tmp_path / "gone"))
    with raw(gone) as conn:
        conn.execute("DELETE FROM ledger_state")
    with opened(gone) as ledger:
        assert ledger.epsilons() == expected
    bad = _copy(template, str(tmp_path / "bad"))
    with raw(bad) as conn:
        (blob,) = conn.execute("SELECT sealed FROM ledger_state").fetchone()
        conn.execute("UPDATE ledger_state SET sealed = ?", [flip(blob, 30)])
    with opened(bad) as ledger:
        assert ledger.epsilons() == expected
        assert ledger.verify().ok
        # A validly sealed but wrong cache (a bug, never an attacker without the key): verify
        # rebuilds it from the chain.
        from personal.privacy.ledger.chain import UnitTable

        with ledger.store.atomic():
            ledger.save_table(ledger.head.seq, bytes.fromhex(ledger.head.hash), UnitTable())
        report = ledger.verify()
        assert report.ok and report.repairs == [
            "the per-unit RDP cache differed from the chain: rebuilt from it"
        ]
    with opened(bad) as ledger:
        assert ledger.epsilons() == expected and ledger.verify().repairs == []


# --- rollback and the anchor -------------------------------------------------------------------


@pytest.mark.parametrize("epoch_period", [None, timedelta(microseconds=1)])
def test_restoring_an_older_database_is_refused(
    path: Path, tmp_path: Path, epoch_period: timedelta | None
) -> None:
    """A backup of store.db restored alone. With a tiny epoch period every seal starts a new
    data key, so the anchor's key is missing from the old copy: detected all the same."""
    kw = {"epoch_period": epoch_period}
    with opened(path) as ledger:
        run(ledger, ["a"])
    copy_db(path, tmp_path / "backup")
    with opened(path, **kw) as ledger:
        run(ledger, ["a", "b"])
    copy_db(path, tmp_path / "latest")
    copy_db(tmp_path / "backup", path)
    with pytest.raises(LedgerRollback, match="older copy") as info, opened(path, **kw):
        pass
    assert isinstance(info.value, LedgerIntegrityError) and isinstance(info.value, PrivacyError)
    assert "Training is refused" in str(info.value)
    copy_db(tmp_path / "latest", path)  # putting the latest copy back is the fix
    with opened(path, **kw) as ledger:
        assert ledger.verify().ok and set(ledger.epsilons()) == {"a", "b"}


def test_a_restored_copy_that_was_written_to_diverges(path: Path, tmp_path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
    copy_db(path, tmp_path / "backup")
    with opened(path) as ledger:
        run(ledger, ["a"])
    copy_db(tmp_path / "backup", path)
    # Someone with the key trains on the restored copy against another anchor, so that it
    # grows past the real anchor's head, then puts the real anchor back.
    side = tmp_path / "side.anchor"
    with Store.open(path, KEY) as store:
        Ledger.reanchor(store, reason="side", anchor=side)
        ledger = Ledger.open(store, epsilon=EPS, delta=DELTA, anchor=side)
        run(ledger, ["a"])
        assert ledger.head.seq > 5
    with pytest.raises(LedgerRollback, match="diverges"), opened(path):
        pass


def test_a_database_from_before_the_ledger_is_refused(path: Path, tmp_path: Path) -> None:
    Store.create(path, KEY).close()
    copy_db(path, tmp_path / "backup")
    with opened(path) as ledger:
        run(ledger, ["a"])
    copy_db(tmp_path / "backup", path)
    with pytest.raises(LedgerRollback, match="no privacy ledger"), opened(path):
        pass
    with Store.open(path, KEY) as store:
        Ledger.reanchor(store, reason="accept the restored copy")
    with opened(path) as ledger:
        # The re-anchored genesis binds no contract: the next open completes it.
        assert ledger.epsilons() == {} and [e.kind for e in ledger.entries()] == [
            "genesis",
            "reanchor",
            "contract",
        ]


def test_dropping_the_ledger_tables_is_detected(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
    (path / "ledger.anchor").unlink()
    with raw(path) as conn:
        conn.execute("DROP TABLE ledger_entries")
        conn.execute("DROP TABLE ledger_state")
        conn.execute("DELETE FROM _personal_schema WHERE component = 'ledger'")
    with pytest.raises(LedgerIntegrityError, match="tables are gone"), opened(path):
        pass


def test_an_anchor_one_entry_behind_is_accepted_and_repaired(path: Path) -> None:
    """A crash between the database commit and the anchor write."""
    with opened(path) as ledger:
        run(ledger, ["a"])
        before = (path / "ledger.anchor").read_bytes()
        round_id = ledger.begin_round(CHEAP, ["a"], **CONTEXT)
        head = ledger.head
    (path / "ledger.anchor").write_bytes(before)  # as if the process died before the write
    with opened(path) as ledger:
        assert ledger.head == head  # the database is ahead: accepted (it holds more charges)
        report = ledger.verify()
        assert report.ok and report.anchor == head and report.repairs == []
        assert ledger.rounds()[-1].status == "charged"
        ledger.finish_round(round_id, "aborted")
        assert ledger.verify().ok


def test_a_crash_before_the_anchor_write_leaves_the_round_charged(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with opened(path) as ledger:
        real = anchor_module.write_head

        def crash(*args, **kwargs):
            raise KeyboardInterrupt  # the process dies right after the commit

        monkeypatch.setattr(anchor_module, "write_head", crash)
        with pytest.raises(KeyboardInterrupt):
            ledger.begin_round(CHEAP, ["a"], **CONTEXT)
        monkeypatch.setattr(anchor_module, "write_head", real)
    with opened(path) as ledger:
        assert ledger.epsilon_of("a") > 0  # charged, though the caller never got a round id
        assert ledger.verify().anchor == ledger.head  # repaired on open


def test_a_live_ledger_repairs_a_lag_before_appending(path: Path) -> None:
    with opened(path) as ledger:
        before = (path / "ledger.anchor").read_bytes()
        ledger.begin_round(CHEAP, ["a"], **CONTEXT)
        (path / "ledger.anchor").write_bytes(before)
        run(ledger, ["b"])
        assert ledger.verify().anchor == ledger.head


def test_an_anchor_two_entries_behind_is_refused(path: Path) -> None:
    with opened(path) as ledger:
        before = (path / "ledger.anchor").read_bytes()
        run(ledger, ["a"])
    (path / "ledger.anchor").write_bytes(before)
    with pytest.raises(LedgerIntegrityError, match="2 entries behind"), opened(path):
        pass


def test_a_deleted_anchor_is_refused_until_an_admin_reanchors(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
        spent = ledger.epsilon_of("a")
    (path / "ledger.anchor").unlink()
    with pytest.raises(LedgerAnchorMissing, match="reanchor") as info, opened(path):
        pass
    assert isinstance(info.value, LedgerIntegrityError)
    with Store.open(path, KEY) as store:
        with pytest.raises(PrivacyParameterError):
            Ledger.reanchor(store, reason="")
        head = Ledger.reanchor(store, reason="anchor lost when the app was reinstalled")
    with opened(path) as ledger:
        assert ledger.head == head and ledger.epsilon_of("a") == spent
        report = ledger.verify()
        assert report.ok and len(report.notes) == 1 and "re-anchored" in report.notes[0]
        entry = ledger.entries()[-1]
        assert entry.kind == "reanchor" and entry.body["previous_anchor"] == "missing"


def test_reanchor_accepts_a_restored_database(path: Path, tmp_path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
    copy_db(path, tmp_path / "backup")
    with opened(path) as ledger:
        run(ledger, ["a"])
    copy_db(tmp_path / "backup", path)
    with Store.open(path, KEY) as store:
        Ledger.reanchor(store, reason="restored a backup after disk failure")
    with opened(path) as ledger:
        assert ledger.verify().ok
        assert ledger.entries()[-1].body["previous_anchor"] == "at entry 5"


def test_reanchor_refuses_a_broken_chain(template: Path, tmp_path: Path) -> None:
    path = _copy(template, str(tmp_path))
    with raw(path) as conn:
        conn.execute("DELETE FROM ledger_entries WHERE seq = 2")
    with Store.open(path, KEY) as store, pytest.raises(LedgerIntegrityError, match="damaged"):
        Ledger.reanchor(store, reason="r")


def test_a_missing_anchor_right_after_creation_is_a_crash_not_an_attack(path: Path) -> None:
    with opened(path):
        pass
    (path / "ledger.anchor").unlink()  # died between creating the ledger and anchoring it
    with opened(path) as ledger:
        assert ledger.head.seq == 1
    assert (path / "ledger.anchor").exists()


def test_a_forged_or_foreign_anchor_is_refused(path: Path, tmp_path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
    other = tmp_path / "other"
    with opened(other) as ledger:
        run(ledger, ["a"])
    good = (path / "ledger.anchor").read_bytes()
    shutil.copy2(other / "ledger.anchor", path / "ledger.anchor")
    with pytest.raises(LedgerIntegrityError, match="another store"), opened(path):
        pass
    doc = json.loads(good)
    blob = base64.b64decode(doc["sealed"])
    tampered = {**doc, "sealed": base64.b64encode(flip(blob, len(blob) - 1)).decode()}
    moved = {**doc, "key_epoch": doc["key_epoch"] + 100}
    for data in (b"garbage", json.dumps(tampered).encode(), json.dumps(moved).encode()):
        (path / "ledger.anchor").write_bytes(data)
        with pytest.raises(LedgerIntegrityError), opened(path):
            pass


def test_the_wrong_key_never_reaches_the_ledger(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
    with pytest.raises(WrongKey):
        Store.open(path, RawKey(bytes(32)))


def test_key_rotation_keeps_the_ledger_and_its_anchor(path: Path) -> None:
    new = RawKey(bytes(range(1, 33)))
    with opened(path) as ledger:
        run(ledger, ["a"])
        ledger.store.rotate_keys(new)
        run(ledger, ["a"])
        eps = ledger.epsilons()
    with opened(path, new) as ledger:
        assert ledger.epsilons() == eps and ledger.verify().ok


# --- random schedules --------------------------------------------------------------------------

PALETTE = [  # filter-ε of one round at δ = 1e-5: about 0.98, 1.66, 0.78, 2.4 (over ε = 2), 0
    Charge(purpose="training", sample_rate=0.1, noise_multiplier=2.0, steps=5),
    Charge(purpose="replay", sample_rate=0.3, noise_multiplier=2.5, steps=4),
    Charge(purpose="validation", sample_rate=1.0, noise_multiplier=6.0, steps=1),
    Charge(purpose="fisher", sample_rate=0.2, noise_multiplier=1.5, steps=3),
    Charge(purpose="migration", sample_rate=0.0, noise_multiplier=1.0, steps=0),
]
_round = st.tuples(
    st.sampled_from(range(len(PALETTE))),
    st.sets(st.sampled_from([f"u{i}" for i in range(6)]), max_size=6),
    st.sampled_from(["completed", "aborted"]),
)


_schedules = st.lists(_round, min_size=1, max_size=12)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=_schedules)
def test_random_schedules_never_exceed_the_budget(schedule) -> None:
    check_schedule(schedule)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=_schedules)
def test_many_random_schedules_never_exceed_the_budget(schedule) -> None:
    check_schedule(schedule)


def check_schedule(schedule: list[tuple[int, set[str], str]]) -> None:
    """Run ``schedule`` on a fresh ledger next to an in-memory filter; check every invariant."""
    reference = RenyiFilter(epsilon=EPS, delta=DELTA)  # the in-memory filter, replayed
    with tempfile.TemporaryDirectory() as tmp, opened(Path(tmp) / "store") as ledger:
        for index, candidates, status in schedule:
            charge = PALETTE[index]
            before = ledger.epsilons()
            try:
                selection = ledger.select(charge, sorted(candidates))
            except (NoEligibleUnits, BudgetExhausted):
                assert not candidates or not reference.select(charge, candidates).eligible
                assert ledger.epsilons() == before
                continue
            expected = reference.select(charge, sorted(candidates))
            assert selection.eligible == expected.eligible
            round_id = ledger.begin_round(charge, selection.eligible, **CONTEXT)
            reference.charge(charge, selection.eligible)
            ledger.finish_round(round_id, status)
            after = ledger.epsilons()
            for unit in selection.excluded:  # excluded units are never charged
                assert after.get(unit, 0.0) == before.get(unit, 0.0)
            assert all(e <= EPS for e in after.values())
        assert ledger.epsilons() == pytest.approx(reference.epsilons(), rel=1e-12)
        head, eps = ledger.head, ledger.epsilons()
        ledger.store.close()
        with opened(Path(tmp) / "store") as reopened:
            assert reopened.head == head and reopened.epsilons() == eps
            report = reopened.verify()
            assert report.ok, report.problems
            assert report.max_epsilon <= EPS


def test_verify_checks_what_the_seals_cannot(path: Path) -> None:
    """Entries sealed with the right key but inconsistent (a bug, or the key holder)."""
    with opened(path) as ledger:
        run(ledger, ["a"])
        good = ledger.entries()[1].body
        costly = Charge(purpose="training", sample_rate=1.0, noise_multiplier=0.5, steps=50)
        forged = [
            ("charge", 2, {**good, "units": ["a", "b"]}),  # digest and count no longer match
            ("charge", 3, {**good, **costly.to_dict()}),  # past the budget in force
            ("finish", 77, {"status": "completed", "summary": None}),  # no such round
        ]
        for kind, round_id, body in forged:
            with ledger.store.atomic():
                head, data = ledger.append(kind, round_id, body)
            ledger._replace_state(head, ledger._table)
            anchor_module.write_head(ledger.store, ledger.anchor, head, data)
        problems = ledger.verify().problems
        assert len(problems) == 4, problems
        assert "unit digest or count" in problems[0]
        assert "past the lifetime budget in force" in problems[1]
        assert "finishes round 77, which is not open" in problems[2]
        assert "exceed the lifetime budget" in problems[3]


def test_a_lowered_budget_cannot_be_opened_after_a_round(path: Path) -> None:
    with opened(path) as ledger:
        run(ledger, ["a"])
        head = ledger.head
    with Store.open(path, KEY) as store:
        with pytest.raises(LifetimeContractFixed, match=r"epsilon: 2\.0 -> 0\.5"):
            Ledger.open(store, epsilon=0.5, delta=DELTA)
        ledger = Ledger.open(store)  # the contract the chain binds
        assert ledger.head == head and (ledger.epsilon, ledger.delta) == (EPS, DELTA)
        assert ledger.verify().ok
