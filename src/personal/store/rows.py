"""The log's table on disk: its schema, and its rows sealed on the way in, opened on the way out.

A row of ``records`` is ``id, unit, ts, source`` in cleartext (what sampling and retention
need), the key epoch, and the sealed payload (:mod:`personal.store.records`): AES-256-GCM whose
associated data binds the store, the table, the row id, the key epoch and the cleartext columns
(:class:`~personal.store.crypto.RowAad`), so a row that was moved, swapped or edited does not
open. :class:`InteractionLog <personal.store.log.InteractionLog>` reads and writes the table
only through :class:`SealedRows`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from personal.errors import RecordNotFound, StoreError, TamperDetected, WrongKey
from personal.store import db as dbm
from personal.store.core import Store
from personal.store.crypto import (
    AAD_VERSION,
    RowAad,
    in_context,
    open_blob,
    random_nonces,
    tamper_error,
)
from personal.store.records import Prepared, Record, decode_padded

from cryptography.exceptions import InvalidTag
from sqlite_utils import Database

TABLE = "records"
PAGE = 1000
LOG_MIGRATIONS = dbm.Migrations("log")

#: A raw row as the log reads it: text columns as bytes (the associated data is built from them).
COLUMNS = "id, CAST(unit AS BLOB), CAST(ts AS BLOB), CAST(source AS BLOB), key_epoch, sealed"
_INSERT = f"INSERT INTO {TABLE} (id, unit, ts, source, key_epoch, sealed) VALUES "
_INSERT_CHUNK = 128  # rows per multi-row INSERT: ~2x faster than executemany, row per row


@LOG_MIGRATIONS(1)
def _create_records(db: Database) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, unit TEXT NOT NULL,"
        " ts TEXT NOT NULL, source TEXT NOT NULL, key_epoch INTEGER NOT NULL,"
        " sealed BLOB NOT NULL)"
    )
    db.execute(f"CREATE INDEX {TABLE}_unit ON {TABLE} (unit)")
    db.execute(f"CREATE INDEX {TABLE}_ts ON {TABLE} (ts)")


def _insert_rows(db: Database, params: list[Any], count: int) -> None:
    """Insert ``count`` rows whose parameters are ``params`` (flattened), with multi-row
    ``INSERT ... VALUES (...), (...)`` statements."""
    width = 6
    for start in range(0, count, _INSERT_CHUNK):
        n = min(_INSERT_CHUNK, count - start)
        sql = _INSERT + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n)
        db.conn.execute(sql, params[start * width : (start + n) * width])


class SealedRows:
    """The ``records`` table of one store: sealing, inserting, paging and opening its rows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.aad = RowAad(store.aad_prefix(TABLE), ("unit", "ts", "source"))

    # --- writing -------------------------------------------------------------------------------

    def next_ids(self, db: Database, count: int) -> int:
        """The first of ``count`` fresh record ids (inside the caller's transaction)."""
        # Not AUTOINCREMENT: it rewrites sqlite_sequence after every row (~15% of an append).
        (top,) = db.execute(f"SELECT max(id) FROM {TABLE}").fetchone()
        return self.store.allocate_ids(TABLE, count, at_least=(top or 0) + 1)

    def insert(
        self, db: Database, first: int, prepared: list[Prepared], units: Sequence[str]
    ) -> None:
        """Seal ``prepared`` as rows ``first, first + 1, ...`` of ``units`` and insert them."""
        _insert_rows(db, self._seal(first, prepared, units), len(prepared))

    def _seal(self, first: int, prepared: list[Prepared], units: Sequence[str]) -> list[Any]:
        """The flattened INSERT parameters of sealed rows ``first, first + 1, ...``.

        The hot loop of every append: one pass per row builds the associated data, encrypts
        the (already padded) payload and lays out the row, with no intermediate objects.
        """
        params: list[Any] = []
        start, head = 0, bytes((AAD_VERSION,))
        for epoch, aead, count in self.store.reserve(TABLE, len(prepared)):
            stop = start + count
            values = [
                (unit.encode(), p.ts.encode(), p.source_utf8)
                for unit, p in zip(units[start:stop], prepared[start:stop], strict=True)
            ]
            ads = self.aad.many(epoch, AAD_VERSION, range(first + start, first + stop), values)
            encrypt = aead.encrypt
            for i, nonce, ad in zip(range(start, stop), random_nonces(count), ads, strict=True):
                p = prepared[i]
                sealed = head + nonce + encrypt(nonce, p.payload, ad)
                params += (first + i, units[i], p.ts, p.source, epoch, sealed)
            start = stop
        return params

    # --- reading -------------------------------------------------------------------------------

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

    def _rows(self, where: str, args: Sequence[Any], after: int, limit: int) -> list[Any]:
        sql = f"SELECT {COLUMNS} FROM {TABLE} WHERE id > ? {where} ORDER BY id LIMIT ?"
        return self.store.db.execute(sql, [after, *args, limit]).fetchall()

    def open_row(self, row: Sequence[Any]) -> Record:
        """Authenticate and decode one raw row; :class:`TamperDetected` names the record."""
        rid, unit, ts, source, epoch, blob = row
        try:
            aead = self.store.aead_for(epoch)
            ad = self.aad.one(rid, epoch, blob[0], (unit, ts, source))
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
        append, build = out.append, self.aad.one
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
        except Exception:  # open_row re-opens the failing row and names the error
            pass
        return out

    def open_pages(
        self, pages: Iterable[list[Any]], on_bad: Callable[[int, StoreError], None] | None
    ) -> Iterator[Record]:
        """The records of raw ``pages``; a row that fails to open goes to ``on_bad`` (then is
        skipped), or its error is raised when ``on_bad`` is None."""
        for rows in pages:
            aeads: dict[int, Any] = {}
            done = 0
            while done < len(rows):
                opened = self._open_fast(rows, done, aeads)
                yield from opened
                done += len(opened)
                if done < len(rows):
                    try:
                        record = self.open_row(rows[done])  # raises the precise error
                    except StoreError as exc:
                        if on_bad is None:
                            raise
                        on_bad(rows[done][0], exc)
                    else:
                        yield record
                    done += 1
