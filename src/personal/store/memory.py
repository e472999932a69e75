"""The memory index: one sealed row of term counts per record, in the same store and keys.

Personal memory (:mod:`personal.memory`) retrieves past interactions by BM25 over the words
they contain. The words are as secret as the records, so the index is sealed like them: table
``memory_terms`` holds, for every record id, the record's term counts (lower-cased ``\\w+``
tokens of its prompt and response) sealed with AES-256-GCM under the **log's own data keys**
(key domain ``records``), bound as associated data to the store id, the table and the record
id. Nothing of it is in cleartext but the record id (already a cleartext column of the record)
and the key epoch. The whole index is decrypted into memory when it is first searched.

Why lexical, not embeddings of the base model (measured in docs/memory.md): building it is
pure Python string work (no model pass), it is a fraction of the log's size, it does not depend
on the base model (an OS update that ships a new base changes nothing here), and a term the
user never typed cannot match.

Consistency with the records, by construction:

* The index is **opt-in per store**: :func:`enable` creates the table (and builds it from the
  records); from then on every append writes the record's index row **in the same SQLite
  transaction** as the record (:meth:`InteractionLog.append_many`), so a crash leaves both or
  neither.
* A trigger deletes a record's index row whenever the record is deleted, in the same
  statement's transaction: erasure by unit, date or source, retention and crypto-shredding all
  remove index rows with their records (secure delete, then the erasure's WAL truncation).
* Erasure re-keys the key epochs it touched (:mod:`personal.store.rekey`): index rows sealed
  under them are re-sealed too, and an index row that no longer authenticates is dropped and
  rebuilt from its record. Key rotation re-wraps the data keys, which covers index rows as it
  covers records.
* :func:`check` (part of ``personal verify``) finds rows that fail authentication (modified, or
  copied from another row or store), records without a row and rows without a record; each is
  reported with the fix, ``personal memory rebuild STORE`` (:func:`rebuild`).
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from personal.errors import MemoryIndexDamaged, StoreError
from personal.store import db as dbm
from personal.store.crypto import AAD_VERSION, InvalidTag, RowAad, open_blob, unpad

from sqlite_utils import Database

if TYPE_CHECKING:
    from personal.store.core import Store
    from personal.store.log import InteractionLog

TABLE = "memory_terms"
#: The key domain index rows are sealed in: the log's (crypto-shredding its epochs shreds both).
DOMAIN = "records"
MEMORY_MIGRATIONS = dbm.Migrations("memory")
FORMAT = 1  # first byte of every plaintext
MAX_TERM = 64  # characters kept of a longer token
REBUILD_HINT = "run `personal memory rebuild STORE` (it rebuilds the index from the records)"

_WORD = re.compile(r"\w+")
_PAGE = 1000


@MEMORY_MIGRATIONS(1)
def _create_index(db: Database) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, key_epoch INTEGER NOT NULL,"
        " sealed BLOB NOT NULL)"
    )
    # Every deletion of a record -- erase, retention, crypto-shredding, or any future path --
    # takes its index row with it, in the same transaction.
    db.execute(
        f"CREATE TRIGGER {TABLE}_follow_records AFTER DELETE ON records "
        f"BEGIN DELETE FROM {TABLE} WHERE id = old.id; END"
    )


# --- terms -------------------------------------------------------------------------------------


def terms(text: str) -> list[str]:
    """The index terms of ``text``: lower-cased (case-folded) ``\\w+`` tokens, each cut to
    :data:`MAX_TERM` characters. Queries and records are tokenized alike."""
    found = _WORD.findall(text.casefold())
    return [t if len(t) <= MAX_TERM else t[:MAX_TERM] for t in found]


def count_terms(prompt: str, response: str) -> Counter[str]:
    """Term counts of one interaction (prompt and response together)."""
    counts = Counter(terms(prompt))
    counts.update(terms(response))
    return counts


def encode_terms(counts: Counter[str] | dict[str, int]) -> bytes:
    """The plaintext of an index row: a format byte, then ``term`` or ``term\\tcount`` lines
    (count omitted when 1), sorted, UTF-8."""
    lines = (t if n == 1 else f"{t}\t{n}" for t, n in sorted(counts.items()))
    return bytes((FORMAT,)) + "\n".join(lines).encode("utf-8", "surrogatepass")


def decode_terms(data: bytes) -> dict[str, int]:
    """Inverse of :func:`encode_terms`; ``ValueError`` on anything malformed."""
    if not data or data[0] != FORMAT:
        raise ValueError("unknown memory index format")
    body = data[1:].decode("utf-8", "surrogatepass")
    out: dict[str, int] = {}
    if not body:
        return out
    for line in body.split("\n"):
        term, _, n = line.partition("\t")
        count = int(n) if n else 1
        if not term or count < 1:
            raise ValueError("malformed memory index row")
        out[term] = count
    return out


# --- the table ---------------------------------------------------------------------------------


def enabled(db: Database) -> bool:
    """Whether this store keeps a memory index (one cheap catalog lookup)."""
    row = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [TABLE]
    ).fetchone()
    return row is not None


def _row_aad(store: Store) -> RowAad:
    return RowAad(store.aad_prefix(TABLE), ())


def index_rows(store: Store, items: Sequence[tuple[int, str, str]]) -> None:
    """Seal and insert the index rows of ``(record id, prompt, response)`` items.

    Call it inside the ``atomic()`` block that writes the records, so both commit together.
    """
    if not items:
        return
    ids = [rid for rid, _, _ in items]
    plaintexts = [encode_terms(count_terms(p, r)) for _, p, r in items]
    _insert(store, ids, plaintexts)


def _insert(store: Store, ids: Sequence[int], plaintexts: Sequence[bytes]) -> None:
    row_aad = _row_aad(store)
    empty: tuple[bytes, ...] = ()

    def make_aads(epoch: int, start: int, stop: int) -> list[bytes]:
        return row_aad.many(epoch, AAD_VERSION, ids[start:stop], [empty] * (stop - start))

    with store.atomic() as db:
        sealed = store.seal_batch(DOMAIN, plaintexts, make_aads)
        db.conn.executemany(
            f"INSERT INTO {TABLE} (id, key_epoch, sealed) VALUES (?, ?, ?)",
            [(rid, s.epoch, s.blob) for rid, s in zip(ids, sealed, strict=True)],
        )


def open_row(store: Store, row_id: int, epoch: int, blob: bytes) -> dict[str, int]:
    """Authenticate and decode one index row; :class:`MemoryIndexDamaged` names it."""
    try:
        if not isinstance(epoch, int) or not isinstance(blob, bytes):
            raise ValueError("malformed key epoch or seal")
        aead = store.aead_for(epoch)
        ad = _row_aad(store).one(row_id, epoch, blob[0], ())
        return decode_terms(unpad(open_blob(aead, blob, ad)))
    except (InvalidTag, ValueError, TypeError, IndexError, OverflowError, struct.error):
        reason = "failed authentication (modified, or copied from another row or store)"
    except StoreError as exc:  # its key epoch is missing, shredded, or under another KEK
        reason = f"cannot be opened ({exc})"
    raise MemoryIndexDamaged(f"memory index row {row_id} {reason}: {REBUILD_HINT}")


def iter_rows(store: Store, after: int = 0) -> Iterator[list[tuple[int, int, bytes]]]:
    """Pages of raw ``(id, key_epoch, sealed)`` index rows with ``id > after``, in id order."""
    while True:
        with dbm.translate_errors():
            rows = store.db.execute(
                f"SELECT id, key_epoch, sealed FROM {TABLE} WHERE id > ? ORDER BY id LIMIT ?",
                [after, _PAGE],
            ).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def count(db: Database) -> int:
    """Index rows in the store (0 when it keeps no index)."""
    if not enabled(db):
        return 0
    return int(db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])


def missing_ids(db: Database) -> list[int]:
    """Records that have no index row."""
    sql = f"SELECT id FROM records WHERE id NOT IN (SELECT id FROM {TABLE}) ORDER BY id"
    return [r[0] for r in db.execute(sql)]


def orphan_ids(db: Database) -> list[int]:
    """Index rows whose record does not exist."""
    sql = f"SELECT id FROM {TABLE} WHERE id NOT IN (SELECT id FROM records) ORDER BY id"
    return [r[0] for r in db.execute(sql)]


# --- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildReport:
    """What :func:`rebuild` (or :func:`index_missing`) wrote.

    Attributes:
        entries: Index rows written.
        skipped: Records that failed to open (run ``personal verify``): left without a row.
    """

    entries: int
    skipped: list[int]


def _index_records(log: InteractionLog, where: str, args: Sequence[Any]) -> BuildReport:
    """Index the records a filter selects, page by page (inside the caller's transaction)."""
    skipped: list[int] = []

    def on_bad(record_id: int, _exc: StoreError) -> None:
        skipped.append(record_id)

    written = 0
    for rows in log.raw_pages(where, args):
        opened = list(log.open_pages([rows], on_bad))
        index_rows(log.store, [(r.id, r.prompt, r.response) for r in opened])
        written += len(opened)
    return BuildReport(written, skipped)


def enable(log: InteractionLog) -> BuildReport | None:
    """Start keeping a memory index in this store; builds it when it is new.

    Returns the build's report, or ``None`` when the store already kept one.
    """
    if enabled(log.store.db):
        return None
    with log.store.atomic():
        if not log.store.apply_migrations(MEMORY_MIGRATIONS):
            return None  # another process enabled it first (and built it)
        return _index_records(log, "", [])


def rebuild(log: InteractionLog) -> BuildReport:
    """Drop every index row and index every record again, in one transaction (a crash leaves
    the old index), then purge the old rows from the WAL. Creates the index if there is none."""
    store = log.store
    store.apply_migrations(MEMORY_MIGRATIONS)
    with store.atomic() as db:
        db.execute(f"DELETE FROM {TABLE}")
        report = _index_records(log, "", [])
    store.checkpoint()
    return report


def index_missing(log: InteractionLog) -> BuildReport:
    """Index the records that have no row (after an erasure dropped rows it could not re-seal,
    or crypto-shredding destroyed a row's key while its record survived)."""
    with log.store.atomic() as db:
        ids = missing_ids(db)
        if not ids:
            return BuildReport(0, [])
        return _index_records(log, "AND id IN (SELECT value FROM json_each(?))", [_json(ids)])


def drop(log: InteractionLog) -> int:
    """Stop keeping a memory index: delete it (secure delete, WAL purged). Returns the rows
    deleted. The records are untouched; :func:`enable` builds the index again."""
    store = log.store
    if not enabled(store.db):
        return 0
    with store.atomic() as db:
        (count,) = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        db.execute(f"DELETE FROM {TABLE}")
        db.execute(f"DROP TRIGGER IF EXISTS {TABLE}_follow_records")
        db.execute(f"DROP TABLE {TABLE}")
        db.execute(f"DELETE FROM {dbm.SCHEMA_TABLE} WHERE component = ?", ["memory"])
    store.checkpoint()
    return int(count)


# --- erasure and re-keying ---------------------------------------------------------------------


def touched_epochs(db: Database, where: str, args: Sequence[Any]) -> list[int]:
    """Key epochs of the index rows of the records an erasure's filter selects."""
    rows = db.execute(
        f"SELECT DISTINCT key_epoch FROM {TABLE} WHERE id IN "
        f"(SELECT id FROM records WHERE 1 {where})",
        list(args),
    )
    return sorted(int(r[0]) for r in rows)


def epochs_in_use(db: Database) -> set[int]:
    """Key epochs that seal at least one index row."""
    return {int(r[0]) for r in db.execute(f"SELECT DISTINCT key_epoch FROM {TABLE}")}


def reseal_epoch(store: Store, epoch: int) -> int:
    """Re-seal the index rows of ``epoch`` under the current key (use inside ``atomic()``,
    before the epoch is shredded). A row that does not authenticate is deleted instead
    (:func:`index_missing` rebuilds it from its record). Returns how many were dropped."""
    rows = store.db.execute(
        f"SELECT id, key_epoch, sealed FROM {TABLE} WHERE key_epoch = ? ORDER BY id", [epoch]
    ).fetchall()
    keep_ids, plaintexts, dropped = [], [], []
    for rid, row_epoch, blob in rows:
        try:
            plaintexts.append(encode_terms(open_row(store, rid, row_epoch, blob)))
            keep_ids.append(rid)
        except MemoryIndexDamaged:
            dropped.append(rid)
    store.db.execute(f"DELETE FROM {TABLE} WHERE key_epoch = ?", [epoch])
    _insert(store, keep_ids, plaintexts)
    return len(dropped)


def drop_epochs(db: Database, epochs: Iterable[int]) -> None:
    """Delete the index rows sealed under ``epochs`` (their keys are about to be destroyed)."""
    db.execute(
        f"DELETE FROM {TABLE} WHERE key_epoch IN (SELECT value FROM json_each(?))",
        [_json(epochs)],
    )


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexProblem:
    """One thing wrong with the memory index.

    Attributes:
        row: The record id the index row is (or should be) for.
        error: What is wrong, and the fix.
    """

    row: int
    error: str


def check(log: InteractionLog, *, skip: Iterable[int] = ()) -> list[IndexProblem]:
    """Every problem of the index: rows that fail to open, records without a row, rows
    without a record. ``skip``: records already reported as bad (they cannot be indexed
    either). Empty when the store keeps no index."""
    store = log.store
    if not enabled(store.db):
        return []
    problems: list[IndexProblem] = []
    for rows in iter_rows(store):
        for rid, epoch, blob in rows:
            try:
                open_row(store, rid, epoch, blob)
            except MemoryIndexDamaged as exc:
                problems.append(IndexProblem(rid, str(exc)))
    skipped = set(skip)
    for rid in missing_ids(store.db):
        if rid not in skipped:
            problems.append(
                IndexProblem(rid, f"record {rid} has no memory index row: {REBUILD_HINT}")
            )
    for rid in orphan_ids(store.db):
        problems.append(
            IndexProblem(rid, f"memory index row {rid} belongs to no record: {REBUILD_HINT}")
        )
    return problems


def memory_audit(store: Store | None) -> dict[str, Any]:
    """What the audit report says of personal memory (cleartext facts only).

    ``index``: the store keeps a memory index, so replies may quote past interactions when an
    app turns memory on; ``entries``: its rows; ``charges_epsilon``: always ``False`` (memory
    trains nothing and releases nothing); ``note``: what protects it instead.
    """
    on = store is not None and enabled(store.db)
    return {
        "index": on,
        "entries": count(store.db) if on and store is not None else 0,
        "charges_epsilon": False,
        "note": AUDIT_NOTE,
    }


AUDIT_NOTE = (
    "Personal memory recalls past interactions into a reply's prompt on the device. It trains "
    "nothing and releases nothing, so it charges no privacy budget and the ledger does not "
    "bound it: a reply may quote recalled interactions to whoever sees it. Its index is "
    "sealed with the records' keys and erased with them (docs/privacy.md)."
)


def _json(values: Iterable[int]) -> str:
    return "[" + ",".join(str(int(v)) for v in values) + "]"


__all__ = [
    "DOMAIN",
    "MEMORY_MIGRATIONS",
    "TABLE",
    "BuildReport",
    "IndexProblem",
    "check",
    "count",
    "count_terms",
    "decode_terms",
    "drop",
    "enable",
    "enabled",
    "encode_terms",
    "index_missing",
    "index_rows",
    "memory_audit",
    "open_row",
    "rebuild",
    "terms",
]
