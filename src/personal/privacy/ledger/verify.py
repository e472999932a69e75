"""Full verification of a privacy ledger (:meth:`Ledger.verify`) and re-anchoring.

Verification trusts nothing cached: it recomputes every link and hash, authenticates every
sealed body, checks every charge entry's unit digest, replays every charge through the filter
rule the contract binds (Rényi or Gaussian, :mod:`personal.privacy.rules`) at the budget recorded
with it (no unit may ever have been charged past it), rebuilds the per-unit table from the chain
alone, checks every round against the lifetime contract the genesis binds (its ε, δ, accountant,
unit of privacy and filter rule; a contract may not change once a round is recorded), checks
every unit against that budget, and compares the chain head with the anchor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from personal.errors import LedgerIntegrityError, PrivacyParameterError
from personal.privacy.contract import DEFAULTS, Contract, bound_fields, complete, misfits
from personal.privacy.ledger import anchor as anc
from personal.privacy.ledger.chain import (
    MIGRATIONS,
    LedgerHead,
    Row,
    UnitTable,
    charge_of,
    check_chain,
    damaged,
    units_digest,
    units_of,
)
from personal.privacy.rules import rule_of

import numpy as np

if TYPE_CHECKING:
    from personal.privacy.ledger.core import Ledger

_TOL = 1e-9  # relative slack for float sums when re-checking budgets


@dataclass(frozen=True)
class LedgerReport:
    """What :meth:`Ledger.verify` found.

    Attributes:
        ok: No problem found (``problems`` is empty).
        problems: Everything wrong, each a sentence saying what and where.
        entries: Entries in the database's chain.
        rounds: Rounds recorded (charged and uncharged).
        units: Units ever charged.
        max_epsilon: Largest per-unit filter-ε (rebuilt from the chain).
        head: The database's chain head (``None`` if it has no entry).
        anchor: The head the anchor names (``None`` if missing or unusable).
        repairs: What verification fixed (unit cache rebuilt, anchor lag of one re-anchored).
        notes: Facts a reviewer must see (re-anchoring by an admin, interrupted rounds).
        contract: The lifetime contract the chain binds (``epsilon``, ``delta``, ``unit``,
            ``accountant``, ``filter`` when stated), as replayed from its genesis and
            ``contract`` entries.
    """

    ok: bool
    problems: list[str]
    entries: int
    rounds: int
    units: int
    max_epsilon: float
    head: LedgerHead | None
    anchor: LedgerHead | None
    repairs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    contract: dict[str, Any] = field(default_factory=dict)


class _Replay:
    """Replays decoded entries in order, checking each and rebuilding the unit table."""

    def __init__(self) -> None:
        self.table = UnitTable()
        self.rounds: dict[int, str] = {}  # round id -> "charged" | "finished" | "uncharged"
        self.last_round = 0
        self.notes: list[str] = []
        self.bound: dict[str, Any] = {}  # the lifetime contract so far
        self.spent = False  # a round was recorded: the contract is fixed from here on

    def entry(self, row: Row, body: Mapping[str, Any]) -> list[str]:
        where = f"entry {row.seq} ({row.kind})"
        if (row.seq == 1) != (row.kind == "genesis"):
            return [f"{where}: the genesis entry must be entry 1 and only entry 1"]
        if row.kind in ("genesis", "contract"):
            return self._contract(body, where)
        if row.kind in ("charge", "uncharged"):
            if row.round_id is None or row.round_id <= self.last_round:
                return [f"{where}: round id {row.round_id} is not the next round"]
            self.last_round = row.round_id
            self.spent = True
            if not body.get("policy_digest"):
                self.notes.append(f"round {row.round_id} records no policy digest")
        if row.kind == "charge":
            return self._charge(row, body, where)
        if row.kind == "uncharged":
            self.rounds[row.round_id or 0] = "uncharged"
            ok = isinstance(body.get("reason"), str) and body["reason"].strip()
            return [] if ok and body.get("unit_count") == 0 else [f"{where}: malformed"]
        if row.kind == "finish":
            if self.rounds.get(row.round_id or 0) != "charged":
                return [f"{where}: finishes round {row.round_id}, which is not open"]
            self.rounds[row.round_id or 0] = "finished"
            ok = body.get("status") in ("completed", "aborted")
            return [] if ok else [f"{where}: unknown status {body.get('status')!r}"]
        if row.kind == "reanchor":
            self.notes.append(
                f"entry {row.seq}: re-anchored by an admin at {row.created_at} (reason: "
                f"{body.get('reason')!r}; the previous anchor was {body.get('previous_anchor')}):"
                " charges recorded only in a lost newer copy of the database may be missing"
            )
        return []

    def _contract(self, body: Mapping[str, Any], where: str) -> list[str]:
        new = bound_fields(body)
        # A contract that does not state its filter rule bound the Rényi filter.
        prior = {"filter": DEFAULTS["filter"], **self.bound} if self.bound else {}
        changed = [k for k in new if k in prior and new[k] != prior[k]]
        self.bound.update(new)
        try:
            if complete(self.bound):
                Contract.from_fields(self.bound)
        except PrivacyParameterError as exc:
            return [f"{where}: malformed lifetime contract ({exc})"]
        if changed and self.spent:
            return [
                f"{where}: changes the lifetime contract ({', '.join(changed)}) after rounds "
                "were recorded under it"
            ]
        return []

    def _against_contract(self, row: Row, body: Mapping[str, Any], where: str) -> list[str]:
        """A charge's recorded budget, accountant, filter rule and unit ids must be the
        contract's (a charge that names no rule was admitted by the Rényi filter)."""
        problems, b = [], self.bound
        if (float(body["epsilon"]), float(body["delta"])) != (b["epsilon"], b["delta"]):
            problems.append(
                f"{where}: round {row.round_id} was charged under ε={body['epsilon']}, "
                f"δ={body['delta']}, not the ledger's lifetime contract (ε={b['epsilon']}, "
                f"δ={b['delta']})"
            )
        if "accountant" in b and body.get("accountant") != b["accountant"]:
            problems.append(
                f"{where}: round {row.round_id} names the {body.get('accountant')!r} "
                f"accountant, not the contract's {b['accountant']!r}"
            )
        bound_rule = b.get("filter", DEFAULTS["filter"])
        if body.get("filter", "renyi") != bound_rule:
            problems.append(
                f"{where}: round {row.round_id} was admitted by the "
                f"{body.get('filter', 'renyi')!r} filter rule, not the contract's {bound_rule!r}"
            )
        bad = misfits(b.get("unit", "interaction"), body.get("units", ()))
        if bad:
            problems.append(
                f"{where}: round {row.round_id} charged {len(bad)} unit(s) (e.g. {bad[0]!r}) "
                f"that are not a {b.get('unit')} unit: the audit's unit of privacy would be false"
            )
        return problems

    def _charge(self, row: Row, body: Mapping[str, Any], where: str) -> list[str]:
        try:
            rule = rule_of(self.bound.get("filter", DEFAULTS["filter"]))
            step = rule.charge_curve(charge_of(body, row.seq))
            units = units_of(body, row.seq)
            eps = float(self.bound.get("epsilon", body["epsilon"]))
            delta = float(self.bound.get("delta", body["delta"]))
            budget_ok = rule.epsilon(self.table.current(units) + step, delta=delta)
            problems = self._against_contract(row, body, where) if "epsilon" in self.bound else []
        except (LedgerIntegrityError, PrivacyParameterError, KeyError, TypeError, ValueError):
            return [f"{where}: malformed charge entry"]
        if body.get("units_digest") != units_digest(units) or body.get("unit_count") != len(units):
            problems.append(f"{where}: its unit digest or count does not match its unit list")
        over = int((np.atleast_1d(budget_ok) > eps * (1 + _TOL)).sum())
        if over:
            problems.append(
                f"{where}: round {row.round_id} charged {over} unit(s) past the lifetime budget "
                f"in force (ε={eps}, δ={delta})"
            )
        self.table.add(units, step)
        self.rounds[row.round_id or 0] = "charged"
        return problems


