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

:class:`InteractionLog` is the log's API; the table's schema and its sealed rows are in
:mod:`personal.store.rows`, erasure in :mod:`personal.store.erasure`, verification in
:mod:`personal.store.verify`, statistics in :mod:`personal.store.stats`, the record format in
:mod:`personal.store.records`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TextIO

from personal.errors import ConfigError, RecordNotFound, StoreError
from personal.store import db as dbm
from personal.store import erasure, memory
from personal.store.core import Store
from personal.store.crypto import RowAad
from personal.store.db import format_ts
from personal.store.erasure import EraseReport
from personal.store.keys import KeyProvider
from personal.store.records import (
    Interaction,
    Record,
    UnitBy,
    check_unit,
    default_unit,
    filters_sql,
    misfit_sql,
    parse_time,
    prepare,
)
from personal.store.rows import LOG_MIGRATIONS, PAGE, TABLE, SealedRows
from personal.store.stats import LogStats, UnitSummary
from personal.store.verify import VerifyReport, verify_log

from sqlite_utils import Database


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
        self.rows = SealedRows(store)

    @property
    def row_aad(self) -> RowAad:
        """The associated-data builder of this log's rows (re-keying seals with it)."""
        return self.rows.aad

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
            first = self.rows.next_ids(db, len(prepared))
            units = [
                p.unit or default_unit(self.unit_by, first + i, p.ts, i)
                for i, p in enumerate(prepared)
            ]
            self.rows.insert(db, first, prepared, units)
            if memory.enabled(db):  # the memory index commits with the records, or neither
                rows = [(first + i, it.prompt, it.response) for i, it in enumerate(items)]
                memory.index_rows(self.store, rows)
        return list(range(first, first + len(prepared)))

    # --- reading -------------------------------------------------------------------------------

    def raw_pages(
        self, where: str = "", args: Sequence[Any] = (), page: int = PAGE
    ) -> Iterator[list]:
        """Pages of raw (still sealed) rows in id order; each page is one short read."""
        return self.rows.raw_pages(where, args, page)

    def open_row(self, row: Sequence[Any]) -> Record:
        """Authenticate and decode one raw row; :class:`TamperDetected` names the record."""
        return self.rows.open_row(row)

    def open_pages(
        self, pages: Iterable[list[Any]], on_bad: Callable[[int, StoreError], None] | None
    ) -> Iterator[Record]:
        """The records of raw ``pages`` (``on_bad`` as in :meth:`iter_records`)."""
        return self.rows.open_pages(pages, on_bad)

    def get(self, record_id: int) -> Record:
        """One record by id; :class:`RecordNotFound` if there is none (erased?)."""
        for rows in self.raw_pages("AND id = ?", [record_id], page=1):
            return self.open_row(rows[0])
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
        yield from self.open_pages(self.raw_pages(where, args, page), on_bad)

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
        return erasure.erase(self, unit, before=before, source=source)

    def shred_epochs_before(self, before: datetime | date | str) -> EraseReport:
        """Crypto-shred: destroy every data key last used before ``before``, with its records.

        Records written since then are kept even if their ``ts`` is older: combine with
        ``erase(before=...)`` for an exact cut by interaction time.
        """
        return erasure.shred_epochs_before(self, before)

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
