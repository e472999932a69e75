"""Verifying the log: every data key and every record opens, and SQLite's integrity check.

:func:`verify_log` is :meth:`InteractionLog.verify <personal.store.log.InteractionLog.verify>`;
:func:`check_sealed_rows` opens the sealed rows of the other tables (settings, EWC state, replay
buffer) for :func:`personal.integrity.verify_store`. Both fill a :class:`VerifyReport`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from personal.errors import StoreCorrupt, StoreError, TamperDetected
from personal.store.crypto import Sealed
from personal.store.db import translate_errors

if TYPE_CHECKING:
    from personal.store.core import Store
    from personal.store.log import InteractionLog


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


__all__ = [
    "BadRecord",
    "BadRow",
    "VerifyReport",
    "check_sealed_rows",
    "verify_log",
]
