"""Crash safety: a writer killed with SIGKILL at random moments never loses an acknowledged
record, never leaves part of a batch, and never corrupts the store."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from personal.store import Interaction, InteractionLog, RawKey

import pytest

KEY = RawKey(b"k" * 32)


def _writer(store_path: Path, write_fd: int, seed: int) -> None:  # pragma: no cover - child
    """Append batches forever; after each commit, print ``id:batch:index`` lines for it."""
    rng = random.Random(seed)
    try:
        with InteractionLog.open(store_path, KEY) as log:
            batch = 0
            while True:
                size = rng.randint(1, 8)
                ids = log.append_many(
                    Interaction(f"{seed}:{batch}:{j}", "r" * rng.randint(0, 3000), unit=f"u{j}")
                    for j in range(size)
                )
                lines = "".join(f"{rid}:{seed}:{batch}:{j}\n" for j, rid in enumerate(ids))
                os.write(write_fd, lines.encode())
                batch += 1
    finally:
        os._exit(0)


def _kill_one_writer(store_path: Path, seed: int, delay: float) -> list[tuple[int, str]]:
    """Run a writer, SIGKILL it after ``delay`` s; returns the records it acknowledged."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        _writer(store_path, write_fd, seed)
    os.close(write_fd)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read().decode()
    complete = data[: data.rfind("\n") + 1]  # a torn last line was never acknowledged
    acked = []
    for line in complete.splitlines():
        rid, prompt = line.split(":", 1)
        acked.append((int(rid), prompt))
    return acked


def _check(store_path: Path, acked: dict[int, str]) -> None:
    with InteractionLog.open(store_path, KEY) as log:
        assert log.store.integrity_check() == ["ok"]
        records = {r.id: r.prompt for r in log}  # every record decrypts, acked or not
        for rid, prompt in acked.items():
            assert records.get(rid) == prompt, f"acknowledged record {rid} lost"
        batches: dict[str, set[int]] = {}
        for prompt in records.values():
            seed_batch, j = prompt.rsplit(":", 1)
            batches.setdefault(seed_batch, set()).add(int(j))
        for members in batches.values():  # no partial batch
            assert members == set(range(len(members)))


def _crash_many(tmp_path: Path, kills: int, seed: int, per_store: int = 50) -> int:
    """``kills`` writers killed in turn; a fresh store every ``per_store`` kills keeps the
    full check after each kill cheap."""
    rng = random.Random(seed)
    total = 0
    for first in range(0, kills, per_store):
        store_path = tmp_path / f"store-{first}"
        InteractionLog.create(store_path, KEY).close()
        acked: dict[int, str] = {}
        for kill in range(first, min(kills, first + per_store)):
            acked.update(_kill_one_writer(store_path, kill, rng.uniform(0.0, 0.06)))
            _check(store_path, acked)
        total += len(acked)
    return total


def test_sigkilled_writers_lose_no_acknowledged_record(tmp_path: Path) -> None:
    assert _crash_many(tmp_path, kills=30, seed=0) > 30


@pytest.mark.slow
def test_a_thousand_sigkilled_writers(tmp_path: Path) -> None:
    assert _crash_many(tmp_path, kills=1000, seed=1) > 1000
