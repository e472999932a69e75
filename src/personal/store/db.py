"""SQLite plumbing of the store: connection settings, transactions, migrations, error mapping.

* :func:`connect` opens a :class:`sqlite_utils.Database` in WAL mode with ``secure_delete=ON``
  and durable commits (``synchronous=FULL`` unless a policy relaxes it; ``fullfsync`` on
  macOS). The Python driver runs
  in autocommit mode (``isolation_level=None``) so no implicit transaction ever lingers: every
  write goes through :func:`atomic`.
* :func:`atomic` is a transaction (``BEGIN IMMEDIATE``: the write lock is taken up front, so
  read-then-write sequences never fail half-way with ``SQLITE_BUSY``) or, nested, a savepoint.
* :class:`Migrations` registers versioned schema steps per *component* (``"store"``, ``"log"``,
  and later the ledger, replay buffer, adapter registry) with a decorator, sqlite-utils style.
  A store written by a newer version raises :class:`~personal.errors.SchemaTooNew`.
* :func:`translate_errors` turns driver errors into the library's narrow ones (corruption,
  full disk, lock timeouts) with messages saying what to do.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from personal.errors import DiskFull, SchemaTooNew, StoreCorrupt, StoreError

from sqlite_utils import Database

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SCHEMA_TABLE = "_personal_schema"
_HEADER = b"SQLite format 3\x00"

F = TypeVar("F", bound=Callable[..., Any])


# --- errors ------------------------------------------------------------------------------------


def _translate(exc: sqlite3.DatabaseError) -> StoreError | None:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return DiskFull(
            "the disk is full (or the file-size limit was reached): the write that failed was "
            "rolled back (writes committed before it stay). Free some space and retry"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text:
        return StoreCorrupt(
            f"the store's database is corrupt or truncated ({text}): restore store.db from a "
            "backup (while it still opens, `personal export` saves what can be read first)"
        )
    if name.startswith("SQLITE_BUSY") or "locked" in text:
        return StoreError(
            "the store is locked by another process (a long write or checkpoint): retry, or "
            "raise busy_timeout"
        )
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
        return StoreError(
            f"I/O error on the store ({text}): the write was rolled back; check that the disk "
            "is not full or failing and that the files are writable"
        )
    return None


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Map driver errors to :class:`StoreCorrupt`, :class:`DiskFull` or :class:`StoreError`."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        mapped = _translate(exc)
        if mapped is None:
            raise
        raise mapped from exc


def sqlite_errors(fn: F) -> F:
    """Decorator form of :func:`translate_errors`, for plain functions and generators."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            with translate_errors():
                yield from fn(*args, **kwargs)

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with translate_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --- connection --------------------------------------------------------------------------------


def check_header(path: Path) -> None:
    """Cheap sanity check of a database file before SQLite touches it (truncation, garbage)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    if len(head) < 100 or not head.startswith(_HEADER):
        raise StoreCorrupt(f"{path} is not an SQLite database (truncated or overwritten)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    valid_for, changes = head[92:96], head[24:28]
    wal = path.with_name(path.name + "-wal")
    # With frames in the WAL (e.g. a checkpoint cut short by a full disk), the WAL, not the
    # file header, says how many pages the database has.
    header_size_counts = valid_for == changes and not (wal.exists() and wal.stat().st_size)
    if page_size < 512 or size % page_size or (header_size_counts and size < pages * page_size):
        raise StoreCorrupt(
            f"{path} is truncated ({size} bytes; its header says {pages} pages of "
            f"{page_size}): restore it from a backup"
        )


def connect(
    path: Path, *, synchronous: Synchronous = "FULL", busy_timeout: float = 10.0
) -> Database:
    """Open the store's database with the store's settings (WAL, secure delete, durability)."""
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise StoreError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    with translate_errors():
        conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None)
        try:
            db = Database(conn, execute_plugins=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot put {path} in WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            # On macOS, sync with F_FULLFSYNC (commits and checkpoints), as personal.filesafety
            # does for every other file: a plain fsync there leaves data in the drive's cache.
            # Elsewhere SQLite ignores both.
            conn.execute("PRAGMA fullfsync=ON")
            conn.execute("PRAGMA checkpoint_fullfsync=ON")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA cell_size_check=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA trusted_schema=OFF")
        except BaseException:
            conn.close()
            raise
    return db


@contextlib.contextmanager
def atomic(db: Database) -> Iterator[Database]:
    """A write transaction (``BEGIN IMMEDIATE``), or a savepoint when one is already open."""
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def checkpoint(db: Database, *, attempts: int = 5) -> bool:
    """Checkpoint the WAL into the database and truncate it to zero bytes.

    Returns ``True`` when the WAL was fully checkpointed and truncated; ``False`` when a reader
    in another process kept an old snapshot open through every attempt (the WAL is then
    truncated by a later checkpoint).
    """
    (timeout_ms,) = db.conn.execute("PRAGMA busy_timeout").fetchone()
    # TRUNCATE waits (busy handler) for readers to leave old snapshots: wait briefly per try,
    # not the full lock timeout, so an erasure never hangs behind a long reader.
    db.conn.execute(f"PRAGMA busy_timeout = {min(int(timeout_ms), 200)}")
    try:
        for attempt in range(attempts):
            busy, _log, _done = db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
            time.sleep(0.05 * (attempt + 1))
        return False
    finally:
        db.conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")


def integrity_check(db: Database) -> list[str]:
    """SQLite's ``PRAGMA integrity_check``: ``["ok"]`` or a list of problems."""
    return [row[0] for row in db.conn.execute("PRAGMA integrity_check")]


