"""AEAD sealing: AES-256-GCM with bound associated data, length padding, and the key ring.

Everything here is a thin, fixed composition of ``cryptography``'s :class:`AESGCM`; there is no
hand-rolled primitive. Three pieces:

* **Associated data** (:func:`aad_prefix`, :func:`aad`): an unambiguous, length-prefixed encoding
  of *where* a ciphertext lives — store id, table, row id, key epoch, format version and the
  row's cleartext columns (unit, timestamp, ...). A ciphertext moved to another row, table or
  store, or a row whose cleartext columns were edited, fails authentication.
* **Padding** (:func:`pad`, :func:`unpad`): plaintexts are padded to a Padmé length (at least
  64 bytes) so a ciphertext's size reveals O(log log L) bits of the plaintext's length L, at most
  ~12% overhead.
* **The key ring** (:class:`KeyRing`): the KEK (as an AESGCM object) that wraps per-epoch data
  keys (DEKs) and proves itself with an authenticated check value, plus a cache of unwrapped
  DEKs. AESGCM objects are reused: building one per record would dominate the cost.

Nonces are 96 random bits from ``os.urandom``, drawn in one call per batch. With random nonces,
NIST SP 800-38D caps one key at 2**32 encryptions; the store rotates DEKs far earlier (2**30 by
default), see :mod:`personal.store.core`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from personal.errors import StoreError, TamperDetected, WrongKey

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
AAD_VERSION = 1  # bump when the associated-data layout changes; stored with every row
MIN_PADDED = 64

_CHECK_PLAINTEXT = b"personal store key check v1"
_U32 = struct.Struct(">I")
_EPOCH_V = struct.Struct(">QI")

FieldValue = str | bytes | int | None


class Sealed(NamedTuple):
    """A sealed value as stored in a row: its key epoch and one blob.

    The blob is ``AAD version (u8) | nonce (12 bytes) | ciphertext || tag (16 bytes)``; tables
    store it as ``key_epoch INTEGER, sealed BLOB`` (one column for all three parts: each extra
    column costs ~10% of an append).
    """

    epoch: int
    blob: bytes

    @property
    def v(self) -> int:
        """The associated-data layout version it was sealed with."""
        return self.blob[0]

    @property
    def nonce(self) -> bytes:
        """The 96-bit nonce."""
        return self.blob[1 : 1 + NONCE_BYTES]

    @property
    def ciphertext(self) -> bytes:
        """Ciphertext followed by the 16-byte GCM tag."""
        return self.blob[1 + NONCE_BYTES :]


def make_blob(nonce: bytes, ciphertext: bytes, v: int = AAD_VERSION) -> bytes:
    """The stored form of a sealed value (see :class:`Sealed`)."""
    return b"".join((bytes((v,)), nonce, ciphertext))


# --- associated data ---------------------------------------------------------------------------


def _lp(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def encode_value(value: FieldValue) -> tuple[bytes, bytes]:
    """``(type tag, bytes)`` of a bound value: ``"5"``, ``b"5"``, ``5`` and ``None`` differ."""
    if isinstance(value, bytes):
        return b"b", value
    if isinstance(value, str):
        return b"s", value.encode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool):
        return b"i", b"%d" % value
    if value is None:
        return b"n", b""
    raise TypeError(f"cannot bind a {type(value).__name__} in associated data")


def aad_prefix(store_id: str, table: str) -> bytes:
    """The part of the associated data shared by every row of one table of one store."""
    return b"personal-aad" + _lp(store_id.encode()) + _lp(table.encode())


def _layout(prefix: bytes, names: Sequence[str]) -> bytes:
    if any("," in name for name in names):
        raise ValueError("associated-data field names must not contain ','")
    return prefix + _lp(",".join(names).encode())


def aad(
    prefix: bytes, row_id: int | str, epoch: int, v: int, fields: Iterable[tuple[str, FieldValue]]
) -> bytes:
    """Associated data of one row.

    Layout: ``prefix`` (store id, table) | field names | epoch (u64) | AAD version (u32) |
    one type tag per value | one u32 length per value | the values, where the values are the
    row id then the fields, in the order given (callers use a fixed order).
    """
    fields = list(fields)
    encoded = [encode_value(row_id)] + [encode_value(value) for _, value in fields]
    return b"".join(
        [
            _layout(prefix, [name for name, _ in fields]),
            _EPOCH_V.pack(epoch, v),
            b"".join(tag for tag, _ in encoded),
            b"".join(_U32.pack(len(data)) for _, data in encoded),
            *(data for _, data in encoded),
        ]
    )


class RowAad:
    """Fast :func:`aad` for rows with an integer id and ``bytes`` field values.

    Appending and scanning build one associated data per row: this precomputes the constant
    parts and returns exactly the bytes :func:`aad` would.

    Args:
        prefix: :func:`aad_prefix` of the store and table.
        names: The field names, in the order their values will be given.
    """

    def __init__(self, prefix: bytes, names: Sequence[str]) -> None:
        self._head = _layout(prefix, names)
        self._tags = b"i" + b"b" * len(names)
        self._lengths = struct.Struct(f">{len(names) + 1}I").pack

    def one(self, row_id: int, epoch: int, v: int, values: Sequence[bytes]) -> bytes:
        """The associated data of one row."""
        rid = b"%d" % row_id
        return b"".join(
            (
                self._head,
                _EPOCH_V.pack(epoch, v),
                self._tags,
                self._lengths(len(rid), *map(len, values)),
                rid,
                *values,
            )
        )

    def many(
        self, epoch: int, v: int, row_ids: Iterable[int], values: Iterable[Sequence[bytes]]
    ) -> list[bytes]:
        """The associated data of many rows sealed under one epoch."""
        mid = self._head + _EPOCH_V.pack(epoch, v) + self._tags
        lengths, join = self._lengths, b"".join
        out = []
        for row_id, vals in zip(row_ids, values, strict=True):
            rid = b"%d" % row_id
            out.append(join((mid, lengths(len(rid), *map(len, vals)), rid, *vals)))
        return out


# --- padding -----------------------------------------------------------------------------------


def padded_length(n: int) -> int:
    """Padmé (Nikitin et al. 2019): round ``n`` up so only O(log log n) bits of it show."""
    if n <= MIN_PADDED:
        return MIN_PADDED
    e = n.bit_length() - 1
    mask = (1 << (e - e.bit_length())) - 1
    return (n + mask) & ~mask


def pad(data: bytes) -> bytes:
    """Frame ``data`` as ``len (u32) || data || zeros`` up to its padded length."""
    n = len(data)
    return b"".join((_U32.pack(n), data, bytes(padded_length(n + 4) - n - 4)))


def unpad(buf: bytes) -> bytes:
    """Inverse of :func:`pad` (only ever called on authenticated plaintext)."""
    (n,) = _U32.unpack_from(buf)
    if n > len(buf) - 4:
        raise ValueError("padded plaintext shorter than its declared length")
    return buf[4 : 4 + n]


# --- batched AEAD ------------------------------------------------------------------------------


def random_nonces(count: int) -> list[bytes]:
    """``count`` random 96-bit nonces drawn with one ``os.urandom`` call."""
    pool = os.urandom(NONCE_BYTES * count)
    return [pool[i : i + NONCE_BYTES] for i in range(0, len(pool), NONCE_BYTES)]


def seal_batch(
    aead: AESGCM,
    plaintexts: Sequence[bytes],
    aads: Sequence[bytes],
    nonces: Sequence[bytes] | None = None,
    *,
    padded: bool = False,
) -> list[tuple[bytes, bytes]]:
    """Pad and encrypt many plaintexts under one key; returns ``(nonce, ciphertext)`` pairs.

    ``padded=True``: the plaintexts are already framed by :func:`pad` (or built the same way).
    ``nonces`` is a seam for known-answer tests; production callers leave it ``None``.
    """
    if nonces is None:
        nonces = random_nonces(len(plaintexts))
    enc = aead.encrypt
    if not padded:
        plaintexts = [pad(p) for p in plaintexts]
    return [(n, enc(n, p, a)) for n, p, a in zip(nonces, plaintexts, aads, strict=True)]


def open_blob(aead: AESGCM, blob: bytes, ad: bytes) -> bytes:
    """Decrypt a :class:`Sealed` blob (still padded); raises :class:`InvalidTag`."""
    return aead.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], ad)


# --- the key ring ------------------------------------------------------------------------------


class KeyRing:
    """The KEK of a store and the data keys it has unwrapped so far.

    Args:
        store_id: The store's id (bound into every wrapping and the check value).
        kek_id: The id of this KEK (recorded next to each DEK it wraps).
        kek: The 32-byte key-encryption key.
    """

    def __init__(self, store_id: str, kek_id: str, kek: bytes) -> None:
        if len(kek) != KEY_BYTES:
            raise WrongKey(f"a key-encryption key must be {KEY_BYTES} bytes")
        self.store_id = store_id
        self.kek_id = kek_id
        self._kek = AESGCM(kek)
        self._deks: dict[int, AESGCM] = {}

    def _ad(self, purpose: bytes, *extra: FieldValue) -> bytes:
        parts = [purpose, _lp(self.store_id.encode()), _lp(self.kek_id.encode())]
        for value in extra:
            tag, data = encode_value(value)
            parts += (tag, _lp(data))
        return b"".join(parts)

    def check_value(self) -> tuple[bytes, bytes]:
        """An authenticated ``(nonce, ciphertext)`` that only this KEK opens."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._kek.encrypt(nonce, _CHECK_PLAINTEXT, self._ad(b"kek-check"))

    def verify_check(self, nonce: bytes, ciphertext: bytes) -> None:
        """Raise :class:`WrongKey` unless this KEK made the check value."""
        try:
            ok = self._kek.decrypt(nonce, ciphertext, self._ad(b"kek-check")) == _CHECK_PLAINTEXT
        except (InvalidTag, ValueError, TypeError):
            ok = False
        if not ok:
            raise WrongKey(
                "wrong key: this passphrase (or key) does not open the store; nothing was read. "
                "Check the passphrase, key file or keyring entry and try again"
            )

    def wrap(self, epoch: int, domain: str, dek: bytes) -> tuple[bytes, bytes]:
        """Encrypt a DEK under the KEK, bound to its epoch and domain."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._kek.encrypt(nonce, dek, self._ad(b"dek", epoch, domain))

    def unwrap(self, epoch: int, domain: str, nonce: bytes, wrapped: bytes) -> bytes:
        """Decrypt a wrapped DEK; :class:`TamperDetected` if it was modified or moved."""
        try:
            dek = self._kek.decrypt(nonce, wrapped, self._ad(b"dek", epoch, domain))
        except (InvalidTag, ValueError, TypeError):
            raise TamperDetected(
                f"the wrapped data key of key epoch {epoch} failed authentication: the key "
                "table was modified; records sealed under that epoch cannot be opened. "
                "Restore store.db from a backup"
            ) from None
        if len(dek) != KEY_BYTES:
            raise TamperDetected(f"the data key of key epoch {epoch} has a wrong length")
        return dek

    def add(self, epoch: int, dek: bytes) -> AESGCM:
        """Cache an unwrapped DEK; returns its AESGCM object."""
        aead = self._deks[epoch] = AESGCM(dek)
        return aead

    def get(self, epoch: int) -> AESGCM | None:
        """The cached AESGCM object of an epoch, or ``None`` if not unwrapped yet."""
        return self._deks.get(epoch)

    def drop(self, epoch: int) -> None:
        """Forget a DEK (after crypto-shredding its epoch)."""
        self._deks.pop(epoch, None)

    def adopt(self, other: KeyRing) -> None:
        """Take over another ring's unwrapped DEKs (after a KEK rotation)."""
        self._deks.update(other._deks)


