"""Benchmark: personal memory on a store of 10,000 interactions, measured in one run.

The store holds one simulated heavy user's interactions (``personal_sim``: a persona of the
default world logging ~80 a day) in a real encrypted store (AES-256-GCM, WAL,
``synchronous=FULL``). Claims checked (docs/memory.md, docs/performance.md):

* ``build_per_s``: building the memory index from the records (``memory.rebuild``: decrypt
  every record, tokenize, count, seal every row, insert, commit, purge the WAL), interactions
  per second. Goal >= 5,000 on 2 cores.
* ``index_bytes_ratio``: the index table's bytes in the database (its pages, ``dbstat``)
  against the records table's and its indexes'. Goal <= 2.
* ``latency_ratio``: generating a 32-token reply on the bundled base ``base-v1`` with memory
  in its default mode (recall 8 interactions, build their token cache through the model,
  generate through it) against without (render, generate), through the library's own
  functions; exactly 32 tokens each (end-of-turn ignored), interleaved over the same held-out
  requests, medians. Goal <= 1.25. Each round is a fresh stream over the held-out requests:
  the rows of an exchange recalled for an earlier request of the stream are reused
  (``ReplyRows``; ``rows_reused_share`` says how many), nothing from an earlier round.
  ``latency_ratio_context``: the same for memory as earlier turns (recall 3, render them
  before the request, generate).

Also reported: the append throughput with the index against without it (same batches,
interleaved), the time to load the index into RAM, the median search time, and the end-to-end
``Personalizer.generate(max_tokens=32)`` ratio where replies stop at their end of turn.

``--alternatives`` also measures the other key the index could use, in the same run:
embeddings of the base model's own hidden states (base-v1's last hidden layer, mean-pooled over
the interaction's tokens, batches of 64), as build throughput and bytes (float16 vectors sealed
like the lexical rows), and both keys' **slot hit rate**: the share of the user's held-out
requests with a personal slot (contact, address, artist, time the prompt does not name;
``personal_sim.slots``) for which one of the 3 recalled interactions' responses names the right
value -- the chance memory gives the model what it needs -- against the 3 most recent
interactions as a no-retrieval baseline.

    python benchmarks/memory.py --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.memory import CACHE_K, DEFAULT_K, Memory
from personal.model.generate import generate_tokens, prompt_tokens
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import Interaction, InteractionLog, RawKey
from personal.store import memory as index

from personal_sim.population import Population
from personal_sim.slots import _mentions, slot_target

REPLY_TOKENS = 32


def user_interactions(n: int, seed: int = 0, held: int = 64) -> tuple[list[Interaction], list]:
    """``n`` interactions one heavy simulated user logs, and ``held`` of their next requests
    (``personal_sim`` interactions, with their slots)."""
    user = dataclasses.replace(Population.draw(1, seed).users[0], rate=80.0)
    days = n // 60 + 30
    out: list[Interaction] = []
    for day in range(days):
        for ts, it in user.day(day, days):
            out.append(Interaction(it.prompt, it.response, ts=ts, source="bench"))
            if len(out) == n:
                return out, user.held_out(day, days, held)
    raise RuntimeError("the simulated user logged fewer interactions than asked")


def _time(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_store(path: Path, items: list[Interaction], repeats: int) -> dict[str, Any]:
    """Build, size, load and search the index of a store holding ``items``."""
    key = RawKey(os.urandom(32))
    batch = 1000
    with InteractionLog.create(path, key) as log:
        log.append_many(items)
        builds = [_time(lambda: index.rebuild(log)) for _ in range(repeats)]
        stats = Memory(log).stats()
        loads = [_time(Memory(log).refresh) for _ in range(repeats)]
        memory = Memory(log)
        memory.refresh()
        queries = [it.prompt for it in items[::97]]
        searches = [_time(lambda q=q: memory.search(q, DEFAULT_K)) for q in queries]
    # Appends with and without the index: the same batches into two fresh stores, interleaved.
    with_index, without = [], []
    with (
        InteractionLog.create(path.with_name("plain"), key) as plain,
        InteractionLog.create(path.with_name("indexed"), key) as indexed,
    ):
        index.enable(indexed)
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            pair = [(plain, without), (indexed, with_index)]
            for log, times in pair if start // batch % 2 else reversed(pair):
                times.append(_time(lambda log=log, chunk=chunk: log.append_many(chunk)))
    return {
        "interactions": len(items),
        "build_per_s": round(len(items) / statistics.median(builds), 1),
        "index_bytes": stats.index_bytes,
        "log_bytes": stats.log_bytes,
        "index_bytes_ratio": round(stats.index_bytes_ratio, 4),
        "terms": stats.terms,
        "load_s": round(statistics.median(loads), 4),
        "search_ms": round(1000 * statistics.median(searches), 3),
        "append_per_s_indexed": round(batch / statistics.median(with_index), 1),
        "append_per_s_plain": round(batch / statistics.median(without), 1),
    }


def measure_latency(
    path: Path, items: list[Interaction], prompts: list[str], rounds: int
) -> dict[str, Any]:
    """Generation latency with and without memory on the store at ``path`` (base-v1)."""
    key = RawKey(os.urandom(32))
    policy = load_policy("default").with_overrides({"store.synchronous": "NORMAL"})
    with Personalizer.open(path, "base-v1", policy, key, create=True) as p:
        p.interactions.append_many(items)
        p.memory.refresh()  # build and load once: the figures are per request
        model, tokenizer = p.base.model, p.base.tokenizer

        def plain(prompt: str) -> int:
            ids = prompt_tokens(tokenizer, prompt)
            generate_tokens(model, ids, max_tokens=REPLY_TOKENS, eos_ids=set())
            return len(ids)

        def in_context(prompt: str) -> int:
            turns, _ = p.memory_context(prompt, DEFAULT_K)
            ids = prompt_tokens(tokenizer, prompt, history=turns)
            generate_tokens(model, ids, max_tokens=REPLY_TOKENS, eos_ids=set())
            return len(ids)

        def cached(prompt: str) -> int:
            cache, _ = p.memory_cache(prompt, CACHE_K)
            ids = prompt_tokens(tokenizer, prompt)
            generate_tokens(model, ids, max_tokens=REPLY_TOKENS, eos_ids=set(), token_cache=cache)
            return len(ids)

        for prompt in prompts[:4]:  # warm up every path
            plain(prompt), in_context(prompt), cached(prompt)
        timed: dict[str, list[float]] = {"plain": [], "memory": [], "context": [],
                                         "stop_plain": [], "stop_memory": []}  # fmt: skip
        lengths: dict[str, list[int]] = {"plain": [], "memory": [], "context": []}
        tokens: dict[str, list[int]] = {"stop_plain": [], "stop_memory": []}
        rows = p.reply_rows  # the token-cache rows kept between requests
        reused = [0, 0]  # recalled exchanges whose rows were kept / computed, cache mode
        for r in range(rounds):
            # Each round is a fresh stream of requests: nothing kept from the round before
            # (the same prompts again would find every row kept).
            rows.clear()
            for i, prompt in enumerate(prompts):
                kept = rows.snapshot()  # what the stream kept before this request
                before = rows.reused, rows.computed
                order = [("plain", plain), ("memory", cached), ("context", in_context)]
                for name, fn in order if (i + r) % 2 else reversed(order):
                    start = time.perf_counter()
                    lengths[name].append(fn(prompt))
                    timed[name].append(time.perf_counter() - start)
                reused[0] += rows.reused - before[0]
                reused[1] += rows.computed - before[1]
                for name, memory in (("stop_plain", False), ("stop_memory", True)):
                    rows.restore(kept)  # not this request's own rows, just computed
                    start = time.perf_counter()
                    reply = p.generate(prompt, memory=memory, max_tokens=REPLY_TOKENS)
                    timed[name].append(time.perf_counter() - start)
                    tokens[name].append(len(reply.tokens))
    med = {k: statistics.median(v) for k, v in timed.items()}
    return {
        "latency_ratio": round(med["memory"] / med["plain"], 4),
        "latency_ms_plain": round(1000 * med["plain"], 2),
        "latency_ms_memory": round(1000 * med["memory"], 2),
        "rows_reused_share": round(reused[0] / max(1, sum(reused)), 4),
        "latency_ratio_context": round(med["context"] / med["plain"], 4),
        "latency_ms_context": round(1000 * med["context"], 2),
        "prompt_tokens_plain": statistics.mean(lengths["plain"]),
        "prompt_tokens_context": statistics.mean(lengths["context"]),
        "latency_ratio_stop": round(med["stop_memory"] / med["stop_plain"], 4),
        "reply_tokens_stop_plain": statistics.mean(tokens["stop_plain"]),
        "reply_tokens_stop_memory": statistics.mean(tokens["stop_memory"]),
    }


def compare_keys(items: list[Interaction], held: list, k: int = DEFAULT_K) -> dict[str, Any]:
    """Base-model embeddings against the lexical index: build, bytes, slot hit rate."""
    from personal.model.base import load_base
    from personal.store.crypto import padded_length

    import mlx.core as mx
    import numpy as np

    base = load_base("base-v1")
    model, tokenizer = base.model, base.tokenizer

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 64):
            ids = [tokenizer.encode(t)[:128] or [0] for t in texts[start : start + 64]]
            width = max(map(len, ids))
            batch = mx.array([i + [0] * (width - len(i)) for i in ids])
            mask = mx.array([[1.0] * len(i) + [0.0] * (width - len(i)) for i in ids])[..., None]
            hidden = model.model(batch)  # (B, T, H); right padding leaves real positions alone
            pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
            out.append(np.array(pooled.astype(mx.float16)))
        return np.concatenate(out)

    texts = [f"{it.prompt} {it.response}" for it in items]
    embed(texts[:128])  # warm up
    start = time.perf_counter()
    vectors = embed(texts)
    embed_s = time.perf_counter() - start
    row = 1 + 12 + padded_length(vectors.shape[1] * 2 + 4) + 16  # sealed like a lexical row
    lexical_rows, log_rows = [], []
    for it in items:
        counts = index.count_terms(it.prompt, it.response)
        lexical_rows.append(29 + padded_length(len(index.encode_terms(counts)) + 4))
        log_rows.append(len(it.prompt.encode()) + len(it.response.encode()))
    # Slot hit rate of each key over the held-out requests that carry a personal slot.
    asked = [(it, t) for it in held if (t := slot_target(it)) is not None]
    unit = vectors.astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True) + 1e-9
    queries = embed([it.prompt for it, _ in asked]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True) + 1e-9
    with (
        tempfile.TemporaryDirectory() as tmp,
        InteractionLog.create(Path(tmp) / "s", RawKey(os.urandom(32))) as log,
    ):
        log.append_many(items)
        memory = Memory.open(log)
        lexical = [[rid - 1 for rid, _ in memory.search(it.prompt, k)] for it, _ in asked]
    dense = [list(np.argsort(-(unit @ q))[:k]) for q in queries]
    recent = [list(range(len(items) - k, len(items)))] * len(asked)

    def hit_rate(found: list[list[int]]) -> float:
        hits = sum(
            any(_mentions(items[i].response, value) for i in ids)
            for (_, (_, value)), ids in zip(asked, found, strict=True)
        )
        return round(hits / max(len(asked), 1), 4)

    return {
        "embedding_build_per_s": round(len(items) / embed_s, 1),
        "embedding_row_bytes": row,
        "lexical_row_bytes_mean": round(statistics.mean(lexical_rows), 1),
        "log_payload_bytes_mean": round(statistics.mean(log_rows), 1),
        "slot_requests": len(asked),
        "slot_hit_rate_lexical": hit_rate(lexical),
        "slot_hit_rate_embedding": hit_rate(dense),
        "slot_hit_rate_recent": hit_rate(recent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactions", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5, help="index builds and loads")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the requests")
    parser.add_argument("--requests", type=int, default=64, help="held-out requests timed")
    parser.add_argument("--alternatives", action="store_true", help="also embeddings")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    items, held = user_interactions(args.interactions, held=256)
    prompts = [it.prompt for it in held[: args.requests]]
    with tempfile.TemporaryDirectory() as tmp:
        result = measure_store(Path(tmp) / "store", items, args.repeats)
        result |= measure_latency(Path(tmp) / "served", items, prompts, args.rounds)
    if args.alternatives:
        result |= compare_keys(items, held)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    result["goals_met"] = {
        "build_per_s": result["build_per_s"] >= 5000,
        "latency_ratio": result["latency_ratio"] <= 1.25,
        "index_bytes_ratio": result["index_bytes_ratio"] <= 2.0,
    }
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
    else:
        for name, value in result.items():
            print(f"{name:28s} {value}")


if __name__ == "__main__":
    main()
