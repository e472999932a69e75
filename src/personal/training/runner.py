"""A store's personalization rounds, as one object with explicit collaborators.

:class:`RoundRunner` owns the round that :meth:`Personalizer.update
<personal.personalizer.Personalizer.update>` runs, top to bottom:

1. **Draw**: the continual state's candidates (new units, replayed ones) and the CSPRNG coins
   that hold some out for validation (:meth:`RoundRunner.plan` shows the draw and the plan;
   the next round runs on that same draw if nothing was logged or charged in between).
2. **Plan**: σ (calibrated when the policy asks for it), q, steps, from the policy.
3. **Train**: a charged ``validation`` round on the held-out units, then the DP round
   (:func:`~personal.training.round.run_round`) with the continual hooks (replay, EWC).
4. **Gate**: general regression on public data, noised personal gain
   (:mod:`personal.training.gates`).
5. **Save and activate** the new adapter if the gates pass (else the previous one stays live),
   close the ledger's rounds with the outcome, and **count** the round for the trigger.

Under ``privacy.clip = "quantile"`` it also carries the adaptive clip norm from round to round:
each round starts at the C the last one ended at (a DP output, stored in the store's sealed
settings under :data:`CLIP_KEY`), or at the policy's ``clip_norm`` on a new store, after the
policy's ``clip_norm`` changed, or on another base.

It also owns the live base (a migration moves it with :meth:`RoundRunner.rebase`), the
public data the gates and the continual hooks read, and the **warm start**: under
``training.warm_start = "population"`` the base's public population adapter
(:mod:`personal.adapters.population`) is served while no adapter is active, so the first round
starts from its weights instead of a zero adapter (public: nothing is charged for it).
"""

from __future__ import annotations

import contextlib
import statistics
from datetime import UTC, datetime
from typing import Any, NamedTuple

from personal.adapters.artifact import Manifest
from personal.adapters.bank import bank_for
from personal.adapters.population import PopulationAdapter, warm_start_for
from personal.adapters.registry import AdapterRegistry
from personal.errors import BudgetExhausted, NoEligibleUnits, TooFewNewUnits
from personal.model.bank import bank_training, trained_parameters
from personal.model.base import BaseModel
from personal.model.batching import Batch
from personal.model.lora import get_adapter_weights, lora_off, set_adapter_weights
from personal.model.trunk import TrunkCache
from personal.policy import Policy
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise, RandomBytes
from personal.privacy.rules import rule_of, validation_noise_multiplier
from personal.public import PublicData, PublicSource, public_batches
from personal.store.log import InteractionLog
from personal.store.settings import StoreSettings
from personal.training.charged import charges_on_disk_full
from personal.training.continual import ContinualState
from personal.training.gates import (
    GateResult,
    decide,
    general_loss,
    split_held_out,
)
from personal.training.lock import round_lock
from personal.training.migration import check_store_base
from personal.training.round import Progress, RoundPlan, RoundReport, run_round
from personal.training.validation import Validation

import mlx.core as mx

TRIGGER_KEY = "update_trigger"
#: The sealed setting holding quantile clipping's current C (post-processing of DP releases).
CLIP_KEY = "adaptive_clip"
#: Examples per forward and backward pass of a round's DP step (``RoundPlan.max_rows``;
#: ``None``: one pass per step). Measured (docs/performance.md, ``benchmarks/round_trunk.py``):
#: a ``default`` round of 143 units × 4 examples 1.86× faster on SmolLM2-135M and 1.34× on
#: base-v1 than one pass (which pads 572 rows to 1024), at 0.86× and 0.27× the peak memory.
STEP_ROWS: int | None = 64


class Draw(NamedTuple):
    """The units of one round, drawn before it is planned (CSPRNG coins, no private data)."""

    new: list[str]  #: logged since the last round
    replayed: list[str]  #: drawn from the replay buffer of past units
    train: list[str]  #: the candidates the DP round draws from
    held_out: list[str]  #: the units the personal-gain gate is measured on


