"""Durable, atomic file writes and advisory locks: one implementation, one durability rule.

Every file `personal` replaces in place (``store.json``, ``ledger.anchor``, the adapter
registry's ``ACTIVE`` pointer, caches) goes through :func:`atomic_write_bytes`, and every
cross-process lock through :func:`locked`, so that they all get the same guarantees:

* **Atomic.** The data is written to a temporary file *in the same directory* (a rename is only
  atomic within one filesystem), flushed, then ``os.replace``\\ d over the target. A reader, or
  the next process after a crash, sees the old file or the new one, never a mix.
* **Durable, everywhere alike.** Flushes use :func:`full_fsync`: on macOS a plain ``fsync``
  hands the data to the drive but does not flush the drive's cache, so after a power loss a
  renamed file may come back empty or older than what it replaced; ``F_FULLFSYNC`` does. The
  directory is flushed after the rename (:func:`fsync_dir`), or the rename itself may be lost.
* **No litter.** On any failure (including ``KeyboardInterrupt``) the temporary file is removed;
  only a process killed mid-write leaves one, named ``<target>.<random>.tmp``
  (:func:`leftover_temps` finds them).
* **Locks die with their holder.** :func:`locked` is ``flock(2)`` on a lock file: the kernel
  releases it when the process exits, even by SIGKILL, so a crash never leaves anything locked.

Standard library only, and cheap to import: the adapter registry imports it and must open fast.
POSIX only (``fcntl``), like the rest of `personal`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "fsync_path",
    "full_fsync",
    "leftover_temps",
    "locked",
    "temp_path",
    "write_synced",
]

TEMP_SUFFIX = ".tmp"


def full_fsync(fd: int) -> None:
    """Flush ``fd`` to stable storage with the platform's strongest primitive.

    ``fcntl(F_FULLFSYNC)`` where the platform has it (macOS: a plain ``fsync`` there does not
    flush the drive's write cache, so it orders nothing across a power loss), else
    ``os.fsync``. A filesystem that refuses ``F_FULLFSYNC`` (some network or FUSE mounts) gets
    ``os.fsync`` instead of an error: the best it offers.
    """
    command = getattr(fcntl, "F_FULLFSYNC", None)  # looked up per call: tests patch it
    if command is not None:
        try:
            fcntl.fcntl(fd, command)
            return
        except OSError:  # not supported by this filesystem: fall back
            pass
    os.fsync(fd)


def fsync_path(path: str | Path) -> None:
    """:func:`full_fsync` the file or directory at ``path`` (opened read-only, then closed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        full_fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make the creations, renames and removals inside directory ``path`` durable.

    A rename is a change to the directory, not to the file: until the directory is flushed, a
    power loss may undo it even though the file's own data was flushed.
    """
    fsync_path(path)


def write_synced(path: str | Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create (or truncate) ``path`` holding ``data``, flushed with :func:`full_fsync`.

    Not atomic by itself: for files inside a directory that is renamed into place afterwards
    (the adapter registry's versions). To replace a file in place, use
    :func:`atomic_write_bytes`. ``mode`` applies to a file this creates (minus the umask).
    """
    _write_fd(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), data)


def temp_path(path: str | Path) -> Path:
    """A fresh temporary name next to ``path``: ``<name>.<8 random hex digits>.tmp``.

    Random, so that two writers (or a writer and a killed one's leftover) never collide.
    """
    path = Path(path)
    return path.with_name(f"{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def leftover_temps(path: str | Path) -> list[Path]:
    """The temporary files of :func:`atomic_write_bytes` calls on ``path`` that were killed."""
    path = Path(path)
    prefix = path.name + "."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    return sorted(
        path.with_name(name)
        for name in names
        if name.startswith(prefix)
        and name.endswith(TEMP_SUFFIX)
        and _is_token(name[len(prefix) : -len(TEMP_SUFFIX)])
    )


def _is_token(text: str) -> bool:
    """Whether ``text`` is what :func:`temp_path` puts in a name (8 lowercase hex digits)."""
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` by a file holding ``data``, atomically and durably.

    Temporary file in the same directory (created exclusively, ``mode`` minus the umask; owner
    only by default, like the store's files), write, :func:`full_fsync`, ``os.replace``,
    :func:`fsync_dir`. If anything fails before the rename, the temporary file is removed and
    ``path`` is untouched; after the rename, ``path`` holds all of ``data``.
    """
    path = Path(path)
    tmp = temp_path(path)
    # Opened before the ``try``: if this fails, there is nothing of ours to remove.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        _write_fd(fd, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(
    path: str | Path, text: str, *, mode: int = 0o600, encoding: str = "utf-8"
) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded (UTF-8 by default; no newline mapping)."""
    atomic_write_bytes(path, text.encode(encoding), mode=mode)


@contextlib.contextmanager
def locked(
    path: str | Path,
    *,
    exclusive: bool = True,
    blocking: bool = True,
    busy: BaseException | None = None,
) -> Iterator[int]:
    """Hold an advisory ``flock`` on the lock file ``path`` (created 0600 if absent).

    Yields the lock file's descriptor. Exclusive by default (``exclusive=False``: shared, for
    readers that must not overlap a writer). ``blocking`` waits for the lock; otherwise, when
    another holder has it, raises ``busy`` if given (say, a library error naming what is
    running), else :class:`BlockingIOError`. Only acquiring raises ``busy``: an error raised
    inside the block passes through untouched.

    ``flock`` locks belong to the open file, so two threads of one process exclude each other
    too (each call opens its own descriptor). Closing the descriptor releases the lock; the
    kernel closes it if the process dies, even by SIGKILL. The lock file is left in place:
    removing it would let a waiter lock an unlinked file while a newcomer locks a new one.
    """
    operation = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if not blocking:
        operation |= fcntl.LOCK_NB
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            if busy is None:
                raise
            raise busy from None
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, flush it to disk, close ``fd`` (even on failure)."""
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        full_fsync(f.fileno())
