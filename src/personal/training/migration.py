"""Base-model updates: :class:`Migrator` moves a store's personalization to a new base.

Kept apart from the round logic: it only swaps the live base, asks the registry to stop serving
the old adapter, and runs one of the migration strategies of :mod:`personal.adapters.migrate`
(a retrain is a round of the store's :class:`~personal.training.runner.RoundRunner`).

A migration is resumable. Before it deactivates the old adapter it records, sealed in the
store's settings (``migration``), where it goes from (the old base and its active adapter, the
teacher) and to (the new base). A process killed half-way leaves that record ``pending``: the
next :meth:`~Migrator.migrate` from the old base to the new one (``personal migrate STORE
--base NEW`` finds the old base in the record) takes the teacher from the record -- the old
adapter stays in the registry, only deactivated -- and runs the migration again; any other
call names the command that finishes it (:class:`~personal.errors.MigrationInterrupted`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from personal.adapters.artifact import Manifest
from personal.adapters.migrate import (
    STRATEGIES,
    MigrationReport,
    distill_migration,
    timed,
)
from personal.adapters.population import warm_start_for
from personal.adapters.registry import AdapterRegistry
from personal.errors import (
    BudgetExhausted,
    ConfigError,
    MigrationInterrupted,
    NoEligibleUnits,
    StoreBaseMismatch,
)
from personal.model.base import BaseModel, load_base
from personal.model.lora import get_adapter_weights, inject_lora, set_adapter_weights
from personal.policy import Policy
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise
from personal.store.settings import StoreSettings
from personal.training.continual import LAST_ID_KEY
from personal.training.gates import decide, general_loss
from personal.training.lock import round_lock

import mlx.core as mx

if TYPE_CHECKING:  # the runner imports pending_migration from here
    from personal.training.runner import RoundRunner

MIGRATION_KEY = "migration"  # the settings record of the last migration (module docstring)


def pending_migration(settings: StoreSettings) -> dict[str, Any] | None:
    """The record of an interrupted migration (``None`` when the last one finished)."""
    record = settings.get(MIGRATION_KEY)
    return record if isinstance(record, dict) and record.get("state") == "pending" else None


def check_store_base(settings: StoreSettings, base: BaseModel) -> None:
    """Refuse to train another base than the one the store's adapters are on.

    Raises:
        MigrationInterrupted: a migration must be finished first.
        StoreBaseMismatch: ``base`` is not the store's.
    """
    pending = pending_migration(settings)
    if pending is not None:
        source, target = pending["from"], pending["to"]
        raise MigrationInterrupted(
            f"a migration of this store from {source['name']!r} to {target['name']!r} was "
            f"interrupted; finish it before training: `personal migrate STORE --base "
            f"{target['source']} --from {source['source']}` (nothing was charged)"
        )
    recorded = settings.get("base")
    if recorded and recorded.get("fingerprint") != base.fingerprint:
        raise StoreBaseMismatch(
            f"this store's adapters are on base {recorded.get('name')!r} "
            f"({str(recorded.get('fingerprint'))[:19]}), not {base.name!r} "
            f"({base.fingerprint[:19]}): train with --base {recorded.get('source')}; "
            f"to move the store to this base, run `personal migrate STORE --base "
            f"{base.path}` (nothing was charged)"
        )


class Migrator:
    """Moves a store to a new base model, carrying its personalization over.

    Args:
        rounds: the store's round runner: it holds the live base (:meth:`RoundRunner.rebase`
            moves it), the public data, and runs a migration's retrain round.
        registry: the store's adapter registry (the teacher, the migrated adapter).
        ledger: the store's privacy ledger (a distillation records a zero charge and why).
        policy: the store's policy (``migration.*``, LoRA shape, gates).
        settings: the store's sealed settings (the recorded base, the migration record).
        store_dir: the store's directory, whose round lock a migration holds.
    """

    def __init__(
        self,
        rounds: RoundRunner,
        registry: AdapterRegistry,
        ledger: Ledger,
        policy: Policy,
        settings: StoreSettings,
        store_dir: Path,
    ) -> None:
        self.rounds, self.registry, self.ledger = rounds, registry, ledger
        self.policy, self.settings, self.store_dir = policy, settings, store_dir

    def migrate(
        self,
        new_base: str | Path | BaseModel,
        *,
        strategy: str | None = None,
        noise: GaussianNoise | None = None,
        sampler_seed: int | None = None,
    ) -> MigrationReport:
        """Move to ``new_base`` with ``strategy`` (default: the policy's) under the store's
        round lock: :meth:`Personalizer.on_base_update
        <personal.personalizer.Personalizer.on_base_update>` describes the strategies and errors.
        ``noise`` and ``sampler_seed`` reach a retrain round (tests only)."""
        strategy = strategy or self.policy.migration.strategy
        if strategy not in STRATEGIES:
            raise ConfigError(f"migration strategy must be one of {STRATEGIES}, not {strategy!r}")
        loaded = new_base if isinstance(new_base, BaseModel) else load_base(new_base)
        with round_lock(self.store_dir):
            return self._migrate(loaded, strategy, noise, sampler_seed)

    def _migrate(
        self, new: BaseModel, strategy: str, noise: GaussianNoise | None, sampler_seed: int | None
    ) -> MigrationReport:
        clock = timed()
        old = self.rounds.base
        old_active = self._teacher(old, new)
        report = MigrationReport(strategy, old.fingerprint, new.fingerprint)
        report.old_version = old_active.version if old_active else None
        if new.fingerprint == old.fingerprint:
            report.new_version = report.old_version  # same base: nothing to migrate
            return report
        # The new base's public warm start (if the policy asks for one): checked before
        # anything moves, and the starting point of the distilled or retrained adapter.
        warm = warm_start_for(self.policy, new)
        record = {
            "state": "pending",
            "strategy": strategy,
            "from_version": report.old_version,
            "from": _describe(old),
            "to": _describe(new),
        }
        self.settings.set(MIGRATION_KEY, record)  # durable before the old adapter goes
        inject_lora(new.model, self.policy.training.lora.to_lora_config())
        # The new base serves bare (or its population adapter) until a migrated adapter passes.
        self.registry.deactivate()
        self.rounds.rebase(new, warm)
        self.settings.set(
            "base", {"fingerprint": new.fingerprint, "name": new.name, "source": str(new.path)}
        )
        if strategy in ("distill", "both") and old_active is not None:
            self._distill_from(old, old_active.version, report)
        if strategy in ("retrain", "both"):
            self.settings.set(LAST_ID_KEY, 0)  # every unit is a candidate again
            try:
                share = self.policy.migration.retrain_budget_share
                retrain = self.rounds.train(
                    noise=noise, sampler_seed=sampler_seed, max_budget_share=share
                )
            except (NoEligibleUnits, BudgetExhausted) as exc:
                report.retrain = {"skipped": str(exc)}
            else:
                report.retrain, report.charged = retrain.public_summary(), True
                report.new_version = retrain.adapter_version or report.new_version
        done = {**record, "state": "done", "to_version": report.new_version}
        self.settings.set(MIGRATION_KEY, done)
        report.seconds = clock()
        return report

    def _teacher(self, old: BaseModel, new: BaseModel) -> Manifest | None:
        """The adapter to carry over: the active one, or an interrupted migration's teacher."""
        pending = pending_migration(self.settings)
        if pending is None:
            recorded = self.settings.get("base")
            if recorded and recorded.get("fingerprint") != old.fingerprint:
                raise StoreBaseMismatch(
                    f"this store's adapters are on base {recorded.get('name')!r} "
                    f"({str(recorded.get('fingerprint'))[:19]}), not {old.name!r}: migrate from "
                    f"the store's base (`personal migrate STORE --base NEW` without --from "
                    "finds it); nothing was changed"
                )
            return self.rounds.active_adapter
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
        return self.registry.load_into(old, version)  # the teacher, on its own base

    def _distill_from(self, old: BaseModel, old_version: int, report: MigrationReport) -> None:
        migration, new = self.policy.migration, self.rounds.base
        public, _ = self.rounds.public_batches()
        before = general_loss(new.model, public)
        fresh = {k: mx.array(v) for k, v in get_adapter_weights(new.model).items()}
        count = min(512, max(64, migration.distill_steps * 2))
        prompts = self.rounds.public_data().migration_prompts(count)
        steps, losses, token_level = distill_migration(
            old,
            new,
            prompts,
            steps=migration.distill_steps,
            learning_rate=migration.distill_learning_rate,
        )
        report.prompts, report.steps, report.token_level = len(prompts), steps, token_level
        report.distill_loss = [losses[0], losses[-1]] if losses else []
        gate = decide(
            general_before=before,
            general_after=general_loss(new.model, public),
            max_regression=self.policy.gates.max_general_regression,
            personal_gain=None,
            min_gain=self.policy.gates.min_personal_gain,
            held_out=0,
            reference="base",  # measured with a fresh adapter: the new base itself
        )
        report.gates = gate.to_dict()
        summary = {
            "strategy": report.strategy,
            "prompts": len(prompts),
            "steps": steps,
            "token_level": token_level,
            "from_base": old.fingerprint,
            "from_version": old_version,
            "gate_passed": gate.passed,
        }
        self.ledger.record_uncharged(
            "migration",
            reason="distillation of the DP adapter on public prompts and text the old model "
            "generated: post-processing, no private record read",
            base_fingerprint=new.fingerprint,
            adapter_version=old_version,
            policy_digest=self.policy.digest(),
            summary=summary,
        )
        if gate.passed:
            report.new_version = self.rounds.save_and_activate(summary, gate, parent=old_version)
        else:
            set_adapter_weights(new.model, fresh)


def _describe(base: BaseModel) -> dict[str, str]:
    return {"fingerprint": base.fingerprint, "name": base.name, "source": str(base.path)}
