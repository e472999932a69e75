"""Base-model updates for :class:`~personal.personalizer.Personalizer` (a mixin).

Kept apart from the round logic: it only swaps the live base, asks the registry to stop serving
the old adapter, and runs one of the migration strategies of :mod:`personal.adapters.migrate`.

A migration is resumable. Before it deactivates the old adapter it records, sealed in the
store's settings (``migration``), where it goes from (the old base and its active adapter, the
teacher) and to (the new base). A process killed half-way leaves that record ``pending``: the
next :meth:`~BaseUpdates.on_base_update` from the old base to the new one (``personal migrate
STORE --base NEW`` finds the old base in the record) takes the teacher from the record -- the
old adapter stays in the registry, only deactivated -- and runs the migration again; any other
call names the command that finishes it (:class:`~personal.errors.MigrationInterrupted`).
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

from personal.adapters.migrate import (
    STRATEGIES,
    MigrationReport,
    distill_migration,
    timed,
)
from personal.errors import (
    BudgetExhausted,
    ConfigError,
    MigrationInterrupted,
    NoEligibleUnits,
    StoreBaseMismatch,
)
from personal.model.base import BaseModel, load_base
from personal.model.lora import get_adapter_weights, inject_lora, set_adapter_weights
from personal.training.continual import LAST_ID_KEY
from personal.training.gates import decide, general_loss
from personal.training.lock import round_lock

import mlx.core as mx

MIGRATION_KEY = "migration"  # the settings record of the last migration (module docstring)


class BaseUpdates:
    """``on_base_update`` and its strategies; mixed into the Personalizer."""

    # Provided by the Personalizer.
    base: BaseModel
    policy: Any
    registry: Any
    ledger: Any
    settings: Any
    store: Any
    _continual: Any
    _public: Any

    @abstractmethod
    def _update(
        self,
        progress: Any,
        now: Any,
        test_only: dict[str, Any],
        max_budget_share: float | None = None,
    ) -> Any: ...
    @abstractmethod
    def _public_batches(self) -> tuple[list[Any], list[Any]]: ...
    @abstractmethod
    def public_data(self) -> Any: ...
    @abstractmethod
    def _save_and_activate(self, report: Any, gate: Any, parent: int | None = None) -> int: ...

    @property
    @abstractmethod
    def active_adapter(self) -> Any: ...

    def on_base_update(
        self, new_base: str | Path | BaseModel, *, strategy: str | None = None, **test_only: Any
    ) -> MigrationReport:
        """Move to ``new_base`` (an OS update shipped it), carrying the personalization over.

        The old adapter is never served on the new base: from the moment this is called the
        new base answers bare, until a migrated adapter passes the gates.

        Strategies (default: the policy's ``migration.strategy``):
            ``distill``: the old base + active adapter teach a fresh LoRA on the new base on
                the public data's migration prompts and its own generated text: no private
                record is read, the ledger records a zero charge and why.
            ``retrain``: a DP round over the store's units, charged as usual but each unit
            spending at most ``migration.retrain_budget_share`` of its remaining budget.
            ``both``: distill, then a DP retrain round.
            ``drop``: start over with no adapter.

        Raises:
            RoundInProgress: another process is training this store.
            ConfigError: an unknown strategy.
            MigrationInterrupted: another migration was interrupted; the message says how to
                finish it.
            StoreBaseMismatch: this personalizer's base is not the store's.
        """
        strategy = strategy or self.policy.migration.strategy
        if strategy not in STRATEGIES:
            raise ConfigError(f"migration strategy must be one of {STRATEGIES}, not {strategy!r}")
        loaded = new_base if isinstance(new_base, BaseModel) else load_base(new_base)
        with round_lock(self.store.path):
            return self._migrate(loaded, strategy, test_only)

    def _migrate(self, new: BaseModel, strategy: str, test_only: dict[str, Any]) -> MigrationReport:
        clock = timed()
        old = self.base
        old_active = self._teacher(old, new)
        report = MigrationReport(strategy, old.fingerprint, new.fingerprint)
        report.old_version = old_active.version if old_active else None
        if new.fingerprint == old.fingerprint:
            report.new_version = report.old_version  # same base: nothing to migrate
            return report
        record = {
            "state": "pending", "strategy": strategy, "from_version": report.old_version,
            "from": _describe(old), "to": _describe(new),
        }  # fmt: skip
        self.settings.set(MIGRATION_KEY, record)  # durable before the old adapter goes
        inject_lora(new.model, self.policy.training.lora.to_lora_config())
        self.registry.deactivate()  # the new base serves bare until a migrated adapter passes
        self.base, self._public = new, None
        self._continual.reset_ewc()
        self.settings.set(
            "base", {"fingerprint": new.fingerprint, "name": new.name, "source": str(new.path)}
        )
        if strategy in ("distill", "both") and old_active is not None:
            self._distill_from(old, old_active.version, report)
        if strategy in ("retrain", "both"):
            self.settings.set(LAST_ID_KEY, 0)  # every unit is a candidate again
            try:
                share = self.policy.migration.retrain_budget_share
                retrain = self._update(None, None, test_only, max_budget_share=share)
            except (NoEligibleUnits, BudgetExhausted) as exc:
                report.retrain = {"skipped": str(exc)}
            else:
                report.retrain, report.charged = retrain.public_summary(), True
                report.new_version = retrain.adapter_version or report.new_version
        done = {**record, "state": "done", "to_version": report.new_version}
        self.settings.set(MIGRATION_KEY, done)
        report.seconds = clock()
        return report

    def pending_migration(self) -> dict[str, Any] | None:
        """The record of an interrupted migration (``None`` when the last one finished)."""
        record = self.settings.get(MIGRATION_KEY)
        return record if isinstance(record, dict) and record.get("state") == "pending" else None

    def _teacher(self, old: BaseModel, new: BaseModel) -> Any:
        """The adapter to carry over: the active one, or an interrupted migration's teacher."""
        pending = self.pending_migration()
        if pending is None:
            recorded = self.settings.get("base")
            if recorded and recorded.get("fingerprint") != old.fingerprint:
                raise StoreBaseMismatch(
                    f"this store's adapters are on base {recorded.get('name')!r} "
                    f"({str(recorded.get('fingerprint'))[:19]}), not {old.name!r}: migrate from "
                    f"the store's base (`personal migrate STORE --base NEW` without --from "
                    "finds it); nothing was changed"
                )
            return self.active_adapter
        source, target = pending["from"], pending["to"]
        if (source["fingerprint"], target["fingerprint"]) != (old.fingerprint, new.fingerprint):
            raise MigrationInterrupted(
                f"a migration of this store from {source['name']!r} to {target['name']!r} was "
                "interrupted (the store serves the bare new base; the old adapter is kept). "
                f"Finish it first: `personal migrate STORE --base {target['source']} --from "
                f"{source['source']}`; nothing was changed"
            )
        version = pending.get("from_version")
        if version is None:
            return None
        return self.registry.load_into(self.base, version)  # the teacher, on its own base

    def _distill_from(self, old: BaseModel, old_version: int, report: MigrationReport) -> None:
        migration = self.policy.migration
        public, _ = self._public_batches()
        before = general_loss(self.base.model, public)
        fresh = {k: mx.array(v) for k, v in get_adapter_weights(self.base.model).items()}
        count = min(512, max(64, migration.distill_steps * 2))
        prompts = self.public_data().migration_prompts(count)
        steps, losses, token_level = distill_migration(
            old, self.base, prompts, steps=migration.distill_steps,
            learning_rate=migration.distill_learning_rate,
        )  # fmt: skip
        report.prompts, report.steps, report.token_level = len(prompts), steps, token_level
        report.distill_loss = [losses[0], losses[-1]] if losses else []
        gate = decide(
            general_before=before,
            general_after=general_loss(self.base.model, public),
            max_regression=self.policy.gates.max_general_regression,
            personal_gain=None,
            min_gain=self.policy.gates.min_personal_gain,
            held_out=0,
            reference="base",  # measured with a fresh adapter: the new base itself
        )
        report.gates = gate.to_dict()
        summary = {"strategy": report.strategy, "prompts": len(prompts), "steps": steps,
                   "token_level": token_level, "from_base": old.fingerprint,
                   "from_version": old_version, "gate_passed": gate.passed}  # fmt: skip
        self.ledger.record_uncharged(
            "migration",
            reason="distillation of the DP adapter on public prompts and text the old model "
            "generated: post-processing, no private record read",
            base_fingerprint=self.base.fingerprint,
            adapter_version=old_version,
            policy_digest=self.policy.digest(),
            summary=summary,
        )
        if gate.passed:
            report.new_version = self._save_and_activate(summary, gate, parent=old_version)
        else:
            set_adapter_weights(self.base.model, fresh)


def _describe(base: BaseModel) -> dict[str, str]:
    return {"fingerprint": base.fingerprint, "name": base.name, "source": str(base.path)}
