"""Erasing records from the log: by unit, date or source app, or by crypto-shredding old keys.

An erasure deletes the rows with SQLite's secure delete, re-keys and destroys the key epochs
they were sealed under (:mod:`personal.store.rekey`: a row put back from an old copy never
opens again), destroys data keys left with no records, takes the memory index's rows along,
and checkpoints and truncates the WAL so that no erased byte remains in the database files
(limits: docs/privacy.md). It refuses to start on a database that fails SQLite's integrity
check, and rolls back if a full scan still finds a row it selected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from personal.errors import ConfigError, StoreCorrupt
from personal.store import memory
from personal.store.core import Store
from personal.store.records import filters_sql, parse_time
from personal.store.rekey import rekey, touched_epochs
from personal.store.rows import TABLE

from sqlite_utils import Database

if TYPE_CHECKING:
    from personal.store.log import InteractionLog


@dataclass(frozen=True)
class EraseReport:
    """The outcome of an erasure.

    Attributes:
        records: Records deleted.
        epochs_shredded: Key epochs whose data keys were destroyed.
        purged: The WAL was checkpointed and truncated, so no erased byte is left in the
            database files. ``False`` when another process's reader kept an old snapshot open;
            the next erasure or checkpoint finishes the job.
        kept_epochs: Key epochs the erasure touched but could not re-key, because one of their
            surviving records fails to authenticate (run ``verify``): a copy of an erased row
            sealed under them would still open if put back.
    """

    records: int
    epochs_shredded: list[int]
    purged: bool
    kept_epochs: list[int] = field(default_factory=list)


def erase(
    log: InteractionLog,
    unit: str | Iterable[str] | None = None,
    *,
    before: datetime | date | str | None = None,
    source: str | None = None,
) -> EraseReport:
    """Erase records of a unit (or units), older than ``before``, and/or of a source app
    (:meth:`InteractionLog.erase <personal.store.log.InteractionLog.erase>`)."""
    if unit is None and before is None and source is None:
        raise ConfigError("erase needs a unit, a date (before=) or a source app")
    until = None if before is None else parse_time(before, "before")  # named as given
    where, args = filters_sql(units=unit, until=until, source=source)
    check_before_erasing(log.store)
    with log.store.atomic() as db:
        indexed = memory.enabled(db)
        touched = touched_epochs(log, TABLE, where, args)
        if indexed:  # their memory index rows go too (a trigger), and are re-keyed alike
            touched = sorted({*touched, *memory.touched_epochs(db, where, args)})
        erased = db.execute(f"DELETE FROM {TABLE} WHERE 1 {where}", args).rowcount
        _check_erased(db, where, args)
        # So that a copy of an erased row put back from an old database never opens again.
        rekeyed, kept = rekey(log, TABLE, touched)
        shredded = sorted({*rekeyed, *_shred_empty_epochs(log.store, db)})
        if indexed:
            memory.index_missing(log)  # rows re-keying could not re-seal
    return EraseReport(erased, shredded, log.store.checkpoint(), kept_epochs=kept)


def shred_epochs_before(log: InteractionLog, before: datetime | date | str) -> EraseReport:
    """Destroy every data key last used before ``before``, with its records
    (:meth:`InteractionLog.shred_epochs_before
    <personal.store.log.InteractionLog.shred_epochs_before>`)."""
    store = log.store
    epochs = store.epochs_used_before(TABLE, parse_time(before, "before"))
    check_before_erasing(store)
    where, args = " AND key_epoch IN (SELECT value FROM json_each(?))", [json.dumps(epochs)]
    with store.atomic() as db:
        indexed = memory.enabled(db)
        index_epochs = memory.touched_epochs(db, where, args) if indexed else []
        erased = db.execute(f"DELETE FROM {TABLE} WHERE 1 {where}", args).rowcount
        if indexed:
            memory.drop_epochs(db, epochs)  # index rows whose key dies with these epochs
        shredded = store.keys.shred(TABLE, epochs)
        if indexed:
            # Index rows of the shredded records sealed under a later epoch: re-key it too.
            extra, _ = rekey(log, TABLE, sorted(set(index_epochs) - set(epochs)))
            shredded = sorted({*shredded, *extra})
            memory.index_missing(log)
    return EraseReport(erased, shredded, store.checkpoint())


def check_before_erasing(store: Store) -> None:
    """An erasure reads the indexes to find its rows: refuse it on a database that fails
    SQLite's integrity check, where a damaged index could hide records from it."""
    problems = store.integrity_check()
    if problems != ["ok"]:
        raise StoreCorrupt(
            f"nothing was erased: the database fails SQLite's integrity check "
            f"({'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}), so an "
            "erasure could miss records. `personal repair` rebuilds damaged indexes from "
            "the records (REINDEX; nothing is lost); for other damage, `personal verify` "
            "lists what can still be read. Then erase again"
        )


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


def _shred_empty_epochs(store: Store, db: Database) -> list[int]:
    # One scan instead of an index on key_epoch: erasure is rare, appends are not.
    used = {r[0] for r in db.execute(f"SELECT DISTINCT key_epoch FROM {TABLE}")}
    if memory.enabled(db):
        used |= memory.epochs_in_use(db)
    closed = [e["epoch"] for e in store.keys.epochs(TABLE) if e["state"] == "closed"]
    empty = [epoch for epoch in closed if epoch not in used]
    return store.keys.shred(TABLE, empty) if empty else []
