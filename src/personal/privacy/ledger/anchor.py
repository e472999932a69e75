"""The ledger's anchor: its chain head, sealed, kept *outside* the database.

A copy of ``store.db`` restored from a backup carries an older, internally consistent hash
chain; nothing inside the database can tell. The anchor is a small file (``STORE/ledger.anchor``
by default) holding the head ``(seq, entry_hash)`` of the chain, sealed with AES-256-GCM by the
store (a data key of the ``ledger`` domain, wrapped by the key provider's KEK, so it survives
key rotation and nobody without the key can forge it). Opening the ledger compares the two:

* anchor == database head: fine;
* anchor one entry behind: a crash between the database commit and the anchor write; accepted
  and repaired (the database is *ahead*: it holds more charges, never fewer);
* anchor ahead of the database, or pointing at an entry whose hash differs, or sealed under a
  data key the database does not hold: the database is an older copy -> :class:`LedgerRollback`;
* anchor missing once the ledger holds a charge -> :class:`LedgerAnchorMissing`.

The file is written atomically and durably (temporary file, fsync, rename, directory fsync:
:func:`personal.filesafety.atomic_write_bytes`, ``F_FULLFSYNC`` on macOS), under an advisory
lock, and never moved backwards (another process may have anchored a later head).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from personal.errors import (
    LedgerAnchorMissing,
    LedgerIntegrityError,
    LedgerRollback,
    RecordNotFound,
    TamperDetected,
    WrongKey,
)
from personal.filesafety import atomic_write_bytes, locked
from personal.privacy.ledger.chain import DOMAIN, LedgerHead
from personal.store import Store
from personal.store.crypto import Sealed
from personal.store.db import utcnow

ANCHOR_NAME = "ledger.anchor"
TABLE = "ledger_anchor"  # associated-data label of the sealed head (not a database table)
_FORMAT, _VERSION, _ROW = "personal-ledger-anchor", 1, "head"
_FIELDS = [("format", f"{_FORMAT}-v{_VERSION}")]


class FileAnchor:
    """Keeps the sealed anchor in a file.

    The default is ``STORE/ledger.anchor``. It detects a database restored *alone*; a backup of
    the whole directory restores the anchor too. Put it outside what backups and sync tools copy
    (or replace this class by one backed by a platform monotonic counter or keychain item: the
    ledger only calls :meth:`read`, :meth:`write` and :meth:`locked`) to widen that.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileAnchor({str(self.path)!r})"

    def read(self) -> bytes | None:
        """The anchor's bytes, or ``None`` if there is none."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:  # a directory where the file belongs, unreadable, ...
            raise LedgerIntegrityError(
                f"the ledger anchor {self.path} cannot be read ({exc.strerror}): put the "
                "store's anchor file back there (see docs/privacy.md)"
            ) from None

    def write(self, data: bytes) -> None:
        """Replace the anchor atomically and durably (temp file, fsync, rename, dir fsync)."""
        atomic_write_bytes(self.path, data)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive advisory lock (``flock``) serialising anchor updates across processes."""
        with locked(self.path.with_name(self.path.name + ".lock")):
            yield


def default_anchor(store: Store) -> FileAnchor:
    """``STORE/ledger.anchor``."""
    return FileAnchor(store.path / ANCHOR_NAME)


def as_anchor(store: Store, anchor: FileAnchor | str | Path | None) -> FileAnchor:
    """``anchor`` as a :class:`FileAnchor` (``None``: :func:`default_anchor`)."""
    if anchor is None:
        return default_anchor(store)
    return anchor if isinstance(anchor, FileAnchor) else FileAnchor(anchor)


