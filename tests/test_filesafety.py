"""personal.filesafety: atomic durable writes, the macOS full fsync, and cross-process locks."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from personal import filesafety
from personal.errors import RoundInProgress
from personal.filesafety import (
    atomic_write_bytes,
    atomic_write_text,
    full_fsync,
    leftover_temps,
    locked,
    write_synced,
)

import pytest

FAKE_FULLFSYNC = 51  # F_FULLFSYNC's value on macOS; any int will do


class Crash(BaseException):
    """Stands for the process dying at this point (not an Exception: nothing catches it)."""


def _names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- atomic writes ------------------------------------------------------------------------------


def test_round_trip_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_text(target, "sécond\n")
    assert target.read_bytes() == "sécond\n".encode()
    atomic_write_bytes(target, b"")
    assert target.read_bytes() == b""
    assert _names(tmp_path) == ["state.json"]


def test_files_are_private_to_the_owner(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write_bytes(target, b"new")  # a replacement gets the new file's mode
    assert target.stat().st_mode & 0o777 == 0o600
    write_synced(tmp_path / "part", b"data")
    assert (tmp_path / "part").stat().st_mode & 0o777 == 0o600


def test_write_synced_truncates(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_synced(path, b"a long first version")
    write_synced(path, b"short")
    assert path.read_bytes() == b"short"


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(fcntl, "F_FULLFSYNC", raising=False)  # the plain fsync path everywhere

    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)


def _fail_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: object, dst: object) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", fail)


def _fail_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    def half(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])  # half of it reached the temporary file
        os.close(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filesafety, "_write_fd", half)


@pytest.mark.parametrize("fail", [_fail_fsync, _fail_replace, _fail_midway])
def test_a_failed_write_leaves_the_target_untouched_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail
) -> None:
    target = tmp_path / "anchor"
    atomic_write_bytes(target, b"previous complete content")
    fail(monkeypatch)
    with pytest.raises((OSError, Crash)):
        atomic_write_bytes(target, b"the next content, never seen half-written")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous complete content"
    assert _names(tmp_path) == ["anchor"]


def test_a_failed_first_write_creates_nothing(tmp_path: Path, monkeypatch) -> None:
    _fail_replace(monkeypatch)
    with pytest.raises(Crash):
        atomic_write_text(tmp_path / "new", "x")
    assert _names(tmp_path) == []


def test_leftover_temps_finds_only_killed_writes(tmp_path: Path) -> None:
    target = tmp_path / "ACTIVE"
    killed = filesafety.temp_path(target)
    killed.write_bytes(b"{")
    others = ["ACTIVE", "ACTIVE.tmp", "ACTIVE.notahex!.tmp", "ACTIVE.0BADF00D.tmp"]
    for other in [*others, "OTHER.0badf00d.tmp"]:
        (tmp_path / other).write_bytes(b"")
    assert leftover_temps(target) == [killed]
    assert leftover_temps(tmp_path / "missing-dir" / "x") == []


# --- the full fsync -------------------------------------------------------------------------


@contextmanager
def _recorded(monkeypatch: pytest.MonkeyPatch, *, refuse: bool = False) -> Iterator[list]:
    """Record fcntl.fcntl and os.fsync calls (fcntl refusing F_FULLFSYNC if ``refuse``)."""
    calls: list[tuple] = []

    def fake_fcntl(fd: int, command: int, *args: object) -> int:
        calls.append(("fcntl", command))
        if refuse:
            raise OSError(45, "Operation not supported")
        return 0

    def fake_fsync(fd: int) -> None:
        calls.append(("fsync",))

    monkeypatch.setattr(fcntl, "fcntl", fake_fcntl)
    monkeypatch.setattr(os, "fsync", fake_fsync)
    yield calls


def test_f_fullfsync_is_chosen_when_the_platform_has_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", FAKE_FULLFSYNC, raising=False)
    with _recorded(monkeypatch) as calls:
        atomic_write_bytes(tmp_path / "f", b"data")
    # the file, then the directory after the rename: both with the full fsync, none plain
    assert calls == [("fcntl", FAKE_FULLFSYNC), ("fcntl", FAKE_FULLFSYNC)]


def test_a_filesystem_refusing_f_fullfsync_gets_fsync(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", FAKE_FULLFSYNC, raising=False)
    with _recorded(monkeypatch, refuse=True) as calls, open(tmp_path / "f", "wb") as f:
        full_fsync(f.fileno())
    assert calls == [("fcntl", FAKE_FULLFSYNC), ("fsync",)]


def test_without_f_fullfsync_it_is_a_plain_fsync(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delattr(fcntl, "F_FULLFSYNC", raising=False)
    with _recorded(monkeypatch) as calls:
        atomic_write_bytes(tmp_path / "f", b"data")
    assert calls == [("fsync",), ("fsync",)]


# --- locks ----------------------------------------------------------------------------------

HOLDER = """
import sys
from personal.filesafety import locked
with locked(sys.argv[1], exclusive=sys.argv[2] == "ex"):
    print("held", flush=True)
    sys.stdin.readline()  # until the parent says so (or dies)
print("released", flush=True)
"""


@contextmanager
def _held_elsewhere(path: Path, mode: str = "ex") -> Iterator[subprocess.Popen]:
    """Another process holding the lock on ``path`` until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def test_an_exclusive_lock_excludes_another_process(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with _held_elsewhere(path):
        with pytest.raises(BlockingIOError), locked(path, blocking=False):
            pass  # pragma: no cover - never entered
        busy = RoundInProgress("busy")
        with pytest.raises(RoundInProgress, match="busy"), locked(path, blocking=False, busy=busy):
            pass  # pragma: no cover - never entered
        with pytest.raises(BlockingIOError), locked(path, exclusive=False, blocking=False):
            pass  # pragma: no cover - never entered
    # the holder is gone (killed): the kernel released its lock
    with locked(path, blocking=False) as fd:
        assert isinstance(fd, int)
    assert path.stat().st_mode & 0o777 == 0o600


def test_shared_locks_coexist_but_exclude_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with _held_elsewhere(path, "sh"):
        with locked(path, exclusive=False, blocking=False):
            pass
        with pytest.raises(BlockingIOError), locked(path, blocking=False):
            pass  # pragma: no cover - never entered


def test_a_blocking_lock_waits_for_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with _held_elsewhere(path) as holder:
        told: list[float] = []

        def release_later() -> None:
            time.sleep(0.3)
            told.append(time.monotonic())  # before the holder can release
            holder.stdin.write("go\n")  # type: ignore[union-attr]
            holder.stdin.flush()  # type: ignore[union-attr]

        thread = threading.Thread(target=release_later)
        thread.start()
        with locked(path):
            acquired = time.monotonic()
        thread.join()
        assert told and acquired >= told[0]  # it waited for the holder to let go
        assert holder.stdout.readline() == "released\n"  # type: ignore[union-attr]
        assert holder.wait(timeout=30) == 0


def test_only_acquiring_raises_busy(tmp_path: Path) -> None:
    busy = RoundInProgress("busy")
    with (
        pytest.raises(BlockingIOError, match="from the body"),
        locked(tmp_path / "x.lock", blocking=False, busy=busy),
    ):
        raise BlockingIOError("from the body")


def test_two_threads_exclude_each_other(tmp_path: Path) -> None:
    path, inside, overlaps = tmp_path / "x.lock", [], []

    def work() -> None:
        for _ in range(20):
            with locked(path):
                inside.append(1)
                overlaps.append(len(inside))
                time.sleep(0.001)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 60 and max(overlaps) == 1
