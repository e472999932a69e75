"""The database layer: settings, migrations, transactions, corruption and full disks."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

from personal.errors import (
    DiskFull,
    SchemaTooNew,
    StoreCorrupt,
    StoreError,
    StoreExists,
    StoreNotFound,
)
from personal.store import Interaction, InteractionLog, Migrations, Passphrase, RawKey, Store
from personal.store import rows as rows_module

import pytest
from sqlite_utils import Database
from store_helpers import raw_db


def _pragma(store: Store, name: str) -> object:
    return store.db.execute(f"PRAGMA {name}").fetchone()[0]


def test_wal_secure_delete_and_durable_commits_by_default(log: InteractionLog) -> None:
    assert _pragma(log.store, "journal_mode") == "wal"
    assert _pragma(log.store, "synchronous") == 2  # FULL
    assert _pragma(log.store, "secure_delete") == 1
    # F_FULLFSYNC on macOS, like personal.filesafety (SQLite ignores both elsewhere)
    assert _pragma(log.store, "fullfsync") == 1
    assert _pragma(log.store, "checkpoint_fullfsync") == 1


def test_durability_can_be_relaxed_by_policy(store_path: Path, raw_key: RawKey) -> None:
    Store.create(store_path, raw_key).close()
    with Store.open(store_path, raw_key, synchronous="NORMAL") as store:
        assert _pragma(store, "synchronous") == 1
    with pytest.raises(StoreError, match="synchronous must be"):
        Store.open(store_path, raw_key, synchronous="SOMETIMES")  # type: ignore[arg-type]


def test_store_files_are_private_to_the_owner(log: InteractionLog, store_path: Path) -> None:
    log.append("p", "r")
    assert store_path.stat().st_mode & 0o077 == 0
    assert (store_path / "store.db").stat().st_mode & 0o077 == 0


def test_missing_and_existing_stores(tmp_path: Path, key: Passphrase) -> None:
    with pytest.raises(StoreNotFound, match="personal init"):
        Store.open(tmp_path / "nope", key)
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreNotFound, match="not a personal store"):
        Store.open(tmp_path / "plain", key)
    Store.create(tmp_path / "s", key).close()
    with pytest.raises(StoreExists, match="already exists"):
        Store.create(tmp_path / "s", key)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(StoreExists, match="not an empty directory"):
        Store.create(tmp_path / "busy", key)


# --- migrations ----------------------------------------------------------------------------


def test_components_register_versioned_migrations(log: InteractionLog) -> None:
    ledger = Migrations("ledger")

    @ledger(1)
    def create(db: Database) -> None:
        db.execute("CREATE TABLE ledger_entries (id INTEGER PRIMARY KEY, key_epoch, sealed)")

    @ledger(2)
    def add_column(db: Database) -> None:
        db.execute("ALTER TABLE ledger_entries ADD COLUMN unit TEXT")

    assert log.store.apply_migrations(ledger) == [1, 2]
    assert log.store.apply_migrations(ledger) == []
    assert log.store.schema_versions() == {"store": 1, "log": 1, "ledger": 2}
    assert "unit" in log.store.db["ledger_entries"].columns_dict
    with pytest.raises(ValueError, match="out of order"):
        ledger(4)(create)


def test_a_failing_migration_changes_nothing(log: InteractionLog) -> None:
    broken = Migrations("broken")

    @broken(1)
    def half(db: Database) -> None:
        db.execute("CREATE TABLE broken_t (x)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        log.store.apply_migrations(broken)
    assert not log.store.db["broken_t"].exists()
    assert "broken" not in log.store.schema_versions()


def test_a_store_from_a_newer_version_is_refused(
    log: InteractionLog, store_path: Path, key: Passphrase
) -> None:
    log.close()
    with raw_db(store_path) as conn:
        conn.execute("UPDATE _personal_schema SET version = 99 WHERE component = 'log'")
    with pytest.raises(SchemaTooNew, match=r"'log' schema is version 99.*upgrade personal"):
        InteractionLog.open(store_path, key)
    marker = store_path / "store.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "version": 2}))
    with pytest.raises(SchemaTooNew, match="store format 2"):
        Store.open(store_path, key)


# --- transactions --------------------------------------------------------------------------


def test_atomic_nests_with_savepoints(log: InteractionLog) -> None:
    with log.atomic():
        log.append("kept", "r")
        with pytest.raises(RuntimeError), log.atomic():
            log.append("dropped", "r")
            raise RuntimeError
    assert [r.prompt for r in log] == ["kept"]
    with pytest.raises(RuntimeError), log.atomic():
        log.append("dropped too", "r")
        raise RuntimeError
    assert [r.prompt for r in log] == ["kept"]


# --- corruption ----------------------------------------------------------------------------


@pytest.fixture
def filled(log: InteractionLog, store_path: Path) -> Path:
    log.append_many([Interaction(f"prompt {i}", "r" * 2000) for i in range(300)])
    log.close()
    assert not (store_path / "store.db-wal").exists()  # checkpointed on close
    return store_path / "store.db"


@pytest.mark.parametrize("keep", [0, 50, 4096, 4096 * 3, 0.5, 0.9])
def test_truncated_databases_are_reported_as_corrupt(
    filled: Path, store_path: Path, key: Passphrase, keep: float
) -> None:
    size = filled.stat().st_size
    os.truncate(filled, int(size * keep) if isinstance(keep, float) else keep)
    with pytest.raises(StoreCorrupt, match=r"truncated|not an SQLite database"):
        Store.open(store_path, key)


def test_garbage_in_a_page_is_reported_not_crashed_on(
    filled: Path, store_path: Path, key: Passphrase
) -> None:
    data = bytearray(filled.read_bytes())
    data[4096 * 20 : 4096 * 22] = os.urandom(8192)
    filled.write_bytes(bytes(data))
    try:
        log = InteractionLog.open(store_path, key)
    except StoreCorrupt:
        return  # the key tables were hit: a clear error at open is fine too
    with log:
        report = log.verify()
        assert not report.ok
        assert report.integrity != ["ok"]


def test_a_database_from_another_store_is_refused(tmp_path: Path, key: Passphrase) -> None:
    Store.create(tmp_path / "a", key).close()
    Store.create(tmp_path / "b", key).close()
    shutil.copy(tmp_path / "b" / "store.db", tmp_path / "a" / "store.db")
    with pytest.raises(StoreCorrupt, match="belongs to another store"):
        Store.open(tmp_path / "a", key)
    (tmp_path / "a" / "store.json").write_text("{not json")
    with pytest.raises(StoreCorrupt, match="unreadable"):
        Store.open(tmp_path / "a", key)
    (tmp_path / "b" / "store.db").unlink()
    with pytest.raises(StoreCorrupt, match="missing"):
        Store.open(tmp_path / "b", key)


# --- full disks ----------------------------------------------------------------------------


def _check_untouched(store_path: Path, key: Passphrase, expected: int) -> None:
    with InteractionLog.open(store_path, key) as log:
        assert len(log) == expected
        report = log.verify()
        assert report.ok, report
        log.append("the store still works", "r")


def test_an_injected_full_disk_rolls_the_batch_back(
    log: InteractionLog, store_path: Path, key: Passphrase, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append("before", "r")
    calls = []
    real_execute = log.store.db.conn.execute

    def execute(sql: str, *args: object) -> object:
        if sql.startswith("INSERT INTO records"):
            calls.append(sql)
            if len(calls) == 2:  # the second chunk of the batch
                raise sqlite3.OperationalError("database or disk is full")
        return real_execute(sql, *args)

    monkeypatch.setattr(rows_module, "_INSERT_CHUNK", 10)
    monkeypatch.setattr(log.store.db, "conn", _Proxy(log.store.db.conn, execute))
    with pytest.raises(DiskFull, match="rolled back"):
        log.append_many([Interaction(f"p{i}", "r") for i in range(30)])
    assert len(calls) == 2
    monkeypatch.undo()
    assert len(log) == 1
    log.close()
    _check_untouched(store_path, key, 1)


class _Proxy:
    def __init__(self, conn: sqlite3.Connection, execute: object) -> None:
        self._conn, self.execute = conn, execute

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)


def _append_in_child(store_path: Path, key: Passphrase, limit_bytes: int | None) -> str:
    """Fork; the child appends 2 MB under a file-size limit and reports what happened."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        outcome = "?"
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            with InteractionLog.open(store_path, key) as log:
                if limit_bytes is not None:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
                try:
                    log.append_many([Interaction("z" * 1000, "y" * 1000) for _ in range(1000)])
                    outcome = "appended"
                except StoreError as exc:
                    outcome = type(exc).__name__
        finally:
            os.write(write_fd, outcome.encode())
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as f:
        return f.read()


def test_a_file_size_limit_during_an_append_loses_nothing(
    log: InteractionLog, store_path: Path, key: Passphrase
) -> None:
    log.append_many([Interaction(f"p{i}", "r") for i in range(10)])
    log.close()
    limit = (store_path / "store.db").stat().st_size + 200_000
    assert _append_in_child(store_path, key, limit) in {"DiskFull", "StoreError"}
    _check_untouched(store_path, key, 10)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Path:
    """A real 512 KiB tmpfs (needs root and mount(8); skipped elsewhere)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tiny filesystem needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_real_full_disk_during_an_append_loses_nothing(
    tiny_filesystem: Path, key: Passphrase
) -> None:
    store_path = tiny_filesystem / "store"
    with InteractionLog.create(store_path, key) as log:
        log.append_many([Interaction(f"p{i}", "r") for i in range(10)])
        with pytest.raises(DiskFull, match="disk is full"):
            for _ in range(100):
                log.append_many([Interaction("z" * 1000, "y" * 1000) for _ in range(50)])
        appended = len(log)
        assert appended % 50 == 10  # whole batches only
    _check_untouched(store_path, key, appended)
