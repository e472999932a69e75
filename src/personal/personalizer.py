"""The app-facing facade: log interactions, run private training rounds, answer through the adapter.

::

    from personal import Personalizer, Passphrase

    with Personalizer.open("~/.assistant/store", "base-v1", "default",
                           Passphrase("correct horse ..."), create=True) as p:
        p.log("remind me to call Ana at 6", "Reminder set: call Ana at 6 pm.")
        if p.should_update():
            report = p.update()          # one DP round, charged to the ledger first
        print(p.generate("remind me to call Ana").text)

One store binds one lifetime contract (ε, δ, unit of privacy, accountant) in its privacy ledger's
genesis entry; once a round is recorded, a policy that tries to change it is refused
(:class:`~personal.errors.LifetimeContractFixed`), since raising a lifetime budget after the fact
would void the guarantee already stated for old data.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personal.adapters.registry import AdapterRegistry
from personal.errors import (
    BudgetExhausted,
    ConfigError,
    InvalidInteraction,
    MigrationInterrupted,
    NoEligibleUnits,
    StoreBaseMismatch,
    TooFewNewUnits,
    UnitOfPrivacyMismatch,
)
from personal.memory import DEFAULT_K, Memory, Recalled, memory_turns
from personal.model.base import BaseModel, load_base
from personal.model.chat import chat_format
from personal.model.generate import Generation, generate
from personal.model.lora import get_adapter_weights, inject_lora, lora_off, set_adapter_weights
from personal.policy import Policy, load_policy
from personal.privacy.contract import Contract
from personal.privacy.filter import Charge
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise, RandomBytes
from personal.privacy.rules import rule_of
from personal.public import PublicData, PublicSource, public_source
from personal.store import InteractionLog, KeyProvider, Store
from personal.store.layout import MARKER_NAME
from personal.store.records import parse_time
from personal.store.settings import StoreSettings
from personal.training.charged import charges_on_disk_full
from personal.training.continual import ContinualState
from personal.training.gates import (
    GateResult,
    decide,
    general_loss,
    noised_gain,
    public_batches,
    split_held_out,
    unit_losses,
    validation_noise_multiplier,
)
from personal.training.lock import round_lock
from personal.training.migration import BaseUpdates
from personal.training.round import Progress, RoundPlan, RoundReport, run_round

import mlx.core as mx
import numpy as np

TRIGGER_KEY = "update_trigger"


class Personalizer(BaseUpdates):
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
        *,
        seed: int | None = None,
        public: PublicSource | None = None,
        memory: bool | int = False,
    ) -> None:
        self.log_, self.ledger, self.registry = log, ledger, registry
        self.memory_default = _memory_k(memory, "memory")
        self._memory: Memory | None = None
        self.settings = settings
        self._public: tuple[list[Any], list[Any]] | None = None
        self.public_source = public_source(public)
        self._continual = ContinualState(log, settings, policy, seed=seed)
        self.base, self.policy = base, policy
        self.store: Store = log.store
        self._closed = False
        self._drawn: tuple[tuple[int, str], tuple[list[str], ...]] | None = None

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
        seed: int | None = None,
        public_data: PublicSource | str | Path | None = None,
        memory: bool | int = False,
    ) -> Personalizer:
        """Open (or with ``create=True`` create) the store at ``store`` for ``base``.

        Args:
            store: the store directory.
            base: a bundled name (``"base-v1"``), a model directory, or a loaded base.
            policy: a bundled policy name, a TOML file, a :class:`Policy`, or ``None`` for the
                one recorded in the store (else ``"default"``).
            key: the key provider of the store.
            create: create the store when it does not exist yet.
            seed: simulations and tests only: seeds the replay buffer's draws (warns with
                :class:`~personal.errors.SeededNoiseWarning`); pass ``noise=`` and
                ``sampler_seed=`` to :meth:`update` for fully reproducible rounds.
            public_data: the public (non-personal) text for the general-loss gate, public
                replay, distillation to the base, the public Fisher and migration prompts: a
                :class:`~personal.public.PublicData`, a JSONL file, or any
                :class:`~personal.public.PublicSource`. Default: the base's own answers to the
                bundled generic prompts (:class:`~personal.public.SelfGenerated`, generated once
                per base and cached). Pass the same data every time a store is opened.
            memory: the default of :meth:`generate`'s ``memory``: ``False`` (the default: its
                benefit is not measured yet, see docs/memory.md), ``True`` (recall
                :data:`~personal.memory.DEFAULT_K` past interactions) or a number to recall.
                When on, the store's memory index is built now if it keeps none.

        Raises:
            PublicDataError: ``public_data`` is a malformed file (nothing was opened).
            LifetimeContractFixed: the policy would change the lifetime contract the store's
                ledger binds (ε, δ, unit, accountant) after a round was recorded.
            WrongKey, StoreNotFound, LedgerRollback, ...: see the store and ledger.
        """
        path = Path(store).expanduser()
        public = public_source(public_data)  # a bad file fails before the store is touched
        settings_policy = policy if isinstance(policy, Policy) else None
        if policy is not None and settings_policy is None:
            settings_policy = load_policy(policy)
        sync = settings_policy.store.synchronous if settings_policy else "FULL"
        created = create and not (path / MARKER_NAME).exists()
        before = {c.name for c in path.iterdir()} if path.is_dir() else None
        if created:
            log = InteractionLog.create(path, key, synchronous=sync)
        else:
            log = InteractionLog.open(path, key, synchronous=sync)
        try:
            settings = StoreSettings(log.store)
            bound = _bind_policy(settings, settings_policy)
            log.unit_by = bound.privacy.unit  # type: ignore[assignment]  # validated
            _check_units(log, bound.privacy.unit)
            # The ledger, not the settings row, binds the contract: it refuses another one.
            ledger = Ledger.open(log.store, Contract.of_policy(bound))
            if settings.get("policy") != bound.to_dict():
                settings.set("policy", bound.to_dict())  # the default of later commands
            loaded = base if isinstance(base, BaseModel) else load_base(base)
            inject_lora(loaded.model, bound.training.lora.to_lora_config())
            _record_base(settings, loaded, base)
            registry = AdapterRegistry.for_store(path)
            personalizer = cls(
                log, ledger, registry, loaded, bound, settings, seed=seed, public=public,
                memory=memory,
            )  # fmt: skip
            personalizer._load_active_adapter()
            if personalizer.memory_default:
                personalizer.memory.refresh()  # build (first time) and load it now
        except BaseException:
            log.close()
            if created:  # a failed create (a wrong base name, say) leaves nothing behind
                _remove_new_store(path, before)
            raise
        return personalizer

    def close(self) -> None:
        """Close the store (idempotent)."""
        if not self._closed:
            self._closed = True
            self._memory = None  # the decrypted index goes with the store
            self.log_.close()

    def __enter__(self) -> Personalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- logging and serving -------------------------------------------------------------------

    def log(self, prompt: str, response: str, **fields: Any) -> int:
        """Append one interaction (fields as in :class:`~personal.store.Interaction`).

        ``ts`` takes the forms ``personal import`` takes: a ``datetime``, a ``date``, ISO 8601
        text (``"2024-05-01T10:00:00Z"``) or unix seconds. Log each exchange once: every call
        is a new privacy unit under ``unit = "interaction"``.

        Raises:
            InvalidInteraction: an empty (or blank) prompt or response: there is nothing to
                learn, and it would still be charged as a unit.
        """
        for name, text in (("prompt", prompt), ("response", response)):
            if not isinstance(text, str) or not text.strip():
                raise InvalidInteraction(
                    f"the {name} is empty: log only exchanges with a prompt and a response "
                    "(nothing was written)"
                )
        if fields.get("ts") is not None:
            fields["ts"] = parse_time(fields["ts"], "ts")
        return self.log_.append(prompt, response, **fields)

    def budget(self) -> dict[str, Any]:
        """The privacy budget left, summarised over units (no unit ids).

        ``{"lifetime_epsilon", "delta", "unit", "filter", "units", "spent_max", "spent_median",
        "remaining_min", "remaining_median", "excluded_next_round"}``: ε per unit from the ledger's
        filter; ``remaining_*`` are ``lifetime_epsilon - spent``; ``excluded_next_round`` counts the
        units the next round (the policy's q, σ and steps over the logged units) would leave out
        as too costly for their remaining budget. Units never charged have spent 0.
        """
        import statistics

        contract = self.ledger.contract
        spent = self.ledger.epsilons()
        values = [float(spent.get(u, 0.0)) for u in self.log_.units()] or [0.0]
        lifetime = float(contract.epsilon)
        units = list(self.log_.units())
        excluded = 0
        if units:
            try:  # a pure check on past charges: which units the next round would admit
                selection = self.ledger.select(self.round_plan().charge(len(units)), units)
                excluded = len(units) - len(selection.eligible)
            except BudgetExhausted:
                excluded = len(units)
        return {
            "lifetime_epsilon": lifetime,
            "delta": float(contract.delta),
            "unit": contract.unit,
            "filter": contract.filter,
            "units": len(self.log_.units()),
            "spent_max": max(values),
            "spent_median": statistics.median(values),
            "remaining_min": lifetime - max(values),
            "remaining_median": lifetime - statistics.median(values),
            "excluded_next_round": excluded,
        }

    def generate(
        self, prompt: str, *, memory: bool | int | None = None, **options: Any
    ) -> Generation:
        """Answer ``prompt`` through the active adapter, with its confidence signal.

        Args:
            prompt: the user's request.
            memory: recall the most relevant past interactions of this store and put them
                before the request as earlier chat turns: ``True`` (recall
                :data:`~personal.memory.DEFAULT_K`), a number to recall, ``False``; ``None``
                (default): what :meth:`open` was given. Memory charges no privacy budget, but
                the reply may quote what it recalls (docs/memory.md). The result's
                ``memory_ids`` names the interactions used.
            options: :func:`~personal.model.generate.generate`'s (``max_tokens``,
                ``temperature``, ``seed``).
        """
        k = self.memory_default if memory is None else _memory_k(memory, "memory")
        if not k:
            return generate(self.base.model, self.base.tokenizer, prompt, **options)
        history, ids = self.memory_context(prompt, k)
        reply = generate(self.base.model, self.base.tokenizer, prompt, history=history, **options)
        return dataclasses.replace(reply, memory_ids=tuple(ids))

    @property
    def memory(self) -> Memory:
        """The store's personal memory (its sealed index is built on first use)."""
        if self._memory is None:
            self._memory = Memory.open(self.log_)
        return self._memory

    def recall(self, prompt: str, k: int = DEFAULT_K) -> list[Recalled]:
        """The ``k`` past interactions most relevant to ``prompt``, best first."""
        return self.memory.recall(prompt, k)

    def memory_context(
        self, prompt: str, k: int = DEFAULT_K
    ) -> tuple[list[tuple[str, str]], list[int]]:
        """What :meth:`generate` puts before ``prompt`` with memory on: ``(turns, ids)``,
        the recalled ``(prompt, response)`` turns (least relevant first, each cut to
        :data:`~personal.memory.MAX_CHARS` characters, together at most
        :data:`~personal.memory.MAX_MEMORY_TOKENS` tokens) and their record ids. A simulation
        scores replies with the same turns (``ChatFormat.encode(..., history=turns)``)."""
        fmt = chat_format(self.base.tokenizer)
        alone = len(fmt.prompt_ids(prompt))
        return memory_turns(
            self.recall(prompt, k), lambda turns: len(fmt.prompt_ids(prompt, turns)) - alone
        )

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

    def round_plan(self, candidates: int | None = None) -> RoundPlan:
        """A round's public parameters from the policy (σ calibrated if needed).

        ``candidates``: how many units the round draws from. Default: the next round's own
        draw (new units plus replayed ones, less the held-out set), which :meth:`update` then
        uses if nothing was logged or trained in between, so the plan's σ and q are the ones
        the round runs at.
        """
        privacy, training = self.policy.privacy, self.policy.training
        if candidates is None:
            self._drawn = (self._draw_key(), self._draw_round(None))
            candidates = len(self._drawn[1][2])
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
            # Calibrated against the per-unit filter rule (the Rényi filter's conversion runs
            # at δ/|orders|; the Gaussian filter's is exact).
            sigma = rule_of(privacy.filter).calibrate(
                target_epsilon=float(privacy.round_epsilon or 0.5),
                delta=privacy.delta,
                sample_rate=plan.sample_rate(candidates),
                steps=training.steps,
            )
            plan = RoundPlan(**{**plan.__dict__, "noise_multiplier": sigma})
        return plan

    def _draw_key(self) -> tuple[int, str]:
        """What a drawn round depends on: the log's last record and the ledger's head."""
        return self.log_.last_id(), self.ledger.head.hash

    def _draw_round(self, seed: int | None) -> tuple[list[str], list[str], list[str], list[str]]:
        """``(new, replayed, train, held_out)`` units of the next round (CSPRNG draws)."""
        self._continual.refresh()
        new_units, replayed = self._continual.candidates()
        coins = RandomBytes(None if seed is None else seed + 1, purpose="holdout")
        train_units, held_out = split_held_out([*new_units, *replayed], coins)
        return new_units, replayed, train_units, held_out

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
        """One DP round; the new adapter is activated only if the gates pass.

        Holds the store's round lock (:class:`RoundInProgress` if another process has it). On
        any failure, or when a gate fails, the live model goes back to the previous adapter.
        ``test_only`` passes ``noise=`` / ``sampler_seed=`` through for reproducible tests.

        Raises:
            NoEligibleUnits, BudgetExhausted: nothing to train on (nothing charged).
            TooFewNewUnits: fewer new units than ``training.min_new_units`` (nothing charged).
            RoundInProgress: another process is training this store.
            StoreBaseMismatch: the live base is not the store's (nothing charged).
            MigrationInterrupted: a migration must be finished first (nothing charged).
            DiskFull: the disk filled up; the message names the rounds already charged.
        """
        with round_lock(self.store.path):
            self._check_base()
            with charges_on_disk_full(self.ledger):  # a true message: what was charged
                return self._update(progress, now, test_only)

    def _check_base(self) -> None:
        """Refuse to train another base than the one the store's adapters are on."""
        pending = self.pending_migration()
        if pending is not None:
            source, target = pending["from"], pending["to"]
            raise MigrationInterrupted(
                f"a migration of this store from {source['name']!r} to {target['name']!r} was "
                f"interrupted; finish it before training: `personal migrate STORE --base "
                f"{target['source']} --from {source['source']}` (nothing was charged)"
            )
        recorded = self.settings.get("base")
        if recorded and recorded.get("fingerprint") != self.base.fingerprint:
            raise StoreBaseMismatch(
                f"this store's adapters are on base {recorded.get('name')!r} "
                f"({str(recorded.get('fingerprint'))[:19]}), not {self.base.name!r} "
                f"({self.base.fingerprint[:19]}): train with --base {recorded.get('source')}; "
                f"to move the store to this base, run `personal migrate STORE --base "
                f"{self.base.path}` (nothing was charged)"
            )

    def _update(
        self,
        progress: Progress | None,
        now: datetime | None,
        test_only: dict[str, Any],
        max_budget_share: float | None = None,
    ) -> RoundReport:
        """The round; ``max_budget_share`` caps each unit's spend (a migration retrain)."""
        model, tokenizer = self.base.model, self.base.tokenizer
        previous = {k: mx.array(v) for k, v in get_adapter_weights(model).items()}
        context = self.round_context()
        continual = self._continual
        seed = test_only.get("sampler_seed")
        drawn, self._drawn = self._drawn, None
        if seed is None and drawn is not None and drawn[0] == self._draw_key():
            new_units, replayed, train_units, held_out = drawn[1]  # what round_plan() showed
        else:
            new_units, replayed, train_units, held_out = self._draw_round(seed)
        if not new_units and not replayed:
            raise NoEligibleUnits(
                "no new interactions since the last round: log some first (nothing was charged)"
            )
        wanted = self.policy.training.min_new_units
        if max_budget_share is None and len(new_units) < wanted:
            # A public decision: the unit count is cleartext metadata (docs/privacy.md).
            raise TooFewNewUnits(
                f"{len(new_units)} new interactions since the last round, fewer than the "
                f"policy's training.min_new_units = {wanted}: a round on so few would spend "
                "their privacy budget on an update that is mostly noise, so it did not run "
                "(nothing was charged). Log more interactions and train again"
            )
        plan = self.round_plan(len(train_units))
        # Fail before anything is charged: the validation charge comes first and is never
        # refunded, so a round that cannot train must not open it (a pure check on past charges).
        self.ledger.select(plan.charge(len(train_units)), train_units, max_share=max_budget_share)
        public, public_train = self._public_batches()
        # The gate's reference: the active adapter (this round's step) or the bare base (the
        # total drift; the base is frozen, so measuring it before the round is the same).
        reference = self.policy.gates.general_reference
        with lora_off(model) if reference == "base" else contextlib.nullcontext():
            general_before = general_loss(model, public)
        validation = self._open_validation(held_out, context, max_budget_share)
        report: RoundReport | None = None
        try:
            # The training round stays open until the gates decide: its finish entry records
            # their outcome and the adapter version it produced (the audit shows both).
            report = run_round(
                model, tokenizer, self.log_, self.ledger, plan, context=context,
                progress=progress, candidates=train_units, max_budget_share=max_budget_share,
                hooks=lambda eligible: continual.hooks(model, plan, eligible, public_train),
                finish=False, **test_only,
            )  # fmt: skip
            general_after = general_loss(model, public)
            gain = validation.measure(test_only.get("noise")) if validation else None
        except BaseException:
            set_adapter_weights(model, previous)
            if validation:
                validation.abort()
            if report is not None:
                self.ledger.finish_round(
                    report.round_id, "aborted", {"completed_steps": plan.steps}
                )
            raise
        gate = decide(
            general_before=general_before,
            general_after=general_after,
            max_regression=self.policy.gates.max_general_regression,
            personal_gain=gain,
            min_gain=self.policy.gates.min_personal_gain,
            held_out=len(validation.units) if validation else 0,
            reference=reference,
        )
        if validation:
            validation.finish(gate)
        report.gates, report.replayed = gate.to_dict(), len(replayed)
        outcome = {
            "completed_steps": plan.steps,
            "gate": "passed" if gate.passed else "refused",
            "adapter_version": None,
            "validation_round": validation.round_id if validation else None,
        }
        try:
            if gate.passed:
                report.adapter_version = self._save_and_activate(report, gate)
                outcome["adapter_version"] = report.adapter_version
            else:
                set_adapter_weights(model, previous)  # the active adapter stays
        except BaseException:
            set_adapter_weights(model, previous)
            self.ledger.finish_round(report.round_id, "aborted", {**outcome, "gate": "passed"})
            raise
        self.ledger.finish_round(report.round_id, "completed", outcome)
        continual.after_round(model, new_units, gate.passed, public_train)
        self._count_round(len(self.log_.units()), now)
        return report

    def _save_and_activate(
        self, report: RoundReport | dict[str, Any], gate: GateResult, parent: int | None = None
    ) -> int:
        active = self.active_adapter
        summary = report.public_summary() if isinstance(report, RoundReport) else report
        version = self.registry.save(
            get_adapter_weights(self.base.model),
            base_fingerprint=self.base.fingerprint,
            base_name=self.base.name,
            lora=self.policy.training.lora.to_lora_config(),
            parent=parent if parent is not None else (active.version if active else None),
            policy_digest=self.policy.digest(),
            ledger_head=self.ledger.head.hash,
            training=summary,
            gates=gate.to_dict(),
        )
        self.registry.activate(version, base_fingerprint=self.base.fingerprint)
        return version

    def public_data(self) -> PublicData:
        """The public data for the live base (self-generated ones are made on first use)."""
        return self.public_source.for_base(self.base)

    def _public_batches(self) -> tuple[list[Any], list[Any]]:
        """(held-out public batches for the gate, public batches for replay and Fisher)."""
        if self._public is None:
            tokenizer, data = self.base.tokenizer, self.public_data()
            size = self.policy.continual.public_batch_size
            self._public = (
                public_batches(tokenizer, data.gate),
                public_batches(tokenizer, data.train, batch_size=size),
            )
        return self._public

    def _open_validation(
        self, held_out: list[str], context: dict[str, Any], max_share: float | None = None
    ) -> Validation | None:
        """Charge the held-out units for the personal metric, then score the old adapter."""
        if not held_out:
            return None
        sigma = self._validation_sigma()
        charge = Charge(purpose="validation", sample_rate=1.0, noise_multiplier=sigma, steps=1)
        try:
            selection = self.ledger.select(charge, held_out, max_share=max_share)
            units = [str(u) for u in selection.eligible]
        except BudgetExhausted:
            return None
        round_id = self.ledger.begin_round(charge, units, **{**context, "clip_norm": 1.0})
        keep = self.policy.training.examples_per_unit
        validation = Validation(self, round_id, units, sigma, keep)
        try:
            validation.before = unit_losses(
                self.base.model, self.base.tokenizer, self.log_, units, keep
            )
        except BaseException:
            validation.abort()
            raise
        return validation

    def _validation_sigma(self) -> float:
        return validation_noise_multiplier(self.policy)

    def _load_active_adapter(self) -> None:
        # Never an adapter of another base on this one: that is a migration (see on_base_update).
        if self.active_adapter is not None:
            self.registry.load_into(self.base)