def utcnow() -> str:
    """The current UTC time in the store's fixed-width timestamp format."""
    return format_ts(datetime.now(UTC))


def format_ts(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (fixed width: sorts as text). Naive means UTC."""
    if moment.tzinfo is None:
        return moment.isoformat(timespec="microseconds") + "Z"
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


# --- migrations --------------------------------------------------------------------------------


class Migrations:
    """Versioned schema steps of one component, registered with a decorator.

    Example::

        migrations = Migrations("ledger")

        @migrations(1)
        def create_entries(db: Database) -> None:
            db.execute("CREATE TABLE ledger_entries (...)")

        store.apply_migrations(migrations)

    Steps run in version order inside one write transaction; the component's version is
    recorded in ``_personal_schema``. Opening a store whose recorded version is higher than the
    last registered step raises :class:`SchemaTooNew`.
    """

    def __init__(self, component: str) -> None:
        self.component = component
        self._steps: dict[int, Callable[[Database], None]] = {}

    def __call__(self, version: int) -> Callable[[F], F]:
        """Register ``fn(db)`` as the step that brings the schema to ``version``."""

        def register(fn: F) -> F:
            if version != len(self._steps) + 1:
                raise ValueError(
                    f"{self.component}: migration {version} registered out of order "
                    f"(expected {len(self._steps) + 1})"
                )
            self._steps[version] = fn
            return fn

        return register

    @property
    def latest(self) -> int:
        """The schema version this code writes."""
        return len(self._steps)

    def version(self, db: Database) -> int:
        """The component's version recorded in ``db`` (0 if never migrated)."""
        if not db[SCHEMA_TABLE].exists():
            return 0
        row = db.conn.execute(
            f"SELECT version FROM {SCHEMA_TABLE} WHERE component = ?", [self.component]
        ).fetchone()
        return int(row[0]) if row else 0

    def check(self, db: Database) -> int:
        """Raise :class:`SchemaTooNew` if ``db`` was written by a newer schema."""
        found = self.version(db)
        if found > self.latest:
            raise SchemaTooNew(
                f"this store's {self.component!r} schema is version {found}, but this version "
                f"of personal only knows up to {self.latest}: upgrade personal "
                "(pip install -U personal) to open it; the store was not modified"
            )
        return found

    def apply(self, db: Database) -> list[int]:
        """Run the pending steps; returns the versions applied."""
        if self.check(db) == self.latest:
            return []
        with atomic(db):
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (component TEXT PRIMARY KEY, "
                "version INTEGER NOT NULL, updated_at TEXT NOT NULL)"
            )
            current = self.check(db)  # again, under the write lock
            applied = list(range(current + 1, self.latest + 1))
            for version in applied:
                self._steps[version](db)
            if applied:
                db.execute(
                    f"INSERT OR REPLACE INTO {SCHEMA_TABLE} VALUES (?, ?, ?)",
                    [self.component, self.latest, utcnow()],
                )
        return applied
