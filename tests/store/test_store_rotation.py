"""Key rotation: every data key re-wrapped atomically; old key or new key, never neither."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

from personal.errors import TamperDetected, WrongKey
from personal.store import Interaction, InteractionLog, Passphrase
from personal.store.crypto import KeyRing

import pytest
from store_helpers import raw_db


def test_rotation_rewraps_keys_and_starts_new_epochs(store_path: Path, key: Passphrase) -> None:
    new_key = Passphrase("a brand new passphrase")
    with InteractionLog.create(store_path, key, max_encryptions=2) as log:
        ids = log.append_many(Interaction(f"p{i}", "r") for i in range(3))
        log.store.rotate_keys(new_key)
        states = [e["state"] for e in log.store.keys.epochs()]
        assert states == ["closed", "closed"]
        ids.append(log.append("after", "r"))
        assert log.get(ids[-1]).prompt == "after"
        assert [e["epoch"] for e in log.store.keys.epochs() if e["state"] == "current"] == [3]
    with pytest.raises(WrongKey):
        InteractionLog.open(store_path, key)
    with InteractionLog.open(store_path, new_key) as log:
        assert [r.prompt for r in log] == ["p0", "p1", "p2", "after"]
        assert log.verify().ok
    with raw_db(store_path) as conn:
        assert conn.execute("SELECT count(*) FROM store_kek").fetchone()[0] == 1
        kek_ids = {r[0] for r in conn.execute("SELECT kek_id FROM store_dek")}
    assert len(kek_ids) == 1


def test_a_failed_rotation_changes_nothing(
    store_path: Path, key: Passphrase, monkeypatch: pytest.MonkeyPatch
) -> None:
    with InteractionLog.create(store_path, key, max_encryptions=1) as log:
        log.append_many(Interaction(f"p{i}", "r") for i in range(5))
        real_wrap = KeyRing.wrap
        calls = []

        def failing_wrap(self: KeyRing, *args: object) -> tuple[bytes, bytes]:
            calls.append(args)
            if len(calls) == 3:
                raise OSError("power cut")
            return real_wrap(self, *args)

        monkeypatch.setattr(KeyRing, "wrap", failing_wrap)
        with pytest.raises(OSError):
            log.store.rotate_keys(Passphrase("new"))
        monkeypatch.undo()
        assert len(log) == 5 and log.verify().ok
    with InteractionLog.open(store_path, key) as log:
        assert log.verify().ok


def test_rotation_refuses_a_tampered_data_key(store_path: Path, key: Passphrase) -> None:
    with InteractionLog.create(store_path, key) as log:
        log.append("p", "r")
    with raw_db(store_path) as conn:
        conn.execute("UPDATE store_dek SET wrapped = zeroblob(48)")
    with InteractionLog.open(store_path, key) as log, pytest.raises(TamperDetected):
        log.store.rotate_keys(Passphrase("new"))
    InteractionLog.open(store_path, key).close()  # still the old key


def test_another_process_rotating_keys_is_reported(store_path: Path, key: Passphrase) -> None:
    new_key = Passphrase("new")
    with InteractionLog.create(store_path, key) as first:
        first.append("p", "r")
        with InteractionLog.open(store_path, key) as second:
            second.store.rotate_keys(new_key)
            second.append("new epoch", "r")
        assert first.get(1).prompt == "p"  # its data key was already unwrapped
        with pytest.raises(WrongKey, match="rotated"):
            first.get(2)


def _rotate_in_child(store_path: Path, old: str, new: str) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            with InteractionLog.open(store_path, Passphrase(old)) as log:
                log.store.rotate_keys(Passphrase(new))
        finally:
            os._exit(0)
    return pid


def test_killing_a_rotation_at_any_moment_leaves_exactly_one_key(
    store_path: Path, key: Passphrase
) -> None:
    with InteractionLog.create(store_path, key, max_encryptions=1) as log:
        log.append_many(Interaction(f"p{i}", "r") for i in range(1500))  # 1500 data keys
    rng = random.Random(1)
    current, outcomes = "correct horse battery staple", []
    for round_ in range(10):
        candidate = f"passphrase {round_}"
        pid = _rotate_in_child(store_path, current, candidate)
        time.sleep(rng.uniform(0.0, 0.1))  # a rotation of 1500 keys takes ~0.07 s here
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        opened = []
        for passphrase in (current, candidate):
            try:
                InteractionLog.open(store_path, Passphrase(passphrase)).close()
                opened.append(passphrase)
            except WrongKey:
                pass
        assert len(opened) == 1, opened
        outcomes.append(opened[0] == candidate)
        current = opened[0]
        with InteractionLog.open(store_path, Passphrase(current)) as log:
            assert log.verify().ok
            assert len(log) == 1500
    print("rotations committed before the kill:", outcomes)