def verify_ledger(ledger: Ledger) -> LedgerReport:
    """See :meth:`Ledger.verify`."""
    rows = ledger.read_rows()
    problems = check_chain(rows, ledger.genesis)
    if not rows:
        problems.append("the ledger has no entries: every entry was deleted")
    replay = _Replay()
    for row in rows:
        try:
            body = ledger.body(row)
        except LedgerIntegrityError as exc:
            problems.append(str(exc))
            continue
        problems += replay.entry(row, body)
    head = LedgerHead(rows[-1].seq, rows[-1].entry_hash.hex()) if rows else None
    anchored, lag = None, 0
    if head is not None:
        try:
            anchored, lag = ledger.compare_anchor(head)
        except LedgerIntegrityError as exc:
            problems.append(str(exc))
    table = replay.table
    contract = _replayed_contract(ledger, replay.bound)
    eps: list[float] = []
    if table.index and contract is not None:
        rule = rule_of(contract.filter)
        eps = np.atleast_1d(rule.epsilon(table.rdp, delta=contract.delta)).tolist()
    over = sum(e > contract.epsilon * (1 + _TOL) for e in eps) if contract is not None else 0
    if over and contract is not None:
        problems.append(
            f"{over} unit(s) exceed the lifetime budget ε={contract.epsilon} at "
            f"δ={contract.delta} "
            f"(max ε={max(eps):.6g})"
        )
    running = [r for r, state in replay.rounds.items() if state == "charged"]
    if running:
        replay.notes.append(f"rounds charged but not finished (running or interrupted): {running}")
    repairs = [] if problems or head is None else _repair(ledger, rows, head, lag, table)
    return LedgerReport(
        ok=not problems,
        problems=problems,
        entries=len(rows),
        rounds=len(replay.rounds),
        units=len(table.index),
        max_epsilon=float(max(eps, default=0.0)),
        head=head,
        anchor=anchored,
        repairs=repairs,
        notes=replay.notes,
        contract=dict(replay.bound),
    )