class Validation:
    """An open, already charged ``validation`` round over held-out units."""

    def __init__(
        self, owner: Personalizer, round_id: int, units: list[str], sigma: float, keep: int
    ) -> None:
        self.owner, self.round_id, self.units, self.sigma, self.keep = (
            owner, round_id, units, sigma, keep,
        )  # fmt: skip
        self.before = np.zeros(len(units))

    def measure(self, noise: GaussianNoise | None) -> float:
        """The noised personal gain of the live (new) adapter over the old one."""
        base = self.owner.base
        after = unit_losses(base.model, base.tokenizer, self.owner.log_, self.units, self.keep)
        return noised_gain(self.before, after, self.sigma, noise)

    def finish(self, gate: GateResult) -> None:
        """Close the round, recording the gate's decision (public and DP values only)."""
        summary = {"passed": gate.passed, "personal_gain": gate.personal_gain}
        self.owner.ledger.finish_round(self.round_id, "completed", summary)

    def abort(self) -> None:
        """Close the round as aborted (it stays charged)."""
        self.owner.ledger.finish_round(self.round_id, "aborted")


def _memory_k(memory: object, name: str) -> int:
    """How many interactions a ``memory`` option recalls (0: off)."""
    if memory is True:
        return DEFAULT_K
    if memory is False:
        return 0
    if isinstance(memory, int) and memory >= 0:
        return memory
    raise ConfigError(
        f"{name} must be True, False or a number of interactions >= 0, not {memory!r}"
    )


