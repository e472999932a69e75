"""One training round at a time per store, across processes: an advisory ``flock``.

The lock file lives in the store directory. ``flock`` locks are released by the kernel when the
holder dies (even by SIGKILL), so a crashed round never leaves a store locked
(:func:`personal.filesafety.locked`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from personal.errors import RoundInProgress
from personal.filesafety import locked

LOCK_NAME = "round.lock"


@contextmanager
def round_lock(store_dir: str | Path) -> Iterator[None]:
    """Hold the store's round lock for the block; :class:`RoundInProgress` if it is taken."""
    busy = RoundInProgress(
        f"another process is running a training round on {store_dir}; try again when "
        "it has finished (a crashed round releases the lock by itself)"
    )
    with locked(Path(store_dir) / LOCK_NAME, blocking=False, busy=busy):
        yield