def tamper_error(table: str, row_id: int | str) -> TamperDetected:
    """The error for a row that fails authentication."""
    if table == "records":
        return TamperDetected(
            f"record {row_id} failed authentication: it was modified, or moved from another "
            "row or store. Other records are unaffected; run `personal verify` to list every "
            "bad record, then restore them from a backup or erase them"
        )
    return TamperDetected(
        f"{table} row {row_id} failed authentication: it was modified, or moved from another "
        "row or store. Run `personal verify` to list every bad row; `personal repair` "
        "rebuilds derived state (replay buffer, EWC state, round bookkeeping) without "
        "touching records or the ledger; anything else needs a backup"
    )


def in_context(exc: StoreError, table: str, row_id: int | str) -> StoreError:
    """The same error, its message prefixed with the row it concerns."""
    what = "record" if table == "records" else f"{table} row"
    if isinstance(exc, TamperDetected):
        return TamperDetected(f"{what} {row_id} failed authentication: {exc}")
    return type(exc)(f"{what} {row_id}: {exc}")


def new_dek() -> bytes:
    """A fresh random AES-256 data key."""
    return AESGCM.generate_key(bit_length=256)


__all__ = [
    "AAD_VERSION",
    "InvalidTag",
    "KeyRing",
    "RowAad",
    "Sealed",
    "aad",
    "aad_prefix",
    "in_context",
    "make_blob",
    "new_dek",
    "open_blob",
    "pad",
    "seal_batch",
    "tamper_error",
    "unpad",
]
