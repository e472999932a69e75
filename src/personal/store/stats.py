"""Statistics of the log, from cleartext metadata only: nothing is decrypted.

:class:`LogStats` is :meth:`InteractionLog.stats <personal.store.log.InteractionLog.stats>`,
:class:`UnitSummary` a row of :meth:`~personal.store.log.InteractionLog.unit_summaries`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from personal.store.log import InteractionLog


@dataclass(frozen=True)
class UnitSummary:
    """A privacy unit, from cleartext columns only."""

    unit: str
    records: int
    first_ts: datetime
    last_ts: datetime


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


__all__ = ["LogStats", "UnitSummary"]