def _replayed_contract(ledger: Ledger, bound: Mapping[str, Any]) -> Contract | None:
    """The contract as replayed from the chain, else the loaded ledger's; ``None`` when neither
    is known (a damaged genesis of a ledger that could not load: already a problem)."""
    for fields in (bound, ledger._bound):
        try:
            return Contract.from_fields(fields)
        except PrivacyParameterError:
            continue
    return None


def _same(a: UnitTable, b: UnitTable) -> bool:
    if set(a.index) != set(b.index):
        return False
    units = tuple(b.index)
    return bool(np.allclose(a.current(units), b.rdp, rtol=_TOL, atol=1e-12))


def _repair(
    ledger: Ledger, rows: list[Row], head: LedgerHead, lag: int, table: UnitTable
) -> list[str]:
    repairs = []
    if not _same(ledger.load_table(rows), table):
        with ledger.store.atomic():
            if ledger.db_head() == head:
                ledger.save_table(head.seq, bytes.fromhex(head.hash), table)
                repairs.append("the per-unit RDP cache differed from the chain: rebuilt from it")
    if lag:
        ledger.anchor_head(head)
        repairs.append("the anchor was one entry behind (a crash after a commit): re-anchored")
    ledger._replace_state(head, table)
    return repairs


def reanchor(ledger: Ledger, reason: str) -> LedgerHead:
    """See :meth:`Ledger.reanchor`."""
    if not isinstance(reason, str) or not reason.strip():
        raise PrivacyParameterError("reanchor needs a reason (it is recorded in the ledger).")
    store = ledger.store
    store.apply_migrations(MIGRATIONS)
    rows = ledger.read_rows()
    problems = check_chain(rows, ledger.genesis)
    if problems:
        raise LedgerIntegrityError(damaged(problems))
    for row in rows:
        ledger.body(row)  # every entry must authenticate under this key
    try:
        found = anc.read_head(store, ledger.anchor)
        previous = "missing" if found is None else f"at entry {found.seq}"
    except LedgerIntegrityError as exc:
        previous = f"unusable ({exc})"
    head = LedgerHead(rows[-1].seq, rows[-1].entry_hash.hex()) if rows else ledger.head
    body = {"reason": reason, "previous_anchor": previous, "database_head": head.seq}
    with store.atomic():
        if ledger.db_head() != head:
            raise LedgerIntegrityError("the ledger changed during reanchor: run it again")
        ledger._replace_state(head, UnitTable())
        if not rows:  # a ledger-less database restored under an anchor: start a new chain
            head, _ = ledger.append("genesis", None, {"format": 1, "reanchored": reason})
            ledger._replace_state(head, UnitTable())
        head, data = ledger.append("reanchor", None, body)
    anc.write_head(store, ledger.anchor, head, data, force=True)
    return head
