"""Crash safety of the memory index: a writer or a rebuild killed with SIGKILL at random moments
leaves the records and the index consistent (every record has its row, every row its record,
every row opens)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from personal.memory import Memory
from personal.store import Interaction, InteractionLog, RawKey
from personal.store import memory as mi

import pytest

KEY = RawKey(b"m" * 32)


def _append_forever(store_path: Path, seed: int) -> None:  # pragma: no cover - child
    rng = random.Random(seed)
    with InteractionLog.open(store_path, KEY) as log:
        batch = 0
        while True:
            log.append_many(
                Interaction(f"word{seed}x{batch} " * rng.randint(1, 50), "reply", unit=f"u{j}")
                for j in range(rng.randint(1, 8))
            )
            batch += 1


def _rebuild_forever(store_path: Path, seed: int) -> None:  # pragma: no cover - child
    with InteractionLog.open(store_path, KEY) as log:
        while True:
            mi.rebuild(log)


def _kill(store_path: Path, child, seed: int, delay: float) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            child(store_path, seed)
        finally:
            os._exit(0)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _check(store_path: Path) -> int:
    with InteractionLog.open(store_path, KEY) as log:
        assert log.store.integrity_check() == ["ok"]
        assert mi.check(log) == []
        records = log.count()
        assert Memory(log).stats().entries == records
        return records


@pytest.mark.parametrize("child", [_append_forever, _rebuild_forever])
def test_sigkill_leaves_records_and_index_consistent(tmp_path: Path, child) -> None:
    store_path = tmp_path / "store"
    with InteractionLog.create(store_path, KEY) as log:
        log.append_many(Interaction(f"seed record {i} " * 20, "r") for i in range(300))
        mi.enable(log)
    rng = random.Random(0)
    for kill in range(12):
        _kill(store_path, child, kill, rng.uniform(0.0, 0.08))
        _check(store_path)
    if child is _append_forever:
        assert _check(store_path) > 300  # the writers got some batches in
