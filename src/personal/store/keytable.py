"""The key hierarchy as stored: one KEK record and the wrapped data keys (DEKs) of every epoch.

``store_kek`` holds the single active KEK's *non-secret* record: provider kind, provider
parameters (scrypt salt and cost, keyring entry name) and an authenticated check value.
``store_dek`` holds one row per key epoch: its domain (the data-key family, usually a table),
the DEK wrapped under the KEK with AES-GCM (bound to store, KEK id, epoch and domain), how many
encryptions it has done, and its state:

``current``  the epoch new rows of the domain are sealed under (at most one per domain);
``closed``   retired for new writes (count limit, age limit or key rotation), still readable;
``shredded`` its wrapped key was destroyed (crypto-shredding): its rows can never be opened.

Keeping all of this in the database makes a KEK rotation one SQLite transaction.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from personal.errors import (
    KeyProviderError,
    RecordNotFound,
    StoreCorrupt,
    TamperDetected,
    WrongKey,
)
from personal.store import db as dbm
from personal.store.crypto import KeyRing, new_dek
from personal.store.keys import KeyProvider, KeyringKey

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlite_utils import Database

_ROTATED = (
    "the store's keys were rotated (by another process) after it was opened here: "
    "reopen the store with the new key"
)


class KeyTable:
    """Reads and writes the key tables of one open store.

    Args:
        db: The store's database.
        ring: The verified key ring (KEK + cache of unwrapped DEKs).
        max_encryptions: Encryptions per DEK before a new epoch starts.
        epoch_period: DEK age after which new writes start a new epoch (``None``: never).
    """

    def __init__(
        self,
        db: Database,
        ring: KeyRing,
        *,
        max_encryptions: int,
        epoch_period: timedelta | None,
    ) -> None:
        if max_encryptions < 1 or max_encryptions > 1 << 32:
            raise ValueError("max_encryptions must be between 1 and 2**32 (NIST SP 800-38D)")
        self.db = db
        self.ring = ring
        self.max_encryptions = max_encryptions
        self.epoch_period = epoch_period

    # --- the KEK -------------------------------------------------------------------------------

    @staticmethod
    def new_kek(key: KeyProvider, store_id: str) -> tuple[KeyRing, str, dict[str, Any]]:
        """Make a fresh KEK with ``key``; returns the ring, the provider kind and parameters."""
        kek_id = secrets.token_hex(8)
        kek, params = key.new_kek(f"{store_id}/{kek_id}")
        return KeyRing(store_id, kek_id, kek), key.kind, params

    @staticmethod
    def open_kek(db: Database, key: KeyProvider, store_id: str) -> KeyRing:
        """Derive the KEK with ``key`` and verify it: :class:`WrongKey` if it does not fit."""
        # CAST: a value stored with another type (TEXT that is not UTF-8) must not stop the
        # driver; a check value that is not a BLOB is damage, not a wrong key.
        rows = db.execute(
            "SELECT id, kind, params, CAST(check_nonce AS BLOB), CAST(check_ct AS BLOB),"
            " typeof(check_nonce) = 'blob' AND typeof(check_ct) = 'blob' FROM store_kek"
        ).fetchall()
        if len(rows) != 1:
            raise StoreCorrupt(
                f"the store's key record is missing or ambiguous ({len(rows)} rows): "
                "restore store.db from a backup"
            )
        kek_id, kind, params_json, check_nonce, check_ct, blobs = rows[0]
        if not blobs:
            raise StoreCorrupt(
                "the store's key check value is damaged (not stored as bytes), so no key can "
                "be verified against it: restore store.db from a backup"
            )
        if kind != key.kind:
            raise WrongKey(
                f"wrong kind of key: this store is locked with a {kind} key, not a {key.kind} "
                "key; open it with the kind of key it was created (or last rotated) with"
            )
        try:
            params = json.loads(params_json)
        except (ValueError, TypeError, RecursionError):
            raise StoreCorrupt("the store's key parameters are unreadable") from None
        kek = key.derive_kek(params, f"{store_id}/{kek_id}")
        ring = KeyRing(store_id, kek_id, kek)
        ring.verify_check(check_nonce, check_ct)
        return ring

    def insert_kek(self, ring: KeyRing, kind: str, params: dict[str, Any]) -> None:
        """Record a KEK (inside a transaction)."""
        nonce, check = ring.check_value()
        self.db.execute(
            "INSERT INTO store_kek VALUES (?, ?, ?, ?, ?, ?)",
            [ring.kek_id, kind, json.dumps(params), nonce, check, dbm.utcnow()],
        )

    def kek_kind(self) -> str:
        """The kind of the active KEK's provider (``passphrase``, ``keyring``, ``raw``)."""
        return str(self.db.execute("SELECT kind FROM store_kek").fetchone()[0])

    def rotate(self, new_key: KeyProvider) -> None:
        """Re-wrap every unshredded DEK under a KEK from ``new_key``, in one transaction."""
        old_kind, old_params = self.db.execute("SELECT kind, params FROM store_kek").fetchone()
        if isinstance(new_key, KeyringKey) and old_kind == KeyringKey.kind:
            old = json.loads(old_params)
            if (new_key.service, new_key.username) == (old["service"], old["username"]):
                raise KeyProviderError(
                    "rotating to the keyring entry the store uses now would overwrite its key "
                    "before the rotation commits: leave username unset (one entry per key)"
                )
        ring, kind, params = self.new_kek(new_key, self.ring.store_id)
        old_label = f"{self.ring.store_id}/{self.ring.kek_id}"
        try:
            with dbm.atomic(self.db):
                self._rewrap_all(ring)
                self.db.execute("DELETE FROM store_kek")
                self.insert_kek(ring, kind, params)
                self.db.execute(
                    "UPDATE store_dek SET state = 'closed', closed_at = ? WHERE state = 'current'",
                    [dbm.utcnow()],
                )
        except BaseException:
            new_key.forget(params, f"{self.ring.store_id}/{ring.kek_id}")
            raise
        ring.adopt(self.ring)
        self.ring = ring
        if old_kind == KeyringKey.kind:
            KeyringKey().forget(json.loads(old_params), old_label)

    def _rewrap_all(self, ring: KeyRing) -> None:
        rows = self.db.execute(
            "SELECT epoch, domain, kek_id, nonce, wrapped FROM store_dek WHERE state != 'shredded'"
        ).fetchall()
        for epoch, domain, kek_id, nonce, wrapped in rows:
            if kek_id != self.ring.kek_id:
                raise WrongKey(_ROTATED)
            dek = self.ring.unwrap(epoch, domain, nonce, wrapped)
            new_nonce, new_wrapped = ring.wrap(epoch, domain, dek)
            self.db.execute(
                "UPDATE store_dek SET kek_id = ?, nonce = ?, wrapped = ? WHERE epoch = ?",
                [ring.kek_id, new_nonce, new_wrapped, epoch],
            )

    # --- data keys -----------------------------------------------------------------------------

    def reserve(self, domain: str, wanted: int) -> tuple[int, AESGCM, int]:
        """Charge up to ``wanted`` encryptions to the current DEK of ``domain`` (in a txn).

        Starts a new epoch when there is none, the current one is used up, or it is older than
        ``epoch_period``. Returns ``(epoch, aead, granted)`` with ``1 <= granted <= wanted``.
        """
        now = datetime.now(UTC)
        row = self.db.execute(
            "SELECT epoch, encryptions, created_at FROM store_dek "
            "WHERE domain = ? AND state = 'current'",
            [domain],
        ).fetchone()
        if row is not None and self._retire(row[1], row[2], now):
            self.db.execute(
                "UPDATE store_dek SET state = 'closed', closed_at = ? WHERE epoch = ?",
                [dbm.format_ts(now), row[0]],
            )
            row = None
        epoch, used = (row[0], row[1]) if row else (self._new_epoch(domain, now), 0)
        granted = min(wanted, self.max_encryptions - used)
        self.db.execute(
            "UPDATE store_dek SET encryptions = encryptions + ?, last_used_at = ? WHERE epoch = ?",
            [granted, dbm.format_ts(now), epoch],
        )
        return epoch, self.aead(epoch), granted

    def _retire(self, used: int, created_at: str, now: datetime) -> bool:
        if used >= self.max_encryptions:
            return True
        return self.epoch_period is not None and created_at < dbm.format_ts(now - self.epoch_period)

    def _new_epoch(self, domain: str, now: datetime) -> int:
        stamp = dbm.format_ts(now)
        cur = self.db.execute(
            "INSERT INTO store_dek (domain, state, created_at, last_used_at) "
            "VALUES (?, 'current', ?, ?)",
            [domain, stamp, stamp],
        )
        epoch = int(cur.lastrowid or 0)
        dek = new_dek()
        nonce, wrapped = self.ring.wrap(epoch, domain, dek)
        self.db.execute(
            "UPDATE store_dek SET kek_id = ?, nonce = ?, wrapped = ? WHERE epoch = ?",
            [self.ring.kek_id, nonce, wrapped, epoch],
        )
        self.ring.add(epoch, dek)
        return epoch

    def aead(self, epoch: int) -> AESGCM:
        """The AESGCM object of ``epoch``, unwrapping its DEK on first use."""
        cached = self.ring.get(epoch)
        if cached is not None:
            return cached
        row = self.db.execute(
            "SELECT domain, state, kek_id, nonce, wrapped FROM store_dek WHERE epoch = ?",
            [epoch],
        ).fetchone()
        if row is None:
            raise TamperDetected(f"it refers to key epoch {epoch!r}, which does not exist")
        domain, state, kek_id, nonce, wrapped = row
        if state == "shredded":
            raise RecordNotFound(f"key epoch {epoch} was crypto-shredded: its rows are erased")
        if kek_id != self.ring.kek_id:
            raise WrongKey(_ROTATED)
        return self.ring.add(epoch, self.ring.unwrap(epoch, domain, nonce, wrapped))

    def shred(self, domain: str, epochs: list[int] | tuple[int, ...] | Any) -> list[int]:
        """Destroy the wrapped DEKs of ``epochs`` of ``domain`` (inside a transaction)."""
        wanted = json.dumps([int(e) for e in epochs])
        found = [
            r[0]
            for r in self.db.execute(
                "SELECT epoch FROM store_dek WHERE domain = ? AND state != 'shredded' "
                "AND epoch IN (SELECT value FROM json_each(?)) ORDER BY epoch",
                [domain, wanted],
            )
        ]
        self.db.execute(
            "UPDATE store_dek SET state = 'shredded', kek_id = NULL, nonce = NULL, "
            "wrapped = NULL, shredded_at = ? WHERE epoch IN (SELECT value FROM json_each(?))",
            [dbm.utcnow(), json.dumps(found)],
        )
        for epoch in found:
            self.ring.drop(epoch)
        return found

    def used_before(self, domain: str, before: str) -> list[int]:
        """Unshredded epochs of ``domain`` last used before the timestamp ``before``."""
        rows = self.db.execute(
            "SELECT epoch FROM store_dek WHERE domain = ? AND state != 'shredded' "
            "AND last_used_at < ? ORDER BY epoch",
            [domain, before],
        )
        return [r[0] for r in rows]

    def epochs(self, domain: str | None = None) -> list[dict[str, Any]]:
        """Non-secret facts about every epoch (for stats and audits)."""
        sql = (
            "SELECT epoch, domain, state, encryptions, created_at, last_used_at, closed_at, "
            "shredded_at FROM store_dek"
        )
        args: list[Any] = []
        if domain is not None:
            sql += " WHERE domain = ?"
            args.append(domain)
        cur = self.db.execute(sql + " ORDER BY epoch", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
