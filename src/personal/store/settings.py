"""Small sealed key-value settings of a store (its policy, what base it trains on, ...).

Components that must agree across processes and sessions about how a store is used -- the
policy whose budget the ledger enforces, the base model the adapters belong to -- keep that here.
Values are JSON, sealed with AES-GCM like every other row: the row id is the setting's name, so
a value moved to another name fails to open.
"""

from __future__ import annotations

import json
from typing import Any

from personal.errors import StoreCorrupt
from personal.store.core import Store
from personal.store.crypto import Sealed
from personal.store.db import Migrations

TABLE = "store_settings"
migrations = Migrations("settings")


@migrations(1)
def _create(db: Any) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} (name TEXT PRIMARY KEY, key_epoch INTEGER NOT NULL, "
        "sealed BLOB NOT NULL)"
    )


class StoreSettings:
    """Sealed JSON settings of one open :class:`~personal.store.Store`.

    Example::

        settings = StoreSettings(store)
        settings.set("policy", policy.to_dict())
        settings.get("policy")          # the dict back, or None when never set
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        store.apply_migrations(migrations)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of ``name`` (``default`` when unset); :class:`TamperDetected` if altered."""
        row = self.store.db.execute(
            f"SELECT key_epoch, sealed FROM {TABLE} WHERE name = ?", [name]
        ).fetchone()
        if row is None:
            return default
        plaintext = self.store.open_sealed(TABLE, name, (), Sealed(int(row[0]), bytes(row[1])))
        try:
            return json.loads(plaintext)
        except ValueError as exc:  # authenticated, so only a bug could get here
            raise StoreCorrupt(f"setting {name!r} is not valid JSON: {exc}") from None

    def set(self, name: str, value: Any) -> None:
        """Store ``value`` (JSON-serialisable) under ``name``, replacing any previous value."""
        plaintext = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        with self.store.atomic() as db:
            sealed = self.store.seal(TABLE, name, (), plaintext)
            db.execute(
                f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?)",
                [name, sealed.epoch, sealed.blob],
            )

    def names(self) -> list[str]:
        """The names that have a value, sorted."""
        rows = self.store.db.execute(f"SELECT name FROM {TABLE} ORDER BY name").fetchall()
        return [r[0] for r in rows]


def sealed_policy_contract(store: Store) -> dict[str, Any]:
    """The lifetime-contract fields (``epsilon``, ``delta``, ``unit``, ``accountant``) of the
    store's sealed ``policy`` setting; ``{}`` when there is none.

    Only a ledger written before the contract was bound into it reads this (once, to complete
    its genesis): the ledger, not this row, is what binds a store.
    """
    recorded = StoreSettings(store).get("policy")
    privacy = recorded.get("privacy") if isinstance(recorded, dict) else None
    if not isinstance(privacy, dict):
        return {}
    names = {
        "lifetime_epsilon": "epsilon",
        "delta": "delta",
        "unit": "unit",
        "accountant": "accountant",
    }
    return {new: privacy[old] for old, new in names.items() if privacy.get(old) is not None}
