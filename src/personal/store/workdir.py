"""Scratch directories *inside* a store directory, removed at the next open if left behind.

Some operations need a private copy of the store (the canary audit trains on one). A copy in
``/tmp`` would outlive a SIGKILL as a full, decryptable copy of the user's data where no erasure
ever reaches it. Here the copy lives in ``STORE/.work-<random>/`` (mode 0700): it is ciphertext
like the store, it travels and is deleted with the store, and :func:`clean` -- run by every
:meth:`Store.open <personal.store.Store.open>` -- removes what a killed process left, before
anything else (an erasure, say) happens. A live operation holds an ``flock`` on its directory's
lock file, so a concurrent open never removes a scratch directory still in use.

Why not :func:`personal.filesafety.locked`: that lock file is permanent (removing it would let
a waiter lock an unlinked file). Here each scratch directory has its own lock file, created
exclusively before the directory and removed with it, and :func:`clean` must test a lock
without creating one (an absent lock file means its holder is gone). Different lifetimes,
so a different (small) helper; the ``flock`` semantics are the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

PREFIX = ".work-"


@contextlib.contextmanager
def scratch(store_dir: str | Path) -> Iterator[Path]:
    """A fresh, locked scratch directory in ``store_dir``, removed when the block exits."""
    path = Path(store_dir) / f"{PREFIX}{secrets.token_hex(8)}"
    lock = _lock_of(path)
    # The lock is taken before the directory exists, so clean() never sees it unlocked.
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path.mkdir(mode=0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        lock.unlink(missing_ok=True)
        os.close(fd)  # last: a concurrent clean() must not see the directory unlocked


def clean(store_dir: str | Path) -> list[Path]:
    """Remove every scratch directory no live process holds; returns what was removed."""
    removed: list[Path] = []
    try:
        candidates = [p for p in Path(store_dir).iterdir() if is_scratch(p.name)]
    except OSError:
        return removed
    for path in candidates:
        if path.is_symlink() or not path.is_dir() or _in_use(_lock_of(path)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        _lock_of(path).unlink(missing_ok=True)
        removed.append(path)
    return removed


def _lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _in_use(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False  # no lock file: its holder is gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def is_scratch(name: str) -> bool:
    """Whether a directory entry is a scratch directory (never copied into a scratch copy)."""
    return name.startswith(PREFIX) and not name.endswith(".lock")
