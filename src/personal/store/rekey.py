"""Erasure that erased rows cannot survive: the key epochs an erasure touched are re-keyed.

Deleting a row is not enough. A copy of ``store.db`` taken before the erasure still holds the
row, sealed under a data key the store still has; re-inserted into the live database it would
authenticate again (its associated data -- store, table, id, epoch, cleartext columns -- is
unchanged), and ``verify`` and ``export`` would accept it. So after deleting, an erasure
**re-seals every surviving record of the key epochs it touched under a fresh epoch and destroys
the old epochs' data keys**. A row re-inserted from an old copy then refers to a destroyed key
and fails (:class:`~personal.errors.RecordNotFound`, "crypto-shredded"), in every read, in
``verify`` and in ``export``.

The surviving records are re-sealed, not re-padded: the same padded plaintext, a new nonce, the
new epoch in the associated data. Cost: one decryption and encryption per surviving record of
the touched epochs (an epoch spans at most ``epoch_period``, 7 days by default). A surviving
record that does not authenticate cannot be re-sealed; its epoch is then left as it was (never
shredding a record the erasure did not target) and reported in ``EraseReport.kept_epochs``.

Limit: whoever also restores the destroyed *wrapped key* from the old copy (the ``store_dek``
row) reopens the old rows, as long as the KEK that wrapped it is unchanged: rotate the keys
after an erasure that must hold against old copies (docs/privacy.md, "Threat model").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from personal.errors import StoreError
from personal.store import db as dbm
from personal.store import memory
from personal.store.crypto import AAD_VERSION, InvalidTag, open_blob, random_nonces
from personal.store.rows import COLUMNS

if TYPE_CHECKING:
    from personal.store.log import InteractionLog


def touched_epochs(log: InteractionLog, table: str, where: str, args: list[Any]) -> list[int]:
    """The key epochs of the rows an erasure's filter selects (before they are deleted)."""
    rows = log.store.db.execute(f"SELECT DISTINCT key_epoch FROM {table} WHERE 1 {where}", args)
    return sorted(int(r[0]) for r in rows)


def rekey(log: InteractionLog, table: str, epochs: Iterable[int]) -> tuple[list[int], list[int]]:
    """Re-seal the rows of ``epochs`` under a fresh epoch and shred ``epochs`` (in a txn).

    Returns ``(shredded, kept)``: the epochs destroyed, and those left alone because one of
    their rows does not authenticate.
    """
    store, db = log.store, log.store.db
    wanted = sorted(set(epochs))
    if not wanted:
        return [], []
    # The current epoch of the table may be among them: close it, so new seals use a new key.
    db.execute(
        "UPDATE store_dek SET state = 'closed', closed_at = ? WHERE domain = ? AND "
        "state = 'current' AND epoch IN (SELECT value FROM json_each(?))",
        [dbm.utcnow(), table, _json(wanted)],
    )
    shredded, kept = [], []
    for epoch in wanted:
        rows = db.execute(
            f"SELECT {COLUMNS} FROM {table} WHERE key_epoch = ? ORDER BY id", [epoch]
        ).fetchall()
        plaintexts = _open_all(log, rows)
        if plaintexts is None:
            kept.append(epoch)
            continue
        _reseal(log, table, rows, plaintexts)
        if memory.enabled(db):  # the memory index shares the log's keys
            memory.reseal_epoch(store, epoch)
        shredded += store.keys.shred(table, [epoch])
    return shredded, kept


def _open_all(log: InteractionLog, rows: list[Any]) -> list[bytes] | None:
    """The padded plaintexts of ``rows``; ``None`` if any fails to authenticate."""
    out = []
    for rid, unit, ts, source, epoch, blob in rows:
        try:
            aead = log.store.aead_for(epoch)
            ad = log.row_aad.one(rid, epoch, blob[0], (unit, ts, source))
            out.append(open_blob(aead, blob, ad))
        except (InvalidTag, ValueError, TypeError, IndexError, StoreError):
            return None  # a bad row or an unreadable key: this epoch cannot be re-sealed
    return out


def _reseal(log: InteractionLog, table: str, rows: list[Any], plaintexts: list[bytes]) -> None:
    head, start = bytes((AAD_VERSION,)), 0
    updates: list[tuple[int, bytes, int]] = []
    for epoch, aead, count in log.store.reserve(table, len(rows)):
        chunk = rows[start : start + count]
        for (rid, unit, ts, source, _, _), nonce, plain in zip(
            chunk, random_nonces(count), plaintexts[start : start + count], strict=True
        ):
            ad = log.row_aad.one(rid, epoch, AAD_VERSION, (unit, ts, source))
            updates.append((epoch, head + nonce + aead.encrypt(nonce, plain, ad), rid))
        start += count
    log.store.db.conn.executemany(
        f"UPDATE {table} SET key_epoch = ?, sealed = ? WHERE id = ?", updates
    )


def _json(values: list[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"
