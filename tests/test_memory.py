"""Personal memory retrieval: BM25 over the sealed index, kept in step with the store."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from personal.errors import ConfigError
from personal.memory import Memory, Recalled, clip, memory_turns
from personal.store import Interaction, InteractionLog, RawKey
from personal.store import memory as mi

import pytest

KEY = RawKey(bytes(range(32)))
T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def log(tmp_path: Path):
    with InteractionLog.create(tmp_path / "store", KEY) as opened:
        opened.append_many(
            [
                Interaction("call my mom", "Calling Maria (mom) now.", ts=T0),
                Interaction("what's the weather", "Sunny, 24 degrees.", ts=T0),
                Interaction("play something by Adele", "Playing Adele.", ts=T0),
                Interaction("call Ana", "Calling Ana.", ts=T0),
            ]
        )
        yield opened


def test_open_builds_the_index_and_ranks_by_bm25(log: InteractionLog) -> None:
    memory = Memory.open(log)
    assert mi.enabled(log.store.db)
    hits = memory.search("call mom please")
    assert [rid for rid, _ in hits] == [1, 4]  # "mom" is rarer than "call": record 1 first
    # The score is Okapi BM25 with Lucene's idf, by hand for record 4 (one term, "call").
    n, df, k1, b = 4, 2, 1.2, 0.75
    lengths = [7, 7, 6, 4]  # terms per record, prompt and response ("what's": what, s)
    assert [len(mi.terms(r.prompt + " " + r.response)) for r in log] == lengths
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    tf = 1  # "call" (not "calling")
    norm = k1 * (1 - b + b * lengths[3] / (sum(lengths) / n))
    assert hits[1][1] == pytest.approx(idf * tf * (k1 + 1) / (tf + norm))


def test_search_returns_only_matches_best_first_and_recent_on_ties(log: InteractionLog) -> None:
    memory = Memory.open(log)
    assert memory.search("zebra") == [] and memory.search("  !!! ") == []
    a, b = log.append_many([Interaction("zebra", "x"), Interaction("zebra", "x")])
    assert [rid for rid, _ in memory.search("zebra")] == [b, a]
    assert [rid for rid, _ in memory.search("zebra", k=1)] == [b]
    with pytest.raises(ConfigError):
        memory.search("zebra", k=0)


def test_recall_decrypts_the_interactions(log: InteractionLog) -> None:
    (hit,) = Memory.open(log).recall("Adele", k=5)
    assert isinstance(hit, Recalled)
    assert (hit.id, hit.prompt, hit.response, hit.ts) == (3, "play something by Adele",
                                                          "Playing Adele.", T0)  # fmt: skip
    assert hit.unit == "interaction:3" and hit.score > 0


def test_another_process_appends_and_erasures_are_seen(log: InteractionLog, tmp_path: Path) -> None:
    memory = Memory.open(log)
    assert memory.search("harmonica") == []
    with InteractionLog.open(tmp_path / "store", KEY) as other:  # another connection
        (new,) = other.append_many([Interaction("harmonica lesson", "Booked.")])
        assert [rid for rid, _ in memory.search("harmonica")] == [new]
        other.erase(f"interaction:{new}")
        assert memory.search("harmonica") == []
        other.append("kazoo", "ok")  # an erasure and an append between two searches
        other.erase("interaction:1")
        assert [rid for rid, _ in memory.search("kazoo")] == [6]
        assert memory.search("mom") == []


def test_stats_counts_the_index(log: InteractionLog) -> None:
    assert Memory(log).stats().enabled is False
    stats = Memory.open(log).stats()
    assert (stats.enabled, stats.entries, stats.records) == (True, 4, 4)
    assert stats.terms == len({t for r in log for t in mi.terms(r.prompt + " " + r.response)})
    assert 0 < stats.index_bytes_ratio < 2 and stats.to_json()["index_bytes_ratio"] > 0


def _recalled(rid: int, prompt: str, response: str = "ok") -> Recalled:
    return Recalled(rid, 1.0, prompt, response, T0, "u")


def test_memory_turns_put_the_best_last_and_fit_the_budget() -> None:
    best_first = [_recalled(1, "a" * 10), _recalled(2, "b" * 10), _recalled(3, "c" * 10)]

    def chars(turns) -> int:
        return sum(len(p) + len(r) for p, r in turns)

    turns, ids = memory_turns(best_first, chars, max_tokens=100)
    assert ids == [3, 2, 1] and turns[-1] == ("a" * 10, "ok")
    turns, ids = memory_turns(best_first, chars, max_tokens=25)  # the best that fit
    assert ids == [2, 1]
    too_long = [_recalled(7, "z" * 40), *best_first]  # the best alone is over: skipped
    assert memory_turns(too_long, chars, max_tokens=25)[1] == [2, 1]
    assert memory_turns(best_first, chars, max_tokens=5) == ([], [])
    long = [_recalled(9, "x" * 1000, "y" * 1000)]
    turns, _ = memory_turns(long, chars, max_tokens=10_000, max_chars=50)
    assert turns == [(clip("x" * 1000, 50), clip("y" * 1000, 50))] and len(turns[0][0]) == 50
    assert turns[0][0].endswith("...") and clip("short", 50) == "short"
