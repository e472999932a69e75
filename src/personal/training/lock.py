"""One training round at a time per store, across processes: an advisory ``flock``.

The lock file lives in the store directory. ``flock`` locks are released by the kernel when the
holder dies (even by SIGKILL), so a crashed round never leaves a store locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from personal.errors import RoundInProgress

LOCK_NAME = "round.lock"


@contextmanager
def round_lock(store_dir: str | Path) -> Iterator[None]:
    """Hold the store's round lock for the block; :class:`RoundInProgress` if it is taken."""
    path = Path(store_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RoundInProgress(
                f"another process is running a training round on {store_dir}; try again when "
                "it has finished (a crashed round releases the lock by itself)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
