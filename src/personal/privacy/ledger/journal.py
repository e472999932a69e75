"""The ledger's journal: reading, checking and appending sealed chain entries in a store.

:class:`Journal` is the storage half of :class:`personal.privacy.ledger.Ledger`: it keeps the
verified chain head and the per-unit RDP table in memory, catches up with entries other
processes appended, compares the chain with its anchor (repairing a lag of one), and appends
entries under the store's write lock so that the anchor never falls more than one entry behind.
The format is in :mod:`personal.privacy.ledger.chain`, the anchor in
:mod:`personal.privacy.ledger.anchor`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from personal.errors import (
    LedgerIntegrityError,
    LedgerRollback,
    LifetimeContractFixed,
    PrivacyError,
    RecordNotFound,
    StoreError,
    TamperDetected,
    WrongKey,
)
from personal.privacy.contract import DEFAULTS, Contract, bound_fields, complete, fold
from personal.privacy.contract import FORMAT as CONTRACT_FORMAT
from personal.privacy.ledger import anchor as anc
from personal.privacy.ledger.chain import (
    DOMAIN,
    ENTRIES,
    READ_COLUMNS,
    ROW_COLUMNS,
    STATE,
    LedgerEntry,
    LedgerHead,
    Row,
    UnitTable,
    charge_of,
    check_chain,
    damaged,
    decode_body,
    encode_body,
    entry_fields,
    entry_hash,
    genesis_hash,
    units_of,
)
from personal.privacy.rules import rule_of
from personal.store import Store
from personal.store.crypto import Sealed
from personal.store.db import utcnow
from personal.store.settings import sealed_policy_contract

Build = Callable[[], tuple[str, int | None, dict[str, Any], UnitTable | None]]


class Journal:
    """The chain of one store's ledger, as verified so far.

    Args:
        store: The open store.
        anchor: Where the chain head is anchored outside the database.
    """

    def __init__(self, store: Store, anchor: anc.FileAnchor) -> None:
        self.store = store
        self.anchor = anchor
        self.genesis = genesis_hash(store.store_id)
        self._head = LedgerHead(0, self.genesis.hex())
        self._table = UnitTable()
        self._bound: dict[str, Any] = {}  # the contract fields the chain binds so far
        self._spent = False  # whether any round (charged or not) is recorded

    @property
    def head(self) -> LedgerHead:
        """The verified chain head ``(seq, hash hex)``, after catching up with other writers."""
        self._refresh()
        return self._head

    def read_rows(self) -> list[Row]:
        """Every stored entry row, in chain order (nothing decrypted)."""
        cur = self.store.db.execute(f"SELECT {READ_COLUMNS} FROM {ENTRIES} ORDER BY seq")
        return [Row(*r) for r in cur.fetchall()]

    def load(self) -> None:
        """Read and check the whole chain, compare it with the anchor, load the unit table."""
        rows = self.read_rows()
        problems = check_chain(rows, self.genesis)
        if problems or not rows:
            raise LedgerIntegrityError(damaged(problems or ["every entry was deleted"]))
        head = LedgerHead(rows[-1].seq, rows[-1].entry_hash.hex())
        _, lag = self.compare_anchor(head)
        if lag:
            self.body(rows[-1])  # authenticate the entry the anchor does not cover yet
        self._bound = fold(self.body(r) for r in rows if r.kind in ("genesis", "contract"))
        self._table = self.load_table(rows)
        self._spent = any(r.kind in ("charge", "uncharged") for r in rows)
        self._head = head
        if lag:
            self.anchor_head(head)

    def hash_at(self, seq: int) -> str | None:
        """Hex hash of the database's entry ``seq`` (``None`` if there is none)."""
        row = self.store.db.execute(
            f"SELECT entry_hash FROM {ENTRIES} WHERE seq = ?", [seq]
        ).fetchone()
        return None if row is None else bytes(row[0]).hex()

    def db_head(self) -> LedgerHead:
        """The last entry in the database (not necessarily verified)."""
        row = self.store.db.execute(
            f"SELECT seq, entry_hash FROM {ENTRIES} ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return LedgerHead(0, self.genesis.hex())
        return LedgerHead(int(row[0]), bytes(row[1]).hex())

    def compare_anchor(self, head: LedgerHead) -> tuple[LedgerHead | None, int]:
        """See :func:`personal.privacy.ledger.anchor.compare`."""
        return anc.compare(self.store, self.anchor, head, self.hash_at)

    def anchor_head(self, head: LedgerHead, *, force: bool = False) -> None:
        """Seal ``head`` and write it to the anchor (never backwards unless ``force``)."""
        with self.store.atomic():
            data = anc.seal_head(self.store, head)
        anc.write_head(self.store, self.anchor, head, data, force=force)

    def append(
        self,
        kind: str,
        round_id: int | None,
        body: Mapping[str, Any],
        table: UnitTable | None = None,
    ) -> tuple[LedgerHead, bytes]:
        """Append one entry after the head (inside ``atomic()``); returns the new head and the
        sealed anchor bytes to write once the transaction has committed."""
        store, prev = self.store, bytes.fromhex(self._head.hash)
        seq, created = self._head.seq + 1, utcnow()
        sealed = store.seal(
            ENTRIES,
            seq,
            entry_fields(kind, round_id, created, prev),
            encode_body(body),
            domain=DOMAIN,
        )
        digest = entry_hash(prev, seq, kind, round_id, created, sealed.epoch, sealed.blob)
        store.db.execute(
            f"INSERT INTO {ENTRIES} ({ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [seq, kind, round_id, created, prev, digest, sealed.epoch, sealed.blob],
        )
        if table is not None:  # the unit table as of this entry, in the same transaction
            self.save_table(seq, digest, table)
        head = LedgerHead(seq, digest.hex())  # adopted by the caller once committed
        return head, anc.seal_head(store, head)

    def save_table(self, seq: int, digest: bytes, table: UnitTable) -> None:
        """Seal the unit-table snapshot, bound to chain entry ``seq`` (inside ``atomic()``)."""
        snap = self.store.seal(STATE, 1, _state_fields(seq, digest), table.encode(), domain=DOMAIN)
        self.store.db.execute(
            f"INSERT OR REPLACE INTO {STATE} VALUES (1, ?, ?, ?, ?)",
            [seq, digest, snap.epoch, snap.blob],
        )

    def body(self, row: Row) -> dict[str, Any]:
        """Authenticate and decode one entry's sealed body."""
        try:
            plain = self.store.open_sealed(ENTRIES, row.seq, row.fields(), Sealed(*row[6:8]))
        except (TamperDetected, RecordNotFound, WrongKey) as exc:
            raise LedgerIntegrityError(
                f"ledger entry {row.seq} failed authentication ({exc}): it was modified or "
                "moved. Training is refused; restore store.db from a backup"
            ) from None
        return decode_body(plain, row.seq)

    def load_table(self, rows: list[Row]) -> UnitTable:
        """The sealed snapshot if it matches the chain, plus the charges appended after it
        (charged under the contract's filter rule, which is fixed once a round is recorded)."""
        rule = rule_of(self._bound.get("filter", DEFAULTS["filter"]))
        table, start = UnitTable(), 0
        snap = self.store.db.execute(
            f"SELECT seq, entry_hash, key_epoch, sealed FROM {STATE} WHERE id = 1"
        ).fetchone()
        if snap and 0 < snap[0] <= len(rows) and rows[snap[0] - 1].entry_hash == snap[1]:
            seq, digest = int(snap[0]), bytes(snap[1])
            try:
                plain = self.store.open_sealed(
                    STATE, 1, _state_fields(seq, digest), Sealed(snap[2], snap[3])
                )
                loaded = UnitTable.decode(plain)
            except (StoreError, PrivacyError, ValueError, KeyError, TypeError, struct.error):
                loaded = None  # a cache: rebuilt from the chain below
            if loaded is not None:
                table, start = loaded, seq
        for row in rows[start:]:
            if row.kind == "charge":
                body = self.body(row)
                table.add(units_of(body, row.seq), rule.charge_curve(charge_of(body, row.seq)))
        return table

    def _transact(self, build: Build) -> int | None:
        """Append the entry ``build()`` describes, under the write lock, then anchor it.

        First the in-memory state catches up with the database and the anchor must name the
        current head (a lag of one is repaired first), so the anchor never falls more than one
        entry behind even if this process dies right after the commit.
        """
        for _ in range(5):
            self._sync()
            with self.store.atomic():
                if (
                    self.db_head() != self._head
                    or anc.read_head(self.store, self.anchor) != self._head
                ):
                    continue  # another process appended meanwhile: catch up and retry
                kind, round_id, body, table = build()
                head, data = self.append(kind, round_id, body, table)
            self._head = head
            if table is not None:
                self._table = table
            if kind in ("genesis", "contract"):
                self._bound.update(bound_fields(body))
            self._spent = self._spent or kind in ("charge", "uncharged")
            anc.write_head(self.store, self.anchor, head, data)
            return round_id
        raise LedgerIntegrityError(
            "the ledger kept changing under this process (another writer?): retry the round"
        )

    @property
    def contract(self) -> Contract:
        """The lifetime contract the chain binds (genesis, or its latest ``contract`` entry)."""
        return Contract.from_fields(self._bound)

    def bind_contract(self, request: Mapping[str, Any]) -> None:
        """Complete a format-1 genesis, then check (or, before any round, replace) the contract.

        Raises:
            LifetimeContractFixed: ``request`` differs and a round is already recorded.
        """
        if not complete(self._bound):
            # An older ledger: ε and δ stay the genesis's; unit and accountant come from the
            # store's sealed policy, else from the caller (docs/privacy.md, "Lifetime contract").
            # Its rounds were admitted by the Rényi filter, the only rule there was then.
            fields = {**DEFAULTS, **request, **sealed_policy_contract(self.store), **self._bound}
            fields["filter"] = self._bound.get("filter", DEFAULTS["filter"])
            self._append_contract(Contract.from_fields(fields), "completes a format-1 genesis")
        changed = self.contract.differences(request)
        if not changed:
            return
        if self._spent:
            raise LifetimeContractFixed(
                f"this store's lifetime contract is fixed in its privacy ledger "
                f"({self.contract.describe()}); the policy asks for {', '.join(changed)}. A "
                "contract cannot change once a round has been recorded under it: use a policy "
                "with the ledger's values (`personal audit` shows them), or a new store"
            )
        new = Contract.from_fields({**self.contract.to_dict(), **request})
        self._append_contract(new, "replaced before the first round (nothing was spent)")

    def _append_contract(self, contract: Contract, reason: str) -> None:
        body = {"format": CONTRACT_FORMAT, **contract.to_dict(), "reason": reason}
        self._transact(lambda: ("contract", None, body, None))

    def _refresh(self) -> None:
        """Catch up with entries appended by other processes (reloading the chain)."""
        if self.db_head() == self._head:
            return
        known = self._head
        self.load()
        if self._head.seq < known.seq or self.hash_at(known.seq) != known.hash:
            raise LedgerRollback(
                f"store.db was replaced while the ledger was open: entry {known.seq}, which it "
                "had verified, is gone or different. Training is refused: put back the latest "
                "store.db"
            )

    def _sync(self) -> None:
        """:meth:`_refresh`, then check the anchor and repair a lag of one."""
        self._refresh()
        if self.compare_anchor(self._head)[1]:
            self.anchor_head(self._head)

    def _next_round(self) -> int:
        (last,) = self.store.db.execute(f"SELECT MAX(round_id) FROM {ENTRIES}").fetchone()
        return int(last or 0) + 1

    def entries(self) -> list[LedgerEntry]:
        """Every entry, decoded (each one authenticated)."""
        self._refresh()
        return [
            LedgerEntry(r.seq, r.kind, r.round_id, r.created_at, r.entry_hash.hex(), self.body(r))
            for r in self.read_rows()
        ]

    def _replace_state(self, head: LedgerHead, table: UnitTable) -> None:
        """Adopt a verified head and unit table (used by verification)."""
        self._head, self._table = head, table


def _state_fields(seq: int, digest: bytes) -> list[tuple[str, int | bytes]]:
    return [("seq", seq), ("entry_hash", digest)]