def seal_head(store: Store, head: LedgerHead) -> bytes:
    """The anchor file's bytes for ``head``; call inside the ``atomic()`` that appends it."""
    plaintext = json.dumps({"seq": head.seq, "hash": head.hash, "written_at": utcnow()})
    sealed = store.seal(TABLE, _ROW, _FIELDS, plaintext.encode(), domain=DOMAIN)
    doc = {
        "format": _FORMAT,
        "version": _VERSION,
        "store_id": store.store_id,
        "key_epoch": sealed.epoch,
        "sealed": base64.b64encode(sealed.blob).decode(),
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def open_head(store: Store, data: bytes) -> LedgerHead:
    """Authenticate anchor bytes and return the head they name.

    Raises:
        LedgerRollback: The database does not hold the data key that sealed the anchor (it is
            older than the anchor).
        LedgerIntegrityError: The anchor is malformed, modified or from another store.
    """
    where = "the ledger anchor"
    try:
        doc = json.loads(data)
        if doc["format"] != _FORMAT:
            raise ValueError(doc["format"])
        version, store_id, epoch = int(doc["version"]), str(doc["store_id"]), doc["key_epoch"]
        blob = base64.b64decode(doc["sealed"], validate=True)
        if type(epoch) is not int or not blob:
            raise ValueError(epoch)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise LedgerIntegrityError(
            f"{where} is unreadable (modified or truncated): restore it, or run "
            "`Ledger.reanchor` if you accept what the database says (see docs/privacy.md)"
        ) from None
    if version != _VERSION:
        raise LedgerIntegrityError(f"{where} has format version {version}: upgrade personal")
    if store_id != store.store_id:
        raise LedgerIntegrityError(
            f"{where} belongs to another store ({store_id}, not {store.store_id}): put this "
            "store's own anchor back"
        )
    if epoch not in {e["epoch"] for e in store.keys.epochs(DOMAIN)}:
        raise LedgerRollback(
            f"{where} was sealed with a data key (epoch {epoch}) that this database does not "
            "hold: the database is an older copy than the anchor (a backup was restored). "
            "Training is refused: put back the latest store.db (and its -wal file)"
        )
    try:
        plain = store.open_sealed(TABLE, _ROW, _FIELDS, Sealed(epoch, blob))
        head = json.loads(plain)
        return LedgerHead(int(head["seq"]), str(head["hash"]))
    except (TamperDetected, RecordNotFound, WrongKey, ValueError, KeyError, TypeError):
        raise LedgerIntegrityError(
            f"{where} failed authentication: it was modified, or comes from another store. "
            "Restore the right anchor, or run `Ledger.reanchor` (see docs/privacy.md)"
        ) from None


def read_head(store: Store, anchor: FileAnchor) -> LedgerHead | None:
    """The head the anchor names, authenticated; ``None`` if there is no anchor."""
    data = anchor.read()
    return None if data is None else open_head(store, data)


def write_head(
    store: Store, anchor: FileAnchor, head: LedgerHead, data: bytes, *, force: bool = False
) -> None:
    """Write ``data`` (sealed ``head``) unless the anchor already names a later head.

    ``force`` (re-anchoring only) writes whatever the current anchor says, even if unreadable.
    """
    with anchor.locked():
        current = None if force else anchor.read()
        if current is not None and open_head(store, current).seq >= head.seq:
            return  # another process anchored this head or a later one
        anchor.write(data)


def compare(
    store: Store, anchor: FileAnchor, head: LedgerHead, hash_at: Callable[[int], str | None]
) -> tuple[LedgerHead | None, int]:
    """Check the database's chain head against the anchor; ``(anchored head, lag)``.

    ``hash_at(seq)`` is the hex hash of the database's entry ``seq`` (``None`` if absent).
    The lag is 0, or 1 after a crash between a commit and its anchor write.

    Raises:
        LedgerAnchorMissing: No anchor once the ledger holds more than its genesis entry.
        LedgerRollback: The anchor names an entry the database lacks or holds differently.
        LedgerIntegrityError: The anchor is unreadable, forged, or more than one entry behind.
    """
    data = anchor.read()
    if data is None:
        if head.seq <= 1:  # only the genesis: a crash right after the ledger was created
            return None, head.seq
        raise LedgerAnchorMissing(
            f"the ledger anchor {anchor.path} is missing. Without it a restored older "
            "database cannot be detected, so training is refused. Put the file back (from "
            "the same moment as store.db), or, if you hold the key and accept that charges "
            "recorded only in a lost newer copy are forgotten, run Ledger.reanchor(store, "
            "reason=...) (docs/privacy.md, 'Ledger')"
        )
    anchored = open_head(store, data)
    if anchored.seq > head.seq:
        raise LedgerRollback(
            f"the ledger in store.db ends at entry {head.seq} but its anchor names entry "
            f"{anchored.seq}: store.db is an older copy (a backup was restored) and "
            f"{anchored.seq - head.seq} entries, with their privacy charges, are missing. "
            "Training is refused: put back the latest store.db (and its -wal file)"
        )
    if hash_at(anchored.seq) != anchored.hash:
        raise LedgerRollback(
            f"the ledger in store.db diverges from its anchor at entry {anchored.seq}: "
            "store.db was replaced by another (older) copy that was then written to. "
            "Training is refused: put back the latest store.db (and its -wal file)"
        )
    lag = head.seq - anchored.seq
    if lag > 1:
        raise LedgerIntegrityError(
            f"the ledger anchor is {lag} entries behind store.db; a crash leaves it at most "
            "one behind, so the anchor was replaced by an older copy. Put the latest anchor "
            "back, or run Ledger.reanchor(store, reason=...)"
        )
    return anchored, lag
