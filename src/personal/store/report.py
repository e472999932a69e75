"""What the log reports back: erasure results, unit summaries, statistics, verification."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from personal.errors import StoreCorrupt, StoreError, TamperDetected
from personal.store.crypto import Sealed
from personal.store.db import format_ts, translate_errors

if TYPE_CHECKING:
    from personal.store.core import Store
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


@dataclass(frozen=True)
class UnitSummary:
    """A privacy unit, from cleartext columns only."""

    unit: str
    records: int
    first_ts: datetime
    last_ts: datetime


@dataclass(frozen=True)
class BadRecord:
    """A record that failed to open, and why."""

    id: int
    error: str


@dataclass(frozen=True)
class BadRow:
    """A sealed row of another table than the records (a setting, the EWC state, the replay
    buffer) that failed to open, and why.

    Attributes:
        table: The table.
        row: The row's name.
        error: What failed.
        derived: The row is derived state that ``personal repair`` rebuilds (never records or
            the ledger); otherwise only a backup restores it.
    """

    table: str
    row: str
    error: str
    derived: bool = False


@dataclass
class VerifyReport:
    """The result of :meth:`InteractionLog.verify` (records) and, for a whole store, of
    :func:`personal.integrity.verify_store` (every sealed row of every table, and the ledger).

    Attributes:
        records: Records checked.
        bad_records: Every record that failed authentication or decoding.
        bad_epochs: Key epochs whose wrapped data key failed to open, with the error.
        integrity: SQLite's ``PRAGMA integrity_check`` output (``["ok"]`` when sound).
        rows: Sealed rows of other tables checked.
        bad_rows: Every such row that failed to open.
        ledger_problems: What the privacy ledger's full verification found.
        notes: What verification repaired or a reviewer should know (not failures).
    """

    records: int = 0
    bad_records: list[BadRecord] = field(default_factory=list)
    bad_epochs: list[tuple[int, str]] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    rows: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    ledger_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything decrypts, the ledger verifies and the database file is sound."""
        return (
            self.integrity == ["ok"]
            and not self.bad_records
            and not self.bad_epochs
            and not self.bad_rows
            and not self.ledger_problems
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "records": self.records,
            "bad_records": [asdict(b) for b in self.bad_records],
            "bad_epochs": [{"epoch": e, "error": m} for e, m in self.bad_epochs],
            "integrity": self.integrity,
            "rows": self.rows,
            "bad_rows": [asdict(b) for b in self.bad_rows],
            "ledger_problems": self.ledger_problems,
            "notes": self.notes,
        }


def check_sealed_rows(
    store: Store, report: VerifyReport, table: str, derived: Callable[[str], bool]
) -> None:
    """Open every row of a sealed key-value ``table`` (``name``, ``key_epoch``, ``sealed``:
    settings, EWC state, replay buffer); each failure becomes a :class:`BadRow`."""
    try:
        with translate_errors():
            if not store.db[table].exists():
                return
            rows = store.db.execute(f"SELECT name, key_epoch, sealed FROM {table}").fetchall()
    except StoreError as exc:
        report.integrity.append(f"reading {table} failed: {exc}")
        return
    for name, epoch, blob in rows:
        report.rows += 1
        try:
            if not isinstance(epoch, int) or not isinstance(blob, bytes):
                raise TamperDetected(f"{table} row {name} has a malformed key epoch or seal")
            store.open_sealed(table, name, (), Sealed(epoch, blob))
        except StoreError as exc:
            report.bad_rows.append(BadRow(table, str(name), str(exc), derived(str(name))))


def verify_log(log: InteractionLog, table: str) -> VerifyReport:
    """Run SQLite's integrity check, open every data key, then every record."""
    report = VerifyReport(integrity=log.store.integrity_check())
    for info in log.store.keys.epochs():
        if info["state"] == "shredded":
            continue
        try:
            log.store.aead_for(info["epoch"])
        except StoreError as exc:
            report.bad_epochs.append((info["epoch"], str(exc)))
    try:
        for rows in log.raw_pages():
            for row in rows:
                report.records += 1
                try:
                    log.open_row(row)
                except StoreError as exc:
                    report.bad_records.append(BadRecord(row[0], str(exc)))
    except StoreCorrupt as exc:
        report.integrity.append(f"reading records stopped after {report.records}: {exc}")
    return report


@dataclass(frozen=True)
class LogStats:
    """Statistics of a store's log (cleartext metadata only: nothing is decrypted)."""

    path: str
    store_id: str
    records: int
    units: int
    sources: dict[str, int]
    first_ts: str | None
    last_ts: str | None
    key_kind: str
    epochs: dict[str, int]
    current_epoch: int | None
    current_epoch_encryptions: int
    max_encryptions: int
    schema: dict[str, int]
    db_bytes: int
    wal_bytes: int

    @classmethod
    def collect(cls, log: InteractionLog, table: str) -> LogStats:
        """Gather the statistics of ``log``."""
        store, db = log.store, log.store.db
        records, units, first, last = db.execute(
            f"SELECT count(*), count(DISTINCT unit), min(ts), max(ts) FROM {table}"
        ).fetchone()
        sources = dict(db.execute(f"SELECT source, count(*) FROM {table} GROUP BY source"))
        epochs = store.keys.epochs(table)
        current = [e for e in epochs if e["state"] == "current"]
        return cls(
            path=str(store.path),
            store_id=store.store_id,
            records=records,
            units=units,
            sources=sources,
            first_ts=first,
            last_ts=last,
            key_kind=store.keys.kek_kind(),
            epochs=dict(Counter(e["state"] for e in epochs)),
            current_epoch=current[0]["epoch"] if current else None,
            current_epoch_encryptions=current[0]["encryptions"] if current else 0,
            max_encryptions=store.keys.max_encryptions,
            schema=store.schema_versions(),
            **store.file_sizes(),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable lines for the CLI."""
        span = f"{self.first_ts} .. {self.last_ts}" if self.records else "-"
        sources = ", ".join(f"{k}: {v}" for k, v in sorted(self.sources.items())) or "-"
        epochs = ", ".join(f"{k}: {v}" for k, v in sorted(self.epochs.items())) or "-"
        return [
            f"store        {self.path} (id {self.store_id})",
            f"records      {self.records} in {self.units} units",
            f"time span    {span}",
            f"sources      {sources}",
            f"key          {self.key_kind}; key epochs {epochs}",
            f"current key  epoch {self.current_epoch}, "
            f"{self.current_epoch_encryptions}/{self.max_encryptions} encryptions",
            f"schema       {', '.join(f'{k} v{v}' for k, v in sorted(self.schema.items()))}",
            f"files        {self.db_bytes} bytes (+ {self.wal_bytes} WAL)",
        ]


__all__ = [
    "BadRecord",
    "BadRow",
    "EraseReport",
    "LogStats",
    "UnitSummary",
    "VerifyReport",
    "check_sealed_rows",
    "format_ts",
]