class RoundRunner:
    """Runs a store's DP personalization rounds on the live base model with LoRA.

    Args:
        interactions: the store's encrypted interaction log (a round decrypts only the units
            it samples and holds out).
        ledger: the store's privacy ledger: it admits, charges and records every round.
        registry: the store's adapter registry (a passing round saves and activates there).
        base: the live base model, LoRA injected; :meth:`rebase` replaces it.
        policy: the store's policy (trigger, σ, steps, gates, continual learning).
        settings: the store's sealed settings (trigger counts; the recorded base).
        continual: the replay buffer and EWC state of the store.
        public: where the public data for the live base comes from.

    Not thread-safe; :meth:`run` holds the store's round lock across processes.
    """

    def __init__(
        self,
        interactions: InteractionLog,
        ledger: Ledger,
        registry: AdapterRegistry,
        base: BaseModel,
        policy: Policy,
        settings: StoreSettings,
        continual: ContinualState,
        public: PublicSource,
    ) -> None:
        self.interactions, self.ledger, self.registry = interactions, ledger, registry
        self.base, self.policy, self.settings = base, policy, settings
        self.continual, self.public = continual, public
        self._public: tuple[list[Batch], list[Batch]] | None = None
        # The bare base's loss on the gate's public batches: both are fixed until a rebase.
        self._bare_general: float | None = None
        self._drawn: tuple[tuple[int, str], Draw] | None = None
        self._warm: PopulationAdapter | None = None

    # --- the live base and what depends on it ---------------------------------------------------

    @property
    def active_adapter(self) -> Manifest | None:
        """The active adapter's manifest, or ``None`` (serving the bare base)."""
        manifest = self.registry.active
        if manifest is None or manifest.base_fingerprint != self.base.fingerprint:
            return None
        return manifest

    @property
    def warm_start(self) -> PopulationAdapter | None:
        """The public population adapter served while no adapter is active (``None``: the
        policy's ``training.warm_start`` is ``"none"``, or the base ships none)."""
        return self._warm

    def load_active(self) -> None:
        """Hot-swap the active adapter into the live base, if it was trained on it; else the
        warm start, if the policy asks for one.

        Raises:
            PopulationAdapterMismatch: the base's population adapter does not fit it.
        """
        self._warm = warm_start_for(self.policy, self.base)
        # Never an adapter of another base on this one: that is a migration (Migrator).
        if self.active_adapter is not None:
            self.registry.load_into(self.base)
        elif self._warm is not None:
            set_adapter_weights(self.base.model, self._warm.weights)

    def rebase(self, new: BaseModel, warm: PopulationAdapter | None) -> None:
        """Serve ``new`` (LoRA injected, no adapter active): forget the old base's public
        batches and EWC anchor; ``new`` starts from ``warm``, its warm start
        (:func:`~personal.adapters.population.warm_start_for`), if any."""
        self.base, self._public, self._warm = new, None, warm
        self._bare_general = None
        self.continual.reset_ewc()
        if warm is not None:
            set_adapter_weights(new.model, warm.weights)

    def public_data(self) -> PublicData:
        """The public data for the live base (self-generated ones are made on first use)."""
        return self.public.for_base(self.base)

    def public_batches(self) -> tuple[list[Batch], list[Batch]]:
        """(held-out public batches for the gate, public batches for replay and Fisher)."""
        if self._public is None:
            tokenizer, data = self.base.tokenizer, self.public_data()
            size = self.policy.continual.public_batch_size
            self._public = (
                public_batches(tokenizer, data.gate),
                public_batches(tokenizer, data.train, batch_size=size),
            )
        return self._public

    def bare_general_loss(self) -> float:
        """The bare base's loss on the gate's public batches, measured once per base: the
        base is frozen and the batches are fixed, so every round's reference is the same."""
        if self._bare_general is None:
            public, _ = self.public_batches()
            with lora_off(self.base.model):
                self._bare_general = general_loss(self.base.model, public)
        return self._bare_general

    def save_and_activate(
        self, report: RoundReport | dict[str, Any], gate: GateResult, parent: int | None = None
    ) -> int:
        """Save the live adapter as the registry's next version and activate it."""
        active = self.active_adapter
        summary = report.public_summary() if isinstance(report, RoundReport) else report
        if active is None and self._warm is not None:  # this lineage began at the warm start
            summary = {**summary, "warm_start": self._warm.describe()}
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

    # --- before a round -------------------------------------------------------------------------

    def should_update(self, now: datetime | None = None) -> bool:
        """Whether the policy's trigger fires: enough new units, and rounds left today."""
        state = self.settings.get(TRIGGER_KEY, {"units": 0, "days": {}})
        new_units = len(self.interactions.units()) - state["units"]
        today = (now or datetime.now(UTC)).date().isoformat()
        return (
            new_units >= self.policy.training.min_new_units
            and state["days"].get(today, 0) < self.policy.training.max_rounds_per_day
        )

    def plan(self, candidates: int | None = None) -> RoundPlan:
        """The round's public parameters (``candidates`` default: the next round's own draw)."""
        privacy, training = self.policy.privacy, self.policy.training
        if candidates is None:
            self._drawn = (self._draw_key(), self._draw(None))
            candidates = len(self._drawn[1].train)
        plan = RoundPlan(
            noise_multiplier=privacy.noise_multiplier or 1.0,
            clip_norm=self.clip_norm(),
            expected_batch_size=training.expected_batch_size,
            steps=training.steps,
            learning_rate=training.learning_rate,
            optimizer=training.optimizer,
            max_tokens=training.max_tokens,
            examples_per_unit=training.examples_per_unit,
            quantile=privacy.quantile_clipping(),
            max_rows=STEP_ROWS,
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

    def clip_norm(self) -> float:
        """The C the next round starts from: the policy's ``clip_norm``, or under quantile
        clipping the C the last round on this base ended at under the same ``clip_norm``."""
        privacy = self.policy.privacy
        saved = self.settings.get(CLIP_KEY) if privacy.clip == "quantile" else None
        if (
            isinstance(saved, dict)
            and saved.get("policy_clip_norm") == privacy.clip_norm
            and saved.get("base_fingerprint") == self.base.fingerprint
        ):
            return float(saved["clip_norm"])
        return float(privacy.clip_norm)

    def _save_clip_norm(self, report: RoundReport) -> None:
        """Keep the C a quantile round ended at for the next round (public: a DP output)."""
        if report.clip_norm_final is None:
            return
        self.settings.set(
            CLIP_KEY,
            {
                "clip_norm": report.clip_norm_final,
                "policy_clip_norm": self.policy.privacy.clip_norm,
                "base_fingerprint": self.base.fingerprint,
            },
        )

    @property
    def drawn(self) -> Draw | None:
        """The draw the last :meth:`plan` made, which the next round runs on if nothing was
        logged or charged in between (``None``: none pending)."""
        return self._drawn[1] if self._drawn is not None else None

    def context(self) -> dict[str, Any]:
        """What the ledger records with a round: base, accountant, adapter, policy."""
        active = self.active_adapter
        return {
            "base_fingerprint": self.base.fingerprint,
            "accountant": self.policy.privacy.accountant,
            "adapter_version": active.version if active else None,
            "policy_digest": self.policy.digest(),
        }

    def budget(self) -> dict[str, Any]:
        """The privacy budget left, summarised over units (``Personalizer.budget``)."""
        contract = self.ledger.contract
        spent = self.ledger.epsilons()
        values = [float(spent.get(u, 0.0)) for u in self.interactions.units()] or [0.0]
        lifetime = float(contract.epsilon)
        units = list(self.interactions.units())
        excluded = 0
        if units:
            try:  # a pure check on past charges: which units the next round would admit
                selection = self.ledger.select(self.plan().charge(len(units)), units)
                excluded = len(units) - len(selection.eligible)
            except BudgetExhausted:
                excluded = len(units)
        return {
            "lifetime_epsilon": lifetime,
            "delta": float(contract.delta),
            "unit": contract.unit,
            "filter": contract.filter,
            "units": len(self.interactions.units()),
            "spent_max": max(values),
            "spent_median": statistics.median(values),
            "remaining_min": lifetime - max(values),
            "remaining_median": lifetime - statistics.median(values),
            "excluded_next_round": excluded,
        }

    def check_base(self) -> None:
        """Refuse to train another base than the store's (:func:`check_store_base`)."""
        check_store_base(self.settings, self.base)

    # --- the round ------------------------------------------------------------------------------

    def run(
        self,
        *,
        progress: Progress | None = None,
        now: datetime | None = None,
        noise: GaussianNoise | None = None,
        sampler_seed: int | None = None,
    ) -> RoundReport:
        """One round under the store's round lock, on the store's base (``Personalizer.update``)."""
        with round_lock(self.interactions.store.path):
            self.check_base()
            with charges_on_disk_full(self.ledger):  # a true message: what was charged
                return self.train(
                    progress=progress, now=now, noise=noise, sampler_seed=sampler_seed
                )

    def train(
        self,
        *,
        progress: Progress | None = None,
        now: datetime | None = None,
        noise: GaussianNoise | None = None,
        sampler_seed: int | None = None,
        max_budget_share: float | None = None,
    ) -> RoundReport:
        """The round; the caller holds the round lock. ``max_budget_share`` caps each unit's
        spend (a migration retrain); ``noise`` and ``sampler_seed`` are for tests only."""
        model = self.base.model
        # Under training.update = "bank" the round trains the base's public bank's mixing
        # coefficients (personal.model.bank); a missing or mismatched bank fails here, before
        # anything is read or charged.
        bank = bank_for(self.policy, self.base)
        previous = {k: mx.array(v) for k, v in get_adapter_weights(model).items()}
        context = self.context()
        draw = self._take_draw(sampler_seed)
        self._check_draw(draw, max_budget_share)
        plan = self.plan(len(draw.train))
        # Fail before anything is charged: the validation charge comes first and is never
        # refunded, so a round that cannot train must not open it (a pure check on past charges;
        # under quantile clipping also σ_b > σ/2 at the round's expected batch).
        charge = plan.charge(len(draw.train))
        admitted = self.ledger.select(charge, draw.train, max_share=max_budget_share).eligible
        if admitted:
            plan.gradient_noise_multiplier(charge.sample_rate * len(admitted))
        public, public_train = self.public_batches()
        # The frozen blocks before the adapted ones run once per row for the whole round: its
        # steps, public checks and gates read the same rows again and again (personal.model.trunk).
        trunk = TrunkCache.for_model(model)
        with trunk.attached() if trunk else contextlib.nullcontext():
            # The gate's reference: the active adapter (this round's step) or the bare base (the
            # total drift; the base is frozen, so measuring it before the round is the same).
            reference = self.policy.gates.general_reference
            if reference == "base":
                general_before = self.bare_general_loss()
            else:
                general_before = general_loss(model, public)
            validation = None
            if draw.held_out:
                validation = Validation.open(
                    self.base, self.interactions, self.ledger, draw.held_out,
                    sigma=validation_noise_multiplier(self.policy),
                    keep=self.policy.training.examples_per_unit, context=context,
                    max_share=max_budget_share,
                )  # fmt: skip
            report: RoundReport | None = None
            try:
                # The training round stays open until the gates decide: its finish entry records
                # their outcome and the adapter version it produced (the audit shows both).
                with bank_training(model, bank[0]) if bank else contextlib.nullcontext():
                    report = run_round(
                        model, self.base.tokenizer, self.interactions, self.ledger, plan,
                        context=context, noise=noise, sampler_seed=sampler_seed,
                        progress=progress, candidates=draw.train,
                        max_budget_share=max_budget_share, trunk=trunk,
                        hooks=lambda units: self.continual.hooks(model, plan, units, public_train),
                        finish=False,
                    )  # fmt: skip
                if bank:
                    report.update = {
                        "kind": "bank", "digest": bank[1].digest, "members": bank[0].members,
                        "trained_parameters": trained_parameters(bank[0]),
                    }  # fmt: skip
                general_after = general_loss(model, public)
                gain = validation.measure(noise) if validation else None
            except BaseException:
                set_adapter_weights(model, previous)
                if validation:
                    validation.abort()
                if report is not None:
                    done = {"completed_steps": plan.steps, **report.end_summary()}
                    self.ledger.finish_round(report.round_id, "aborted", done)
                raise
        gate = decide(
            general_before=general_before,
            general_after=general_after,
            max_regression=self.policy.gates.max_general_regression,
            personal_gain=gain,
            min_gain=self.policy.gates.min_personal_gain,
            held_out=len(validation.units) if validation else 0,
            reference=reference,
            personal_check=self.policy.gates.personal_check,
        )
        if validation:
            validation.finish(gate)
        report.gates, report.replayed = gate.to_dict(), len(draw.replayed)
        self._save_clip_norm(report)  # the last C stands whatever the gates say
        self._conclude(report, gate, previous, validation, plan.steps)
        self.continual.after_round(model, draw.new, gate.passed, public_train)
        self._count_round(len(self.interactions.units()), now)
        return report

    def _conclude(
        self,
        report: RoundReport,
        gate: GateResult,
        previous: dict[str, mx.array],
        validation: Validation | None,
        steps: int,
    ) -> None:
        """Activate the new adapter if the gate passed (else restore ``previous``), then close
        the training round with the outcome."""
        outcome = {
            "completed_steps": steps,
            "gate": "passed" if gate.passed else "refused",
            "adapter_version": None,
            "validation_round": validation.round_id if validation else None,
            **report.end_summary(),
        }
        try:
            if gate.passed:
                report.adapter_version = self.save_and_activate(report, gate)
                outcome["adapter_version"] = report.adapter_version
            else:
                set_adapter_weights(self.base.model, previous)  # the active adapter stays
        except BaseException:
            set_adapter_weights(self.base.model, previous)
            self.ledger.finish_round(report.round_id, "aborted", {**outcome, "gate": "passed"})
            raise
        self.ledger.finish_round(report.round_id, "completed", outcome)

    def _check_draw(self, draw: Draw, max_budget_share: float | None) -> None:
        """Refuse a round with nothing (or too little) new to train on: nothing is charged."""
        if not draw.new and not draw.replayed:
            raise NoEligibleUnits(
                "no new interactions since the last round: log some first (nothing was charged)"
            )
        wanted = self.policy.training.min_new_units
        if max_budget_share is None and len(draw.new) < wanted:
            # A public decision: the unit count is cleartext metadata (docs/privacy.md).
            raise TooFewNewUnits(
                f"{len(draw.new)} new interactions since the last round, fewer than the "
                f"policy's training.min_new_units = {wanted}: a round on so few would spend "
                "their privacy budget on an update that is mostly noise, so it did not run "
                "(nothing was charged). Log more interactions and train again"
            )

    def _take_draw(self, sampler_seed: int | None) -> Draw:
        """The draw :meth:`plan` showed if it still holds (and no seed is asked), else a new one."""
        drawn, self._drawn = self._drawn, None
        if sampler_seed is None and drawn is not None and drawn[0] == self._draw_key():
            return drawn[1]
        return self._draw(sampler_seed)

    def _draw_key(self) -> tuple[int, str]:
        """What a drawn round depends on: the log's last record and the ledger's head."""
        return self.interactions.last_id(), self.ledger.head.hash

    def _draw(self, seed: int | None) -> Draw:
        """The units of the next round (CSPRNG draws)."""
        self.continual.refresh()
        new_units, replayed = self.continual.candidates()
        candidates = [*new_units, *replayed]
        if self.policy.gates.personal_check == "off":  # nothing to measure: every unit trains
            return Draw(new_units, replayed, candidates, [])
        coins = RandomBytes(None if seed is None else seed + 1, purpose="holdout")
        train_units, held_out = split_held_out(candidates, coins)
        return Draw(new_units, replayed, train_units, held_out)

    def _count_round(self, units: int, now: datetime | None) -> None:
        state = self.settings.get(TRIGGER_KEY, {"units": 0, "days": {}})
        today = (now or datetime.now(UTC)).date().isoformat()
        # Only today's count matters for the trigger: older days are dropped.
        days = {today: state["days"].get(today, 0) + 1}
        self.settings.set(TRIGGER_KEY, {"units": units, "days": days})