def _remove_new_store(path: Path, before: set[str] | None) -> None:
    """Remove what a failed ``open(create=True)`` made: the directory if it made it, else only
    the entries that were not there before."""
    import shutil

    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.name not in before:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _record_base(settings: StoreSettings, loaded: BaseModel, source: object) -> None:
    """Remember which base the store serves (``personal migrate`` finds the teacher by it).

    A store opened on another base than the recorded one keeps the record: the recorded base
    still owns the active adapter until :meth:`Personalizer.on_base_update` moves it.
    """
    recorded = settings.get("base")
    if recorded is None or recorded.get("fingerprint") == loaded.fingerprint:
        where = str(loaded.path) if isinstance(source, BaseModel) else str(source)
        settings.set(
            "base", {"fingerprint": loaded.fingerprint, "name": loaded.name, "source": where}
        )


def _check_units(log: InteractionLog, unit: str) -> None:
    """Refuse a unit of privacy the store's records were not logged under (cleartext check)."""
    misfits = log.misfit_count(unit)  # type: ignore[arg-type]  # a validated policy unit
    if misfits:
        raise UnitOfPrivacyMismatch(
            f"{misfits} interaction(s) in this store were logged under another unit of privacy "
            f"than the policy's {unit!r} (e.g. imported before the store's policy was recorded), "
            f"so training would charge them as the wrong units and the audit's claim would be "
            "false. Train under a policy whose privacy.unit matches how they were logged, or "
            "import them into a new store created with `personal init STORE --policy P` "
            "(nothing was charged)"
        )


def _bind_policy(settings: StoreSettings, policy: Policy | None) -> Policy:
    """The policy to open with: ``policy``, else the store's recorded one, else ``default``.

    Whether it may change the lifetime contract is the ledger's decision (:meth:`Ledger.open`),
    so nothing is recorded here: a policy the ledger refuses never becomes the store's default.
    """
    if policy is not None:
        return policy
    recorded = settings.get("policy")
    return Policy.from_dict(recorded, source="the store") if recorded else load_policy("default")
