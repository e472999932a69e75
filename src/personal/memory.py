"""Personal memory: retrieve the user's own past interactions at generation time.

::

    from personal.memory import Memory

    memory = Memory.open(log)                  # builds the sealed index on first use
    for hit in memory.recall("call mom", k=3):
        print(hit.id, hit.score, hit.prompt, hit.response)

The index lives in the encrypted store (:mod:`personal.store.memory`: one sealed row of term
counts per record, written in the record's transaction, erased with it). :class:`Memory` holds
it decrypted in RAM, as postings (term -> record positions and counts), and ranks records by
Okapi BM25 (Robertson & Zaragoza 2009; ``k1 = 1.2``, ``b = 0.75``, Lucene's non-negative idf).
Before every search it compares the store's index with what it holds: rows appended since are
added incrementally, and any erasure (fewer rows than expected) reloads it, so an erased
interaction is never recalled.

Memory trains nothing and releases nothing, so it charges no privacy budget; but a reply
conditioned on recalled interactions can quote them to whoever sees the reply. See
docs/memory.md and docs/privacy.md ("Which protection covers which artifact").
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from personal.errors import ConfigError, MemoryIndexDamaged, RecordNotFound
from personal.store import memory as index
from personal.store.db import translate_errors
from personal.store.log import InteractionLog

import numpy as np

#: How a generation uses what memory recalls: a token cache mixed into the model's next-token
#: distributions (:mod:`personal.model.token_cache`), or earlier chat turns in the prompt.
MemoryMode = Literal["cache", "context"]
MEMORY_MODES: tuple[MemoryMode, ...] = ("cache", "context")
#: How many past interactions a generation recalls by default in ``"context"`` mode.
DEFAULT_K = 3
#: How many past interactions a generation recalls by default in ``"cache"`` mode (measured:
#: benchmarks/memory_cache.py; a cache is not bounded by the prompt's length).
CACHE_K = 8
#: Characters kept of a recalled prompt or response (the rest is cut, with "...").
MAX_CHARS = 300
#: Tokens the recalled turns may add to a generation's prompt (the least relevant go first).
MAX_MEMORY_TOKENS = 192


@dataclass(frozen=True)
class Recalled:
    """A past interaction retrieved for a request.

    Attributes:
        id: The record id.
        score: Its BM25 score for the request (higher is more relevant).
        prompt, response: The interaction (decrypted).
        ts: When it happened (UTC).
        unit: Its privacy unit.
    """

    id: int
    score: float
    prompt: str
    response: str
    ts: datetime
    unit: str


@dataclass(frozen=True)
class MemoryStats:
    """What the memory index holds (``personal memory stats``).

    Attributes:
        enabled: The store keeps a memory index.
        entries: Index rows (one per indexed record).
        records: Records in the log.
        terms: Distinct terms in the index.
        postings: (term, record) pairs.
        index_bytes: Bytes of the index table in the database (pages), or of its rows when the
            SQLite build has no ``dbstat``.
        log_bytes: Bytes of the records table and its indexes, measured alike.
    """

    enabled: bool
    entries: int
    records: int
    terms: int
    postings: int
    index_bytes: int
    log_bytes: int

    @property
    def index_bytes_ratio(self) -> float:
        """Index bytes per byte of the log."""
        return self.index_bytes / self.log_bytes if self.log_bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**self.__dict__, "index_bytes_ratio": self.index_bytes_ratio}


class Memory:
    """BM25 retrieval over a store's sealed memory index, held in RAM.

    Use :meth:`open`. Not thread-safe; one per open log.

    Args:
        log: The open interaction log.
        k1, b: BM25 parameters.
    """

    def __init__(self, log: InteractionLog, *, k1: float = 1.2, b: float = 0.75) -> None:
        self.log = log
        self.k1, self.b = k1, b
        self._clear()

    @classmethod
    def open(cls, log: InteractionLog, **options: float) -> Memory:
        """The memory of ``log``; starts (and builds) the store's index if it keeps none."""
        index.enable(log)
        return cls(log, **options)

    def _clear(self) -> None:
        self._ids: list[int] = []  # position -> record id
        self._lengths: list[int] = []  # position -> terms in the record
        self._postings: dict[str, tuple[list[int], list[int]]] = {}  # term -> positions, counts
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._norm: np.ndarray | None = None
        self._top = 0  # highest record id loaded
        self._loaded = False  # a full, checked load happened

    # --- loading -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the RAM index up to date with the store (appends: incremental; any erasure or
        rebuild: full reload). Raises :class:`MemoryIndexDamaged` on a row that fails to open,
        and on a full reload also when a record has no row or a row has no record."""
        db = self.log.store.db
        if not index.enabled(db):
            raise MemoryIndexDamaged(
                "this store keeps no memory index (it was dropped, or never built): "
                f"{index.REBUILD_HINT}"
            )
        with translate_errors():
            count, top = db.execute(
                f"SELECT count(*), coalesce(max(id), 0) FROM {index.TABLE}"
            ).fetchone()
        if not self._loaded or top < self._top or count < len(self._ids):
            self._load_all()
        elif top > self._top:
            try:
                self._load(self._top)
            except BaseException:
                self._clear()
                raise
            if len(self._ids) != count:  # rows vanished while new ones came: start over
                self._load_all()
        elif count != len(self._ids):
            self._load_all()

    def _load_all(self) -> None:
        self._clear()
        try:
            self._load_checked()
        except BaseException:
            self._clear()  # never search a half-loaded index
            raise

    def _load_checked(self) -> None:
        db = self.log.store.db
        with translate_errors():
            missing, orphans = index.missing_ids(db), index.orphan_ids(db)
        if missing or orphans:
            what = (
                f"record {missing[0]} has no memory index row"
                if missing
                else f"memory index row {orphans[0]} belongs to no record"
            )
            more = len(missing) + len(orphans) - 1
            raise MemoryIndexDamaged(
                f"{what}{f' (and {more} more problems)' if more else ''}: {index.REBUILD_HINT}"
            )
        self._load(0)
        self._loaded = True

    def _load(self, after: int) -> None:
        store, postings = self.log.store, self._postings
        for rows in index.iter_rows(store, after):
            for rid, epoch, blob in rows:
                counts = index.open_row(store, rid, epoch, blob)
                position = len(self._ids)
                self._ids.append(rid)
                self._lengths.append(sum(counts.values()))
                for term, n in counts.items():
                    entry = postings.get(term)
                    if entry is None:
                        entry = postings[term] = ([], [])
                    entry[0].append(position)
                    entry[1].append(n)
                    self._arrays.pop(term, None)
            self._top = rows[-1][0]
        self._norm = None

    # --- searching -----------------------------------------------------------------------------

    def _term_arrays(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        cached = self._arrays.get(term)
        if cached is None:
            entry = self._postings.get(term)
            if entry is None:
                return None
            cached = self._arrays[term] = (
                np.asarray(entry[0], dtype=np.int64),
                np.asarray(entry[1], dtype=np.float64),
            )
        return cached

    def search(self, query: str, k: int = DEFAULT_K) -> list[tuple[int, float]]:
        """The ``k`` records most relevant to ``query``: ``(record id, BM25 score)``, best
        first (ties: the more recent first). Only records sharing a term with the query."""
        if k < 1:
            raise ConfigError(f"memory needs k >= 1 interactions to recall, not {k}")
        self.refresh()
        n = len(self._ids)
        wanted = set(index.terms(query))
        if not n or not wanted:
            return []
        if self._norm is None:
            lengths = np.asarray(self._lengths, dtype=np.float64)
            average = max(float(lengths.mean()), 1e-9)
            self._norm = self.k1 * (1.0 - self.b + self.b * lengths / average)
        scores = np.zeros(n)
        for term in wanted:
            found = self._term_arrays(term)
            if found is None:
                continue
            positions, tf = found
            df = len(positions)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            scores[positions] += idf * tf * (self.k1 + 1.0) / (tf + self._norm[positions])
        hits = np.flatnonzero(scores > 0)
        if not len(hits):
            return []
        # Best score first; among equal scores the later (more recent) record.
        order = hits[np.lexsort((-hits, -scores[hits]))][:k]
        return [(self._ids[i], float(scores[i])) for i in order]

    def recall(self, query: str, k: int = DEFAULT_K) -> list[Recalled]:
        """:meth:`search`, with each record decrypted; best first. A record erased since the
        index was read is left out; one that fails authentication raises ``TamperDetected``."""
        out = []
        for rid, score in self.search(query, k):
            try:
                r = self.log.get(rid)
            except RecordNotFound:
                continue
            out.append(Recalled(rid, score, r.prompt, r.response, r.ts, r.unit))
        return out

    def stats(self) -> MemoryStats:
        """Entries, terms and sizes of the index (loads it)."""
        db = self.log.store.db
        records = self.log.count()
        if not index.enabled(db):
            return MemoryStats(False, 0, records, 0, 0, 0, _table_bytes(db, "records"))
        self.refresh()
        postings = sum(len(p) for p, _ in self._postings.values())
        return MemoryStats(
            True,
            len(self._ids),
            records,
            len(self._postings),
            postings,
            _table_bytes(db, index.TABLE),
            _table_bytes(db, "records"),
        )


def _table_bytes(db: Any, table: str) -> int:
    """Bytes of a table and its indexes: its database pages (``dbstat``), else its rows."""
    try:
        row = db.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name IN "
            "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?)",
            [table, table],
        ).fetchone()
        return int(row[0] or 0)
    except sqlite3.OperationalError:  # no dbstat in this SQLite build: count the rows
        columns = "length(sealed) + 16"
        if table == "records":
            columns += " + length(unit) + length(ts) + length(source)"
        return int(db.execute(f"SELECT coalesce(sum({columns}), 0) FROM {table}").fetchone()[0])


def check_memory_mode(mode: object) -> MemoryMode:
    """``mode`` if it is one of :data:`MEMORY_MODES`, else :class:`~personal.errors.ConfigError`."""
    if mode not in MEMORY_MODES:
        raise ConfigError(f"memory_mode must be one of {', '.join(MEMORY_MODES)}, not {mode!r}")
    return mode


def default_k(mode: MemoryMode) -> int:
    """How many past interactions ``memory=True`` recalls in ``mode``."""
    return CACHE_K if mode == "cache" else DEFAULT_K


def clip(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked with ``...``)."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)].rstrip() + "..."


def memory_turns(
    recalled: Sequence[Recalled],
    count_tokens: Callable[[Sequence[tuple[str, str]]], int],
    *,
    max_tokens: int = MAX_MEMORY_TOKENS,
    max_chars: int = MAX_CHARS,
) -> tuple[list[tuple[str, str]], list[int]]:
    """Recalled interactions as prior chat turns that fit a token budget.

    ``recalled`` is best first. Each is taken in that order if the turns so far plus it still
    add at most ``max_tokens`` to the prompt (``count_tokens(turns)`` says how many they add),
    else skipped. The turns come out least relevant first, so the most relevant one sits right
    before the request.

    Returns ``(turns, ids)``: the ``(prompt, response)`` turns and the record ids they came
    from, in the same order.
    """
    turns: list[tuple[str, str]] = []
    ids: list[int] = []
    for r in recalled:
        turn = (clip(r.prompt, max_chars), clip(r.response, max_chars))
        if count_tokens([turn, *turns]) <= max_tokens:
            turns.insert(0, turn)
            ids.insert(0, r.id)
    return turns, ids


__all__ = [
    "CACHE_K",
    "DEFAULT_K",
    "MAX_CHARS",
    "MAX_MEMORY_TOKENS",
    "MEMORY_MODES",
    "Memory",
    "MemoryMode",
    "MemoryStats",
    "Recalled",
    "check_memory_mode",
    "clip",
    "default_k",
    "memory_turns",
]
