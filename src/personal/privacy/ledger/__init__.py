"""The per-unit privacy ledger: a privacy filter persisted as a sealed, hash-chained, anchored log.

Import the ledger from here (``from personal.privacy.ledger import Ledger``). One module per job:

* :mod:`~personal.privacy.ledger.core` -- :class:`Ledger`: opening it, admitting, charging and
  finishing rounds, per-unit ε (the only API the training round and the audit use);
* :mod:`~personal.privacy.ledger.journal` -- reading, checking and appending sealed entries in
  the store (the storage half :class:`Ledger` builds on);
* :mod:`~personal.privacy.ledger.chain` -- the on-disk format: tables, entries, the hash chain
  and the per-unit snapshot (pure encoding and hashing);
* :mod:`~personal.privacy.ledger.anchor` -- the chain head kept outside the database, which
  detects a restored older copy;
* :mod:`~personal.privacy.ledger.verify` -- full verification from the chain alone, and
  re-anchoring.

The maths the ledger applies (filter rules, RDP, GDP) and the lifetime contract it binds stay in
:mod:`personal.privacy` (``rules``, ``rdp``, ``gdp``, ``contract``): they are used without a
ledger too. The reviewer's description: docs/privacy.md ("Ledger").
"""

from __future__ import annotations

from personal.privacy.ledger.chain import LedgerRound
from personal.privacy.ledger.core import STATUSES, Ledger, store_unit
from personal.privacy.ledger.verify import LedgerReport

__all__ = ["STATUSES", "Ledger", "LedgerReport", "LedgerRound", "store_unit"]
