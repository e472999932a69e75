"""The interaction log: what apps write and DP training reads back, sealed row by row.

Usage::

    from personal.store import InteractionLog, Interaction, Passphrase

    with InteractionLog.create("~/.personal/store", Passphrase("correct horse")) as log:
        rid = log.append("What's on today?", "Two meetings.", unit="session-42")
        log.append_many([Interaction("hi", "hello"), Interaction("bye", "see you")])
        for record in log.iter_records(units=["session-42"]):
            ...

One process may write while others read (WAL): the app appends, the trainer iterates. Reads
page through the table by id, so no read transaction stays open for long.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO

from personal.errors import (
    ConfigError,
    RecordNotFound,
    StoreCorrupt,
    StoreError,
    TamperDetected,
    WrongKey,
)
from personal.store import db as dbm
from personal.store import memory
from personal.store.core import Store
from personal.store.crypto import (
    AAD_VERSION,
    RowAad,
    in_context,
    open_blob,
    random_nonces,
    tamper_error,
)
from personal.store.db import format_ts
from personal.store.keys import KeyProvider
from personal.store.records import (
    Interaction,
    Prepared,
    Record,
    UnitBy,
    check_unit,
    decode_padded,
    default_unit,
    filters_sql,
    misfit_sql,
    parse_time,
    prepare,
)
from personal.store.rekey import rekey, touched_epochs
from personal.store.report import EraseReport, LogStats, UnitSummary, VerifyReport, verify_log

from cryptography.exceptions import InvalidTag
from sqlite_utils import Database

TABLE = "records"
PAGE = 1000
LOG_MIGRATIONS = dbm.Migrations("log")

_COLUMNS = "id, CAST(unit AS BLOB), CAST(ts AS BLOB), CAST(source AS BLOB), key_epoch, sealed"
_INSERT = f"INSERT INTO {TABLE} (id, unit, ts, source, key_epoch, sealed) VALUES "
_INSERT_CHUNK = 128  # rows per multi-row INSERT: ~2x faster than executemany, row per row


def _insert_rows(db: Database, params: list[Any], count: int) -> None:
    """Insert ``count`` rows whose parameters are ``params`` (flattened), with multi-row
    ``INSERT ... VALUES (...), (...)`` statements."""
    width = 6
    for start in range(0, count, _INSERT_CHUNK):
        n = min(_INSERT_CHUNK, count - start)
        sql = _INSERT + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n)
        db.conn.execute(sql, params[start * width : (start + n) * width])


@LOG_MIGRATIONS(1)
def _create_records(db: Database) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, unit TEXT NOT NULL,"
        " ts TEXT NOT NULL, source TEXT NOT NULL, key_epoch INTEGER NOT NULL,"
        " sealed BLOB NOT NULL)"
    )
    db.execute(f"CREATE INDEX {TABLE}_unit ON {TABLE} (unit)")
    db.execute(f"CREATE INDEX {TABLE}_ts ON {TABLE} (ts)")


class InteractionLog:
    """The encrypted interaction log of one store.

    Args:
        store: An open :class:`~personal.store.core.Store` (shared with other components).
        unit_by: How interactions appended without a unit get one: ``"interaction"`` (each is
            its own unit, the default), ``"day"`` (the UTC date) or ``"session"`` (the caller
            must always pass the session id as ``unit``).
        owns_store: Close the store when the log is closed.
    """

    def __init__(self, store: Store, *, unit_by: UnitBy = "interaction", owns_store: bool = False):
        if unit_by not in ("interaction", "session", "day"):
            raise ConfigError(f"unit_by must be interaction, session or day, not {unit_by!r}")
        self.store = store
        self.unit_by: UnitBy = unit_by
        self._owns_store = owns_store
        store.apply_migrations(LOG_MIGRATIONS)
        self._aad = RowAad(store.aad_prefix(TABLE), ("unit", "ts", "source"))

    @property
    def row_aad(self) -> RowAad:
        """The associated-data builder of this log's rows (re-keying seals with it)."""
        return self._aad

    @classmethod
    def create(
        cls, path: str | Path, key: KeyProvider, *, unit_by: UnitBy = "interaction", **options: Any
    ) -> InteractionLog:
        """Create a store at ``path`` and its log; ``options`` go to :meth:`Store.create`."""
        store = Store.create(path, key, **options)
        return cls._owning(store, unit_by)

    @classmethod
    def open(
        cls, path: str | Path, key: KeyProvider, *, unit_by: UnitBy = "interaction", **options: Any
    ) -> InteractionLog:
        """Open the log of an existing store; ``options`` go to :meth:`Store.open`."""
        store = Store.open(path, key, **options)
        return cls._owning(store, unit_by)

    @classmethod
    def _owning(cls, store: Store, unit_by: UnitBy) -> InteractionLog:
        try:
            return cls(store, unit_by=unit_by, owns_store=True)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the log (and its store, if the log opened it)."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> InteractionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def atomic(self) -> contextlib.AbstractContextManager[Database]:
        """Group appends and erasures into one transaction: all of them, or none."""
        return self.store.atomic()

    # --- writing -------------------------------------------------------------------------------

    def append(self, prompt: str, response: str, **fields: Any) -> int:
        """Append one interaction; ``fields`` are those of :class:`Interaction`. Returns its id."""
        return self.append_many([Interaction(prompt, response, **fields)])[0]

    def append_many(self, interactions: Iterable[Interaction]) -> list[int]:
        """Append interactions in one transaction (all or none); returns their ids in order."""
        now, sources = format_ts(datetime.now(UTC)), dict[str, bytes]()
        items = list(interactions)
        prepared = [prepare(it, i, now, sources) for i, it in enumerate(items)]
        for i, p in enumerate(prepared):  # the unit of privacy is enforced where data enters
            check_unit(self.unit_by, p.unit, p.ts, i)
        if not prepared:
            return []
        with self.store.atomic() as db:
            first = self._next_ids(db, len(prepared))
            _insert_rows(db, self._seal_rows(first, prepared), len(prepared))
            if memory.enabled(db):  # the memory index commits with the records, or neither
                rows = [(first + i, it.prompt, it.response) for i, it in enumerate(items)]
                memory.index_rows(self.store, rows)
        return list(range(first, first + len(prepared)))

    def _seal_rows(self, first: int, prepared: list[Prepared]) -> list[Any]:
        """The flattened INSERT parameters of sealed rows ``first, first + 1, ...``.

        The hot loop of every append: one pass per row builds the associated data, encrypts
        the (already padded) payload and lays out the row, with no intermediate objects.
        """
        units = [
            p.unit or default_unit(self.unit_by, first + i, p.ts, i) for i, p in enumerate(prepared)
        ]
        params: list[Any] = []
        start, head = 0, bytes((AAD_VERSION,))
        for epoch, aead, count in self.store.reserve(TABLE, len(prepared)):
            stop = start + count
            values = [
                (unit.encode(), p.ts.encode(), p.source_utf8)
                for unit, p in zip(units[start:stop], prepared[start:stop], strict=True)
            ]
            ads = self._aad.many(epoch, AAD_VERSION, range(first + start, first + stop), values)
            encrypt = aead.encrypt
            for i, nonce, ad in zip(range(start, stop), random_nonces(count), ads, strict=True):
                p = prepared[i]
                sealed = head + nonce + encrypt(nonce, p.payload, ad)
                params += (first + i, units[i], p.ts, p.source, epoch, sealed)
            start = stop
        return params

    def _next_ids(self, db: Database, count: int) -> int:
        # Not AUTOINCREMENT: it rewrites sqlite_sequence after every row (~15% of an append).
        (top,) = db.execute(f"SELECT max(id) FROM {TABLE}").fetchone()
        return self.store.allocate_ids(TABLE, count, at_least=(top or 0) + 1)

    # --- reading -------------------------------------------------------------------------------

    def _open_row(self, row: Sequence[Any]) -> Record:
        """Authenticate and decode one raw row; :class:`TamperDetected` names the record."""
        rid, unit, ts, source, epoch, blob = row
        try:
            aead = self.store.aead_for(epoch)
            ad = self._aad.one(rid, epoch, blob[0], (unit, ts, source))
            prompt, response, feedback, metadata = decode_padded(open_blob(aead, blob, ad))
            when = datetime.fromisoformat(ts.decode())
        except (InvalidTag, ValueError, TypeError, OverflowError, struct.error, IndexError):
            raise tamper_error(TABLE, rid) from None
        except (TamperDetected, RecordNotFound, WrongKey) as exc:
            raise in_context(exc, TABLE, rid) from None
        return Record(
            rid, unit.decode(), when, source.decode(), prompt, response, feedback, metadata
        )

    def _open_fast(self, rows: Sequence[Any], start: int, aeads: dict[int, Any]) -> list[Record]:
        """Open ``rows[start:]`` until the first failure (the hot loop of every scan)."""
        out: list[Record] = []
        append, build = out.append, self._aad.one
        new, fromiso = tuple.__new__, datetime.fromisoformat
        try:
            for rid, unit, ts, source, epoch, blob in rows[start:]:
                aead = aeads.get(epoch) or self.store.aead_for(epoch)
                aeads[epoch] = aead
                ad = build(rid, epoch, blob[0], (unit, ts, source))
                plain = aead.decrypt(blob[1:13], blob[13:], ad)
                when = fromiso(ts.decode())
                append(
                    new(Record, (rid, unit.decode(), when, source.decode(), *decode_padded(plain)))
                )
        except Exception:  # _open_row re-opens the failing row and names the error
            pass
        return out

    def _open_pages(
        self, pages: Iterable[list[Any]], on_bad: Callable[[int, StoreError], None] | None
    ) -> Iterator[Record]:
        for rows in pages:
            aeads: dict[int, Any] = {}
            done = 0
            while done < len(rows):
                opened = self._open_fast(rows, done, aeads)
                yield from opened
                done += len(opened)
                if done < len(rows):
                    try:
                        record = self._open_row(rows[done])  # raises the precise error
                    except StoreError as exc:
                        if on_bad is None:
                            raise
                        on_bad(rows[done][0], exc)
                    else:
                        yield record
                    done += 1

    def _rows(self, where: str, args: Sequence[Any], after: int, limit: int) -> list[Any]:
        sql = f"SELECT {_COLUMNS} FROM {TABLE} WHERE id > ? {where} ORDER BY id LIMIT ?"
        return self.store.db.execute(sql, [after, *args, limit]).fetchall()

    def raw_pages(
        self, where: str = "", args: Sequence[Any] = (), page: int = PAGE
    ) -> Iterator[list]:
        """Pages of raw (still sealed) rows in id order; each page is one short read."""
        self.store._check_open()
        after = 0
        while True:
            with dbm.translate_errors():
                rows = self._rows(where, args, after, page)
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def get(self, record_id: int) -> Record:
        """One record by id; :class:`RecordNotFound` if there is none (erased?)."""
        for rows in self.raw_pages("AND id = ?", [record_id], page=1):
            return self._open_row(rows[0])
        raise RecordNotFound(f"no record {record_id}: it does not exist or was erased")

    def iter_records(
        self,
        *,
        units: Iterable[str] | None = None,
        since: datetime | date | str | None = None,
        until: datetime | date | str | None = None,
        source: str | None = None,
        on_bad: Callable[[int, StoreError], None] | None = None,
        page: int = PAGE,
    ) -> Iterator[Record]:
        """Decrypted records in id order.

        Args:
            units: Only these privacy units.
            since: Only records with ``ts >= since`` (datetime, date or ISO 8601 text).
            until: Only records with ``ts < until``.
            source: Only records of this source app.
            on_bad: Called with ``(record id, error)`` for a record that fails to open, which
                is then skipped; by default the error (e.g. :class:`TamperDetected`) is raised.
            page: Rows read per query (each query is one short read transaction).
        """
        where, args = filters_sql(units=units, since=since, until=until, source=source)
        yield from self._open_pages(self.raw_pages(where, args, page), on_bad)

    def __iter__(self) -> Iterator[Record]:
        return self.iter_records()

    def unit_summaries(self, **filters: Any) -> list[UnitSummary]:
        """Every unit with its record count and time span (cleartext columns only)."""
        where, args = filters_sql(**filters)
        sql = (
            f"SELECT unit, count(*), min(ts), max(ts) FROM {TABLE} WHERE 1 {where} "
            "GROUP BY unit ORDER BY unit"
        )
        with dbm.translate_errors():
            rows = self.store.db.execute(sql, args).fetchall()
        return [UnitSummary(u, n, parse_time(a), parse_time(b)) for u, n, a, b in rows]

    def units(self, **filters: Any) -> list[str]:
        """The privacy units present (filters as in :meth:`iter_records`), sorted."""
        return [s.unit for s in self.unit_summaries(**filters)]

    def count(self, **filters: Any) -> int:
        """How many records match (no decryption)."""
        where, args = filters_sql(**filters)
        with dbm.translate_errors():
            return int(
                self.store.db.execute(
                    f"SELECT count(*) FROM {TABLE} WHERE 1 {where}", args
                ).fetchone()[0]
            )

    def __len__(self) -> int:
        return self.count()

    def last_id(self) -> int:
        """The highest record id so far (0 for an empty log); ids only grow."""
        with dbm.translate_errors():
            row = self.store.db.execute(f"SELECT max(id) FROM {TABLE}").fetchone()
        return int(row[0] or 0)

    def misfit_count(self, unit_by: UnitBy) -> int:
        """How many records have a unit that does not fit ``unit_by`` (e.g. under ``day``, a
        unit that is not the record's UTC date): records logged under another unit of privacy.
        Cleartext columns only."""
        condition = misfit_sql(unit_by)
        if condition is None:
            return 0
        with dbm.translate_errors():
            row = self.store.db.execute(f"SELECT count(*) FROM {TABLE} WHERE {condition}")
            return int(row.fetchone()[0])

    def units_after(self, record_id: int) -> list[str]:
        """Units with a record whose id is above ``record_id`` (cleartext; no decryption)."""
        with dbm.translate_errors():
            rows = self.store.db.execute(
                f"SELECT DISTINCT unit FROM {TABLE} WHERE id > ? ORDER BY unit", [record_id]
            ).fetchall()
        return [r[0] for r in rows]

    # --- retention, erasure, export ------------------------------------------------------------

    def erase(
        self,
        unit: str | Iterable[str] | None = None,
        *,
        before: datetime | date | str | None = None,
        source: str | None = None,
    ) -> EraseReport:
        """Erase records of a unit (or units), older than ``before``, and/or of a source app.

        Criteria combine with AND. The rows are deleted with SQLite's secure delete, the key
        epochs they were sealed under are re-keyed and destroyed (:mod:`personal.store.rekey`:
        a row put back from an old copy never opens again), data keys left with no records are
        destroyed, and the WAL is checkpointed and truncated so no erased byte remains in the
        database files (see ``docs/privacy.md`` for the limits).
        """
        if unit is None and before is None and source is None:
            raise ConfigError("erase needs a unit, a date (before=) or a source app")
        until = None if before is None else parse_time(before, "before")  # named as given
        where, args = filters_sql(units=unit, until=until, source=source)
        self._check_before_erasing()
        with self.store.atomic() as db:
            indexed = memory.enabled(db)
            touched = touched_epochs(self, TABLE, where, args)
            if indexed:  # their memory index rows go too (a trigger), and are re-keyed alike
                touched = sorted({*touched, *memory.touched_epochs(db, where, args)})
            erased = db.execute(f"DELETE FROM {TABLE} WHERE 1 {where}", args).rowcount
            self._check_erased(db, where, args)
            # So that a copy of an erased row put back from an old database never opens again.
            rekeyed, kept = rekey(self, TABLE, touched)
            shredded = sorted({*rekeyed, *self._shred_empty_epochs(db)})
            if indexed:
                memory.index_missing(self)  # rows re-keying could not re-seal
        return EraseReport(erased, shredded, self.store.checkpoint(), kept_epochs=kept)

    def _check_before_erasing(self) -> None:
        """An erasure reads the indexes to find its rows: refuse it on a database that fails
        SQLite's integrity check, where a damaged index could hide records from it."""
        problems = self.store.integrity_check()
        if problems != ["ok"]:
            raise StoreCorrupt(
                f"nothing was erased: the database fails SQLite's integrity check "
                f"({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}), so an "
                "erasure could miss records. `personal repair` rebuilds damaged indexes from "
                "the records (REINDEX; nothing is lost); for other damage, `personal verify` "
                "lists what can still be read. Then erase again"
            )

    @staticmethod
    def _check_erased(db: Database, where: str, args: list[Any]) -> None:
        """No row the erasure selects may remain, found by a full scan (no index)."""
        left = db.execute(f"SELECT count(*) FROM {TABLE} NOT INDEXED WHERE 1 {where}", args)
        count = int(left.fetchone()[0])
        if count:
            raise StoreCorrupt(
                f"nothing was erased: {count} matching record(s) would have been left behind "
                "(an index of the database is damaged). Run `personal repair` (it rebuilds "
                "the indexes; nothing is lost), then erase again"
            )

    def _shred_empty_epochs(self, db: Database) -> list[int]:
        # One scan instead of an index on key_epoch: erasure is rare, appends are not.
        used = {r[0] for r in db.execute(f"SELECT DISTINCT key_epoch FROM {TABLE}")}
        if memory.enabled(db):
            used |= memory.epochs_in_use(db)
        closed = [e["epoch"] for e in self.store.keys.epochs(TABLE) if e["state"] == "closed"]
        empty = [epoch for epoch in closed if epoch not in used]
        return self.store.keys.shred(TABLE, empty) if empty else []

    def shred_epochs_before(self, before: datetime | date | str) -> EraseReport:
        """Crypto-shred: destroy every data key last used before ``before``, with its records.

        Records written since then are kept even if their ``ts`` is older: combine with
        ``erase(before=...)`` for an exact cut by interaction time.
        """
        epochs = self.store.epochs_used_before(TABLE, parse_time(before, "before"))
        self._check_before_erasing()
        where, args = " AND key_epoch IN (SELECT value FROM json_each(?))", [json.dumps(epochs)]
        with self.store.atomic() as db:
            indexed = memory.enabled(db)
            index_epochs = memory.touched_epochs(db, where, args) if indexed else []
            erased = db.execute(f"DELETE FROM {TABLE} WHERE 1 {where}", args).rowcount
            if indexed:
                memory.drop_epochs(db, epochs)  # index rows whose key dies with these epochs
            shredded = self.store.keys.shred(TABLE, epochs)
            if indexed:
                # Index rows of the shredded records sealed under a later epoch: re-key it too.
                extra, _ = rekey(self, TABLE, sorted(set(index_epochs) - set(epochs)))
                shredded = sorted({*shredded, *extra})
                memory.index_missing(self)
        return EraseReport(erased, shredded, self.store.checkpoint())

    def export(
        self, *, on_bad: Callable[[int, StoreError], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every record as a plain dict, for a user's access request (:meth:`Record.to_json`).

        ``on_bad`` as in :meth:`iter_records`: report and skip records that fail to open.
        """
        for record in self.iter_records(on_bad=on_bad):
            yield record.to_json()

    def export_jsonl(
        self, out: TextIO, *, on_bad: Callable[[int, StoreError], None] | None = None
    ) -> int:
        """Write every record as one JSON line to ``out``; returns how many were written."""
        n = 0
        for item in self.export(on_bad=on_bad):
            line = json.dumps(item, ensure_ascii=False)
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: fall back to \u escapes
                line = json.dumps(item)
            out.write(line + "\n")
            n += 1
        return n

    # --- checks ---------------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Decrypt every record and run SQLite's integrity check; lists every bad record."""
        return verify_log(self, TABLE)

    def stats(self) -> LogStats:
        """Counts, time span, key epochs and file sizes (no decryption)."""
        with dbm.translate_errors():
            return LogStats.collect(self, TABLE)

    def __repr__(self) -> str:
        return f"InteractionLog({str(self.store.path)!r})"
