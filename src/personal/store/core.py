"""The store: a directory holding one encrypted SQLite database, and the API to seal rows in it.

:class:`Store` owns the database connection, the key hierarchy and the sealing helpers. The
interaction log (:mod:`personal.store.log`) is built on it, and so are later tables (privacy
ledger, replay buffer, adapter registry) through the same small internal API:

* ``store.db`` — the :class:`sqlite_utils.Database`;
* ``store.atomic()`` — a write transaction, or a savepoint when nested;
* ``store.apply_migrations(Migrations(...))`` — versioned schema steps of a component;
* ``store.seal_many(table, items)`` / ``store.open_sealed(table, row_id, fields, sealed)`` —
  AES-256-GCM bound to the store, table, row id, key epoch and the row's cleartext fields.

The files of a store directory are described in :mod:`personal.store.layout`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from personal.errors import (
    RecordNotFound,
    StoreCorrupt,
    StoreError,
    StoreExists,
    TamperDetected,
    WrongKey,
)
from personal.store import db as dbm
from personal.store import workdir
from personal.store.crypto import (
    AAD_VERSION,
    FieldValue,
    InvalidTag,
    Sealed,
    aad,
    aad_prefix,
    in_context,
    open_blob,
    seal_batch,
    tamper_error,
    unpad,
)
from personal.store.keys import KeyProvider
from personal.store.keytable import KeyTable
from personal.store.layout import DB_NAME, MARKER_NAME, read_marker, remove_partial, write_marker

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlite_utils import Database

MAX_ENCRYPTIONS = 1 << 30  # per DEK; NIST SP 800-38D allows 2**32 with random nonces
DEFAULT_EPOCH_PERIOD = timedelta(days=7)

CORE_MIGRATIONS = dbm.Migrations("store")


@CORE_MIGRATIONS(1)
def _create_key_tables(db: Database) -> None:
    db.execute("CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE store_kek (id TEXT PRIMARY KEY, kind TEXT NOT NULL, params TEXT NOT NULL,"
        " check_nonce BLOB NOT NULL, check_ct BLOB NOT NULL, created_at TEXT NOT NULL)"
    )
    db.execute(
        "CREATE TABLE store_dek (epoch INTEGER PRIMARY KEY AUTOINCREMENT,"
        " domain TEXT NOT NULL, state TEXT NOT NULL"
        " CHECK (state IN ('current', 'closed', 'shredded')),"
        " kek_id TEXT, nonce BLOB, wrapped BLOB, encryptions INTEGER NOT NULL DEFAULT 0,"
        " created_at TEXT NOT NULL, last_used_at TEXT NOT NULL, closed_at TEXT,"
        " shredded_at TEXT)"
    )
    db.execute("CREATE INDEX store_dek_domain ON store_dek (domain, state)")
    db.execute("CREATE TABLE store_seq (name TEXT PRIMARY KEY, next INTEGER NOT NULL)")


def _check_new(path: Path) -> None:
    """A new store goes into a directory that does not exist, or exists and is empty."""
    if (path / MARKER_NAME).exists() or (path / DB_NAME).exists():
        raise StoreExists(f"a store already exists at {path}: open it, or pick another path")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StoreExists(f"{path} exists and is not an empty directory: pick another path")


class Store:
    """An open store. Use :meth:`create` or :meth:`open`; close it (or use ``with``).

    Args (of :meth:`create` and :meth:`open`):
        path: The store directory.
        key: The key provider (:class:`~personal.store.keys.Passphrase`, ``KeyringKey``,
            ``RawKey``).
        synchronous: SQLite durability: ``"FULL"`` (default) makes every commit survive power
            loss; ``"NORMAL"`` may lose the last commits on power loss (never corrupts).
        max_encryptions: Encryptions per data key before a new key epoch starts.
        epoch_period: Age after which a data key is retired for new writes (so old data can be
            crypto-shredded by date); ``None`` to rotate on count only.
        busy_timeout: Seconds to wait for another process's write lock.
    """

    def __init__(
        self,
        path: Path,
        db: Database,
        keys: KeyTable,
        store_id: str,
    ) -> None:
        self.path = path
        self._db = db
        self.store_id = store_id
        self.keys = keys
        self._prefixes: dict[str, bytes] = {}
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        key: KeyProvider,
        *,
        synchronous: dbm.Synchronous = "FULL",
        max_encryptions: int = MAX_ENCRYPTIONS,
        epoch_period: timedelta | None = DEFAULT_EPOCH_PERIOD,
        busy_timeout: float = 10.0,
    ) -> Store:
        """Create a new, empty store at ``path`` (the directory may exist if it is empty)."""
        path = Path(path)
        _check_new(path)
        store_id = secrets.token_hex(16)
        ring, kind, params = KeyTable.new_kek(key, store_id)  # slow (scrypt): before any I/O
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # a file where a parent directory belongs, no permission, ...
            raise StoreError(f"cannot create the store directory {path}: {exc.strerror}") from None
        # Again, now that the parents exist: "new/../old" named no directory before the mkdir
        # and names an existing store after it. Never connect to (or clean up) another store.
        _check_new(path)
        old_umask = os.umask(0o077)  # the database, WAL and SHM files: owner only
        try:
            db = dbm.connect(path / DB_NAME, synchronous=synchronous, busy_timeout=busy_timeout)
        finally:
            os.umask(old_umask)
        try:
            with dbm.translate_errors():
                CORE_MIGRATIONS.apply(db)
                keys = KeyTable(
                    db, ring, max_encryptions=max_encryptions, epoch_period=epoch_period
                )
                with dbm.atomic(db):
                    db.execute("INSERT INTO store_meta VALUES ('store_id', ?)", [store_id])
                    db.execute("INSERT INTO store_meta VALUES ('created_at', ?)", [dbm.utcnow()])
                    keys.insert_kek(ring, kind, params)
            write_marker(path, store_id)
        except BaseException:
            db.close()
            remove_partial(path)  # the directory was empty: leave it so
            raise
        return cls(path, db, keys, store_id)

    @classmethod
    def open(
        cls,
        path: str | Path,
        key: KeyProvider,
        *,
        synchronous: dbm.Synchronous = "FULL",
        max_encryptions: int = MAX_ENCRYPTIONS,
        epoch_period: timedelta | None = DEFAULT_EPOCH_PERIOD,
        busy_timeout: float = 10.0,
    ) -> Store:
        """Open an existing store; raises :class:`WrongKey` before any record is read."""
        path = Path(path)
        store_id = read_marker(path)
        workdir.clean(path)  # scratch copies a killed process left (module docstring)
        db_path = path / DB_NAME
        if not db_path.exists():
            raise StoreCorrupt(f"{db_path} is missing: restore it from a backup")
        dbm.check_header(db_path)
        db = dbm.connect(db_path, synchronous=synchronous, busy_timeout=busy_timeout)
        try:
            with dbm.translate_errors():
                CORE_MIGRATIONS.apply(db)
                found = db.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
                if found is None or found[0] != store_id:
                    raise StoreCorrupt(
                        f"{db_path} belongs to another store than {path / MARKER_NAME}: "
                        "restore the matching files"
                    )
                ring = KeyTable.open_kek(db, key, store_id)
                keys = KeyTable(
                    db, ring, max_encryptions=max_encryptions, epoch_period=epoch_period
                )
        except BaseException:
            db.close()
            raise
        return cls(path, db, keys, store_id)

    @property
    def db(self) -> Database:
        """The store's :class:`sqlite_utils.Database` (for components' own tables)."""
        if self._closed:
            raise StoreError("the store is closed: open it again")
        return self._db

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed: open it again")

    # --- transactions and schema ---------------------------------------------------------------

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Database]:
        """A write transaction (savepoint when nested); rolled back if the block raises."""
        self._check_open()
        with dbm.translate_errors(), dbm.atomic(self.db) as db:
            yield db

    def apply_migrations(self, migrations: dbm.Migrations) -> list[int]:
        """Bring a component's tables up to date; :class:`SchemaTooNew` if the store is newer."""
        self._check_open()
        with dbm.translate_errors():
            return migrations.apply(self.db)

    def allocate_ids(self, sequence: str, count: int, *, at_least: int = 1) -> int:
        """Reserve ``count`` consecutive ids of a named sequence; returns the first.

        Committed ids are never handed out again, even after their rows are erased (so a stale
        sealed row can never pass for a new one); ids of a rolled-back transaction may be, as
        nothing was stored under them. Use inside the ``atomic()`` block that inserts the rows.
        ``at_least`` guards against rows inserted by other means.
        """
        with self.atomic() as db:
            row = db.execute("SELECT next FROM store_seq WHERE name = ?", [sequence]).fetchone()
            first = max(row[0] if row else 1, at_least)
            db.execute(
                "INSERT INTO store_seq VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET next = excluded.next",
                [sequence, first + count],
            )
        return first

    # --- sealing -------------------------------------------------------------------------------

    def aad_prefix(self, table: str) -> bytes:
        """The associated-data prefix shared by the rows of ``table``."""
        prefix = self._prefixes.get(table)
        if prefix is None:
            prefix = self._prefixes[table] = aad_prefix(self.store_id, table)
        return prefix

    def seal_many(
        self,
        table: str,
        items: Sequence[tuple[int | str, Sequence[tuple[str, FieldValue]], bytes]],
        *,
        domain: str | None = None,
    ) -> list[Sealed]:
        """Seal ``(row_id, fields, plaintext)`` items for rows of ``table``.

        ``fields`` are the row's cleartext columns as ``(name, value)`` pairs in a fixed order;
        they, the row id, the table, the store and the key epoch are bound as associated data.
        Call it inside the ``atomic()`` block that inserts the rows: the encryption count of the
        data key is charged in that transaction. ``domain`` picks the data-key family (default:
        the table), so crypto-shredding one domain never touches another.
        """
        prefix = self.aad_prefix(table)

        def make_aads(epoch: int, start: int, stop: int) -> list[bytes]:
            return [aad(prefix, rid, epoch, AAD_VERSION, f) for rid, f, _ in items[start:stop]]

        return self.seal_batch(domain or table, [pt for _, _, pt in items], make_aads)

    def seal_batch(
        self,
        domain: str,
        plaintexts: Sequence[bytes],
        make_aads: Callable[[int, int, int], list[bytes]],
        *,
        padded: bool = False,
    ) -> list[Sealed]:
        """Seal many plaintexts: the low-level form of :meth:`seal_many` for hot paths.

        ``make_aads(epoch, start, stop)`` returns the associated data of items
        ``start..stop-1`` sealed under ``epoch`` (a batch larger than what the current data key
        has left spans epochs). ``padded``: the plaintexts are already padded.
        """
        out: list[Sealed] = []
        new, head = tuple.__new__, bytes((AAD_VERSION,))
        with self.atomic():
            start = 0
            for epoch, aead, count in self.reserve(domain, len(plaintexts)):
                stop = start + count
                ads = make_aads(epoch, start, stop)
                pairs = seal_batch(aead, plaintexts[start:stop], ads, padded=padded)
                out.extend(new(Sealed, (epoch, head + n + ct)) for n, ct in pairs)
                start = stop
        return out

    def reserve(self, domain: str, count: int) -> list[tuple[int, AESGCM, int]]:
        """Charge ``count`` encryptions to the data keys of ``domain``, for a caller that seals
        by itself (the log's append loop); use inside ``atomic()``.

        Returns ``(epoch, aead, n)`` chunks whose ``n`` add up to ``count``: encrypt that many
        values under each, with fresh random nonces and :data:`AAD_VERSION` associated data.
        """
        self._check_open()
        chunks = []
        with self.atomic():
            while count > 0:
                epoch, aead, granted = self.keys.reserve(domain, count)
                chunks.append((epoch, aead, granted))
                count -= granted
        return chunks

    def seal(
        self,
        table: str,
        row_id: int | str,
        fields: Sequence[tuple[str, FieldValue]] | Mapping[str, FieldValue],
        plaintext: bytes,
        *,
        domain: str | None = None,
    ) -> Sealed:
        """Seal one value; see :meth:`seal_many`. A mapping of fields is bound in sorted order."""
        if isinstance(fields, Mapping):
            fields = sorted(fields.items())
        return self.seal_many(table, [(row_id, fields, plaintext)], domain=domain)[0]

    def aead_for(self, epoch: int) -> AESGCM:
        """The AESGCM object of a key epoch (unwrapped on first use)."""
        return self.keys.aead(epoch)

    def open_sealed(
        self,
        table: str,
        row_id: int | str,
        fields: Sequence[tuple[str, FieldValue]] | Mapping[str, FieldValue],
        sealed: Sealed,
    ) -> bytes:
        """Authenticate and decrypt one sealed value; :class:`TamperDetected` names the row."""
        self._check_open()
        if isinstance(fields, Mapping):
            fields = sorted(fields.items())
        with dbm.translate_errors():
            try:
                aead = self.keys.aead(sealed.epoch)
                ad = aad(self.aad_prefix(table), row_id, sealed.epoch, sealed.v, fields)
                return unpad(open_blob(aead, sealed.blob, ad))
            except (InvalidTag, ValueError, TypeError, OverflowError, struct.error):
                raise tamper_error(table, row_id) from None
            except (TamperDetected, RecordNotFound, WrongKey) as exc:
                raise in_context(exc, table, row_id) from None

    # --- keys ----------------------------------------------------------------------------------

    def rotate_keys(self, new_key: KeyProvider) -> None:
        """Re-wrap every data key under a new KEK in one transaction; new epochs from now on.

        A crash at any point leaves the store openable by the old key (before the commit) or the
        new one (after), never neither.
        """
        self._check_open()
        with dbm.translate_errors():
            self.keys.rotate(new_key)
            dbm.checkpoint(self.db)  # old wrappings must not linger in the WAL

    def shred_epochs(self, domain: str, epochs: Sequence[int]) -> list[int]:
        """Crypto-shred: destroy the data keys of ``epochs`` (use inside ``atomic()``)."""
        self._check_open()
        with self.atomic():
            return self.keys.shred(domain, epochs)

    def epochs_used_before(self, domain: str, before: datetime) -> list[int]:
        """Unshredded epochs of ``domain`` whose last encryption happened before ``before``."""
        self._check_open()
        with dbm.translate_errors():
            return self.keys.used_before(domain, dbm.format_ts(before))

    # --- maintenance ---------------------------------------------------------------------------

    def checkpoint(self) -> bool:
        """Fold the WAL into the database and truncate it (see :func:`db.checkpoint`)."""
        self._check_open()
        with dbm.translate_errors():
            return dbm.checkpoint(self.db)

    def integrity_check(self) -> list[str]:
        """SQLite's integrity check of the whole file: ``["ok"]`` when sound."""
        self._check_open()
        try:
            with dbm.translate_errors():
                return dbm.integrity_check(self.db)
        except StoreCorrupt as exc:
            return [str(exc)]

    def schema_versions(self) -> dict[str, int]:
        """Recorded schema version of every component."""
        with dbm.translate_errors():
            rows = self.db.execute(f"SELECT component, version FROM {dbm.SCHEMA_TABLE}")
            return {name: int(v) for name, v in rows.fetchall()}

    def file_sizes(self) -> dict[str, int]:
        """Bytes on disk of the database and its WAL."""
        sizes = {}
        for label, name in (("db_bytes", DB_NAME), ("wal_bytes", DB_NAME + "-wal")):
            p = self.path / name
            sizes[label] = p.stat().st_size if p.exists() else 0
        return sizes
