"""The encrypted interaction store.

Public surface::

    InteractionLog, Interaction, Record       the log apps write and training reads
    Store                                     the sealed SQLite store other components share
    Passphrase, KeyringKey, RawKey, ScryptParams, KeyProvider    where the KEK comes from
    Migrations                                versioned schema steps of a component

See ``docs/store.md`` (how to use it) and ``docs/privacy.md`` (what it protects, and how).
"""

from __future__ import annotations

from personal.store.core import Store
from personal.store.crypto import Sealed
from personal.store.db import Migrations
from personal.store.erasure import EraseReport
from personal.store.keys import KeyProvider, KeyringKey, Passphrase, RawKey, ScryptParams
from personal.store.log import InteractionLog
from personal.store.records import Interaction, Record
from personal.store.stats import LogStats, UnitSummary
from personal.store.verify import BadRecord, VerifyReport

__all__ = [
    "BadRecord",
    "EraseReport",
    "Interaction",
    "InteractionLog",
    "KeyProvider",
    "KeyringKey",
    "LogStats",
    "Migrations",
    "Passphrase",
    "RawKey",
    "Record",
    "ScryptParams",
    "Sealed",
    "Store",
    "UnitSummary",
    "VerifyReport",
]
