"""The app-facing facade: log interactions, run private training rounds, answer through the adapter.

::

    from personal import Personalizer, Passphrase

    with Personalizer.open("~/.assistant/store", "base-v1", "default",
                           Passphrase("correct horse ..."), create=True) as p:
        p.log("remind me to call Ana at 6", "Reminder set: call Ana at 6 pm.")
        if p.should_update():
            report = p.update()          # one DP round, charged to the ledger first
        print(p.generate("remind me to call Ana").text)

One store binds one lifetime budget: the first policy that trains a store records its lifetime
(ε, δ) and privacy unit in the store; a later policy that tries to change them is refused, since
raising a lifetime budget after the fact would void the guarantee already stated for old data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personal.adapters.registry import AdapterRegistry
from personal.errors import PolicyError
from personal.model.base import BaseModel, load_base
from personal.model.generate import Generation, generate
from personal.model.lora import get_adapter_weights, inject_lora
from personal.policy import Policy, load_policy
from personal.privacy.accountant import calibrate_noise
from personal.privacy.ledger import Ledger
from personal.privacy.rdp import ORDERS
from personal.store import InteractionLog, KeyProvider, Store
from personal.store.layout import MARKER_NAME
from personal.store.settings import StoreSettings
from personal.training.round import Progress, RoundPlan, RoundReport, run_round

#: The settings that bind a store to one lifetime guarantee.
BUDGET_KEYS = ("unit", "lifetime_epsilon", "delta")
TRIGGER_KEY = "update_trigger"


class Personalizer:
    """A store, its privacy ledger and adapter registry, and the live base model with LoRA.

    Open it with :meth:`open`; close it (or use ``with``). Not thread-safe: one per process.
    """

    def __init__(
        self,
        log: InteractionLog,
        ledger: Ledger,
        registry: AdapterRegistry,
        base: BaseModel,
        policy: Policy,
        settings: StoreSettings,
    ) -> None:
        self.log_, self.ledger, self.registry = log, ledger, registry
        self.settings = settings
        self.base, self.policy = base, policy
        self.store: Store = log.store
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        store: str | Path,
        base: str | Path | BaseModel,
        policy: str | Path | Policy | None,
        key: KeyProvider,
        *,
        create: bool = False,
    ) -> Personalizer:
        """Open (or with ``create=True`` create) the store at ``store`` for ``base``.

        Args:
            store: the store directory.
            base: a bundled name (``"base-v1"``), a model directory, or a loaded base.
            policy: a bundled policy name, a TOML file, a :class:`Policy`, or ``None`` for the
                one recorded in the store (else ``"default"``).
            key: the key provider of the store.
            create: create the store when it does not exist yet.

        Raises:
            PolicyError: the policy would change the store's lifetime budget or unit.
            WrongKey, StoreNotFound, LedgerRollback, ...: see the store and ledger.
        """
        path = Path(store).expanduser()
        settings_policy = policy if isinstance(policy, Policy) else None
        if policy is not None and settings_policy is None:
            settings_policy = load_policy(policy)
        sync = settings_policy.store.synchronous if settings_policy else "FULL"
        if create and not (path / MARKER_NAME).exists():
            log = InteractionLog.create(path, key, synchronous=sync)
        else:
            log = InteractionLog.open(path, key, synchronous=sync)
        try:
            settings = StoreSettings(log.store)
            bound = _bind_policy(settings, settings_policy)
            log.unit_by = bound.privacy.unit
            ledger = Ledger.open(
                log.store, epsilon=bound.privacy.lifetime_epsilon, delta=bound.privacy.delta
            )
            loaded = base if isinstance(base, BaseModel) else load_base(base)
            inject_lora(loaded.model, bound.training.lora.to_lora_config())
            registry = AdapterRegistry.for_store(path)
            personalizer = cls(log, ledger, registry, loaded, bound, settings)
            personalizer._load_active_adapter()
        except BaseException:
            log.close()
            raise
        return personalizer

    def close(self) -> None:
        """Close the store (idempotent)."""
        if not self._closed:
            self._closed = True
            self.log_.close()

    def __enter__(self) -> Personalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- logging and serving -------------------------------------------------------------------

    def log(self, prompt: str, response: str, **fields: Any) -> int:
        """Append one interaction (fields as in :class:`~personal.store.Interaction`)."""
        return self.log_.append(prompt, response, **fields)

    def generate(self, prompt: str, **options: Any) -> Generation:
        """Answer ``prompt`` through the active adapter, with its confidence signal."""
        return generate(self.base.model, self.base.tokenizer, prompt, **options)

    @property
    def active_adapter(self) -> Any:
        """The active adapter's manifest, or ``None`` (serving the bare base)."""
        manifest = self.registry.active
        if manifest is None or manifest.base_fingerprint != self.base.fingerprint:
            return None
        return manifest

    # --- training ------------------------------------------------------------------------------

    def should_update(self, *, now: datetime | None = None) -> bool:
        """Whether the policy's trigger fires: enough new units, and rounds left today.

        ``now`` (default: the UTC clock) lets a simulation run on simulated days.
        """
        state = self.settings.get(TRIGGER_KEY, {"units": 0, "days": {}})
        new_units = len(self.log_.units()) - state["units"]
        today = (now or datetime.now(UTC)).date().isoformat()
        return (
            new_units >= self.policy.training.min_new_units
            and state["days"].get(today, 0) < self.policy.training.max_rounds_per_day
        )

    def _count_round(self, units: int, now: datetime | None) -> None:
        state = self.settings.get(TRIGGER_KEY, {"units": 0, "days": {}})
        today = (now or datetime.now(UTC)).date().isoformat()
        # Only today's count matters for the trigger: older days are dropped.
        days = {today: state["days"].get(today, 0) + 1}
        self.settings.set(TRIGGER_KEY, {"units": units, "days": days})

    def round_plan(self) -> RoundPlan:
        """The next round's public parameters, from the policy (σ calibrated if needed)."""
        privacy, training = self.policy.privacy, self.policy.training
        candidates = len(self.log_.units())
        plan = RoundPlan(
            noise_multiplier=privacy.noise_multiplier or 1.0,
            clip_norm=privacy.clip_norm,
            expected_batch_size=training.expected_batch_size,
            steps=training.steps,
            learning_rate=training.learning_rate,
            optimizer=training.optimizer,
            max_tokens=training.max_tokens,
            examples_per_unit=training.examples_per_unit,
        )
        if privacy.noise_multiplier is None:
            # Calibrated against the per-unit filter, whose conversion runs at δ/|orders|.
            sigma = calibrate_noise(
                target_epsilon=privacy.round_epsilon,
                target_delta=privacy.delta / len(ORDERS),
                sample_rate=plan.sample_rate(candidates),
                steps=training.steps,
                accountant="rdp",
            )
            plan = RoundPlan(**{**plan.__dict__, "noise_multiplier": sigma})
        return plan

    def round_context(self) -> dict[str, Any]:
        """What the ledger records with a round: base, accountant, adapter, policy."""
        active = self.active_adapter
        return {
            "base_fingerprint": self.base.fingerprint,
            "accountant": self.policy.privacy.accountant,
            "adapter_version": active.version if active else None,
            "policy_digest": self.policy.digest(),
        }

    def update(
        self, *, progress: Progress | None = None, now: datetime | None = None, **test_only: Any
    ) -> RoundReport:
        """Run one DP round, save the adapter as a new version and activate it.

        ``test_only`` passes ``noise=`` / ``sampler_seed=`` through for reproducible tests.

        Raises:
            NoEligibleUnits, BudgetExhausted: nothing to train on (nothing charged).
        """
        parent = self.active_adapter.version if self.active_adapter else None
        units = len(self.log_.units())
        report = run_round(
            self.base.model,
            self.base.tokenizer,
            self.log_,
            self.ledger,
            self.round_plan(),
            context=self.round_context(),
            progress=progress,
            **test_only,
        )
        version = self.registry.save(
            get_adapter_weights(self.base.model),
            base_fingerprint=self.base.fingerprint,
            base_name=self.base.name,
            lora=self.policy.training.lora.to_lora_config(),
            parent=parent,
            policy_digest=self.policy.digest(),
            ledger_head=self.ledger.head.hash,
            training=report.public_summary(),
        )
        self.registry.activate(version, base_fingerprint=self.base.fingerprint)
        report.adapter_version = version
        self._count_round(units, now)
        return report

    def _load_active_adapter(self) -> None:
        # Never an adapter of another base on this one: that is a migration (see on_base_update).
        if self.active_adapter is not None:
            self.registry.load_into(self.base)


def _bind_policy(settings: StoreSettings, policy: Policy | None) -> Policy:
    """The store's policy: ``policy`` if its budget matches the recorded one, else an error."""
    recorded = settings.get("policy")
    if policy is None:
        return (
            Policy.from_dict(recorded, source="the store") if recorded else load_policy("default")
        )
    if recorded is not None:
        old = recorded.get("privacy", {})
        new = policy.to_dict()["privacy"]
        changed = [k for k in BUDGET_KEYS if old.get(k) != new.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise PolicyError(
                f"this store's lifetime privacy budget is fixed ({diffs}); a policy may not "
                "change privacy.unit, privacy.lifetime_epsilon or privacy.delta of a store that "
                "has trained. Use a policy with the recorded values, or a new store."
            )
    settings.set("policy", policy.to_dict())
    return policy
