"""The per-unit privacy ledger: a privacy filter persisted as a sealed, hash-chained, anchored log.

The filter rule (Rényi or Gaussian-DP, :mod:`personal.privacy.rules`) is the one the lifetime
contract binds (:attr:`Ledger.rule`); every charge, ε and admission goes through it.

One ledger per store. Protocol of a round (the training round and the audit use only this)::

    ledger = Ledger.open(store, Contract.of_policy(policy))   # binds or checks the contract
    selection = ledger.select(charge, log.units())       # pure: excludes units over budget
    round_id = ledger.begin_round(charge, selection.eligible, base_fingerprint=...,
                                  adapter_version=..., policy_digest=..., clip_norm=C,
                                  accountant="rdp")       # CHARGES before anything is released
    ... train on Poisson samples of selection.eligible, release the adapter ...
    ledger.finish_round(round_id, "completed", summary={...})   # or "aborted"

Charges are never refunded. An aborted round stays charged: it may have released noised
gradients, an adapter or a metric before dying, and whether it did cannot be proven afterwards;
a refund would let a crash (or a kill chosen by an attacker) erase privacy loss that happened.
``begin_round`` returns only once the charge is committed *and* anchored, so a round never
touches private data before its charge is durable.

Zero-cost events that must still be on the record (a migration by distillation on public
prompts, which is post-processing) are appended with :meth:`Ledger.record_uncharged`.

Entry format and hash chain: :mod:`personal.privacy.ledger.chain`; the anchor that detects a
restored older database: :mod:`personal.privacy.ledger.anchor`; full verification and
re-anchoring: :mod:`personal.privacy.ledger.verify`; the reviewer's description: docs/privacy.md
("Ledger").
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from personal.errors import (
    BudgetExhausted,
    LedgerIntegrityError,
    LedgerRollback,
    NoEligibleUnits,
    PrivacyParameterError,
    RoundNotOpen,
    UnitOverBudget,
)
from personal.privacy.accountant import check_mechanism
from personal.privacy.contract import DEFAULTS, Contract, check_round
from personal.privacy.contract import FORMAT as CONTRACT_FORMAT
from personal.privacy.filter import PURPOSES, Charge, Selection
from personal.privacy.ledger import anchor as anc
from personal.privacy.ledger.chain import (
    DOMAIN,
    ENTRIES,
    MIGRATIONS,
    LedgerHead,
    LedgerRound,
    UnitId,
    UnitTable,
    check_context,
    check_positive,
    check_units,
    encode_body,
    rounds_of,
    units_digest,
)
from personal.privacy.ledger.journal import Journal
from personal.privacy.ledger.verify import LedgerReport, reanchor, verify_ledger
from personal.privacy.rules import FilterRule, rule_of
from personal.store import Store
from personal.store.settings import sealed_policy_contract

import numpy as np

STATUSES = ("completed", "aborted")


class Ledger(Journal):
    """The privacy ledger of one store. Use :meth:`open`.

    Its lifetime contract (:attr:`contract`: ε, δ, unit of privacy, accountant, filter rule) is
    the one its chain binds, never the caller's: :meth:`open` refuses a different one once a
    round is recorded (:mod:`personal.privacy.contract`).
    """

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        store: Store,
        contract: Contract | None = None,
        *,
        epsilon: float | None = None,
        delta: float | None = None,
        unit: str | None = None,
        accountant: str | None = None,
        filter: str | None = None,
        anchor: anc.FileAnchor | str | Path | None = None,
    ) -> Ledger:
        """Open (creating on first use) the store's ledger and check it against its anchor.

        Args:
            store: The open store.
            contract: The lifetime contract the caller expects (or its fields one by one;
                fields left ``None`` accept what the ledger binds). A new ledger binds it in
                its genesis entry (ε and δ are needed then).
            anchor: Where the anchor lives (default ``STORE/ledger.anchor``).

        Raises:
            LifetimeContractFixed: The ledger binds another contract and has recorded rounds
                (before its first round, the requested contract replaces the old one).
            LedgerIntegrityError: An entry was modified, deleted or reordered.
            LedgerRollback: The database is an older copy than the anchor (training refused).
            LedgerAnchorMissing: The anchor is gone (see :meth:`reanchor`).
        """
        given = {
            "epsilon": epsilon,
            "delta": delta,
            "unit": unit,
            "accountant": accountant,
            "filter": filter,
        }
        request = {
            **(contract.to_dict() if contract is not None else {}),
            **{k: v for k, v in given.items() if v is not None},
        }
        ledger = cls(store, anc.as_anchor(store, anchor))
        if MIGRATIONS.version(store.db) == 0:
            ledger._create(request)
        store.apply_migrations(MIGRATIONS)
        ledger.load()
        ledger.bind_contract(request)
        return ledger

    @staticmethod
    def exists(store: Store) -> bool:
        """Whether the store has a privacy ledger (opening one without a contract needs it)."""
        return MIGRATIONS.version(store.db) > 0

    @property
    def epsilon(self) -> float:
        """The lifetime ε per unit, as the ledger binds it."""
        return self.contract.epsilon

    @property
    def delta(self) -> float:
        """The lifetime δ per unit, as the ledger binds it."""
        return self.contract.delta

    @property
    def rule(self) -> FilterRule:
        """The filter rule the contract binds (``"renyi"`` for every ledger written before
        the rule was part of the contract)."""
        return rule_of(self.contract.filter)

    def _create(self, request: dict[str, Any]) -> None:
        if "epsilon" not in request or "delta" not in request:
            raise PrivacyParameterError(
                "this store has no privacy ledger yet: opening it needs the lifetime contract "
                "(ε and δ at least) to bind into its genesis entry"
            )
        contract = Contract.from_fields(request)
        with self.store.atomic() as db:
            if MIGRATIONS.version(db) > 0:  # another process created it meanwhile
                return
            if self.anchor.read() is not None:
                raise LedgerRollback(
                    f"this database has no privacy ledger, but {self.anchor.path} anchors one: "
                    "store.db is an older copy (a backup from before the first training round "
                    "was restored). Training is refused: put back the latest store.db"
                )
            if self.store.keys.epochs(DOMAIN):  # its data keys outlived its tables
                raise LedgerIntegrityError(
                    "this store had a privacy ledger (its data keys exist) but its tables are "
                    "gone: they were deleted. Training is refused: restore store.db from a backup"
                )
            self.store.apply_migrations(MIGRATIONS)
            body = {"format": CONTRACT_FORMAT, **contract.to_dict()}
            head, data = self.append("genesis", None, body)
        anc.write_head(self.store, self.anchor, head, data)

    # --- the protocol --------------------------------------------------------------------------

    def select(
        self,
        charge: Charge,
        candidate_units: Iterable[UnitId],
        *,
        max_share: float | None = None,
    ) -> Selection:
        """Split candidates into units that can take ``charge`` and units excluded (over budget).

        Pure: nothing is recorded. The decision depends only on past charges and the round's
        public parameters, never on the units' data (the Rényi filter's condition).
        ``max_share``: also exclude units the charge would cost more than that share of their
        remaining budget (a migration retrain).

        Raises:
            NoEligibleUnits: No candidates at all.
            BudgetExhausted: Every candidate is excluded.
            LedgerIntegrityError: The ledger was tampered with or rolled back.
        """
        units = check_units(candidate_units)
        if not units:
            raise NoEligibleUnits(
                "no candidate units: the store holds no interactions (matching the round's "
                "filters) to train on; log some first (nothing was charged)"
            )
        self._sync()
        mask = self._fits(charge, units, max_share)
        if not mask.any():
            share = "" if max_share is None else f" or {max_share:.2%} of their remaining budget"
            raise BudgetExhausted(
                f"all {len(units)} candidate units would exceed the lifetime budget{share} "
                f"(ε={self.epsilon}, δ={self.delta}) with this round ({charge.purpose}, "
                f"σ={charge.noise_multiplier}, q={charge.sample_rate}, {charge.steps} steps); "
                "nothing was charged. Log new interactions, or make the round cheaper (more "
                "noise, fewer steps, a lower sampling rate): spent budget never comes back"
            )
        eligible = tuple(u for u, ok in zip(units, mask, strict=True) if ok)
        excluded = tuple(u for u, ok in zip(units, mask, strict=True) if not ok)
        return Selection(charge=charge, eligible=eligible, excluded=excluded)

    def _fits(
        self, charge: Charge, units: tuple[UnitId, ...], max_share: float | None = None
    ) -> np.ndarray:
        current = self._table.current(units)  # (n, k)
        rule = self.rule
        return rule.fits(
            current,
            rule.charge_curve(charge),
            epsilon=self.epsilon,
            delta=self.delta,
            max_share=max_share,
        )

    def begin_round(
        self,
        charge: Charge,
        eligible_units: Iterable[UnitId],
        *,
        base_fingerprint: str,
        clip_norm: float,
        accountant: str,
        adapter_version: str | int | None = None,
        policy_digest: str | None = None,
    ) -> int:
        """Charge every unit of ``eligible_units`` for ``charge``; returns the round id.

        Call it *before* the round reads or releases anything: it returns once the charge is
        committed and anchored. All-or-nothing.

        Raises:
            UnitOverBudget: Some unit cannot take the charge (charge ``select(...).eligible``).
            NoEligibleUnits: No units.
        """
        if not isinstance(charge, Charge):
            raise PrivacyParameterError(f"charge must be a Charge; got {type(charge).__name__}.")
        units = check_units(eligible_units)
        if not units:
            raise NoEligibleUnits(
                "begin_round got no units: pass select(...).eligible (nothing was charged)"
            )
        context = check_context(base_fingerprint, adapter_version, policy_digest)
        clip = check_positive("clip_norm", clip_norm)
        check_mechanism(accountant)
        check_round(self.contract, units, accountant)

        def build() -> tuple[str, int | None, dict[str, Any], UnitTable | None]:
            mask = self._fits(charge, units)
            if not mask.all():
                bad = [u for u, ok in zip(units, mask, strict=True) if not ok]
                raise UnitOverBudget(
                    f"{len(bad)} unit(s) (e.g. {bad[:3]!r}) would exceed the lifetime budget "
                    f"(ε={self.epsilon}, δ={self.delta}): pass only select(...).eligible, "
                    "selected just before the round (nothing was charged)"
                )
            table = self._table.copy()
            table.add(units, self.rule.charge_curve(charge))
            body = {
                **charge.to_dict(),
                **context,
                "clip_norm": clip,
                "accountant": accountant,
                "epsilon": self.epsilon,
                "delta": self.delta,
                "unit": self.contract.unit,
                "filter": self.contract.filter,
                "units": list(units),
                "units_digest": units_digest(units),
                "unit_count": len(units),
                "status": "charged",
            }
            return "charge", self._next_round(), body, table

        return int(self._transact(build) or 0)

    def finish_round(self, round_id: int, status: str = "completed", summary: Any = None) -> None:
        """Append the completion entry of a charged round. Nothing is refunded, ever.

        Args:
            round_id: What :meth:`begin_round` returned.
            status: ``"completed"`` or ``"aborted"`` (an aborted round stays charged).
            summary: Plain JSON data to record (steps done, losses...); never private data.

        Raises:
            RoundNotOpen: The round is unknown, uncharged, or already finished.
        """
        if status not in STATUSES:
            raise PrivacyParameterError(f"status must be one of {STATUSES}; got {status!r}.")
        encode_body({"summary": summary})  # refuse non-JSON data before taking the lock

        def build() -> tuple[str, int | None, dict[str, Any], UnitTable | None]:
            kinds = {
                k
                for (k,) in self.store.db.execute(
                    f"SELECT kind FROM {ENTRIES} WHERE round_id = ?", [round_id]
                )
            }
            if "charge" not in kinds or "finish" in kinds:
                state = "already finished" if "finish" in kinds else "not a charged round"
                raise RoundNotOpen(
                    f"round {round_id!r} is {state}: finish only a round begin_round returned, "
                    "and only once"
                )
            return "finish", round_id, {"status": status, "summary": summary}, None

        self._transact(build)

    def record_uncharged(
        self,
        purpose: str,
        *,
        reason: str,
        base_fingerprint: str,
        adapter_version: str | int | None = None,
        policy_digest: str | None = None,
        summary: Any = None,
    ) -> int:
        """Record a round that read no private data and so charges nothing (e.g. a migration
        by distillation on public prompts: post-processing of the DP adapter). Returns its id.

        ``reason`` must say why it is free; a reviewer reads it in the audit.
        """
        if purpose not in PURPOSES:
            raise PrivacyParameterError(f"purpose must be one of {PURPOSES}; got {purpose!r}.")
        if not isinstance(reason, str) or not reason.strip():
            raise PrivacyParameterError("an uncharged round needs a reason (why it is free).")
        body = {
            "purpose": purpose,
            "reason": reason,
            "summary": summary,
            "epsilon": self.epsilon,
            **check_context(base_fingerprint, adapter_version, policy_digest),
            "delta": self.delta,
            "unit": self.contract.unit,
            "units_digest": units_digest(()),
            "unit_count": 0,
            "status": "completed",
        }
        encode_body(body)
        return int(self._transact(lambda: ("uncharged", self._next_round(), body, None)) or 0)

    # --- reading -------------------------------------------------------------------------------

    def epsilon_of(self, unit: UnitId) -> float:
        """The unit's filter-ε so far (never above :attr:`epsilon`; 0 if never charged)."""
        (unit,) = check_units([unit])
        self._refresh()
        return float(self.rule.epsilon(self._table.current((unit,))[0], delta=self.delta))

    def epsilons(self) -> dict[UnitId, float]:
        """Filter-ε of every unit ever charged."""
        self._refresh()
        if not self._table.index:
            return {}
        eps = np.atleast_1d(self.rule.epsilon(self._table.rdp, delta=self.delta))
        return dict(zip(self._table.index, map(float, eps), strict=True))

    def rounds(self, *, with_units: bool = False) -> list[LedgerRound]:
        """Every round (charged and uncharged) with its final status, in order.

        ``with_units``: include each round's eligible unit ids (to replay per-unit ε).
        """
        return rounds_of(self.entries(), with_units=with_units)

    def verify(self) -> LedgerReport:
        """Check links, hashes, every seal, digests, budgets, the unit cache and the anchor.

        Never raises for what it finds (see ``problems``); repairs only a sound ledger's unit
        cache and an anchor lag of one (listed in ``repairs``).
        """
        return verify_ledger(self)

    @classmethod
    def reanchor(
        cls, store: Store, *, reason: str, anchor: anc.FileAnchor | str | Path | None = None
    ) -> LedgerHead:
        """Accept the database's chain as the truth and anchor its head (an admin operation).

        WEAKENS THE GUARANTEE: if the anchor is missing or ahead because an older database was
        restored, the charges recorded only in the lost newer copy are forgotten and units may
        exceed their lifetime budget. Needs the store key; the chain must be intact and every
        entry must authenticate. Appends a ``reanchor`` entry (``reason`` and what the old
        anchor said), so the audit shows when and why it happened.
        """
        ledger = cls(store, anc.as_anchor(store, anchor))
        return reanchor(ledger, reason)


def store_unit(store: Store) -> str:
    """The unit of privacy interactions entering ``store`` get (``import``, ``log()``).

    The ledger's contract once the store has a ledger; before, the unit of the policy recorded
    with the store (``personal init --policy``); else ``interaction`` (the default policy's).
    """
    if Ledger.exists(store):
        return Ledger.open(store).contract.unit
    return str(sealed_policy_contract(store).get("unit", DEFAULTS["unit"]))
