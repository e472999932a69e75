"""The sections of a policy: one frozen, validated dataclass per TOML table.

Each field carries its spec (type, range, default) and its docstring line; loading, cross-section
checks, the digest and TOML output live in :mod:`personal.policy`, which re-exports these
classes. Every key is documented in ``docs/policies.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from personal.policy_specs import (
    Choice,
    Layers,
    Number,
    Targets,
    Validated,
    one_of,
    spec_field,
)
from personal.privacy.quantile import QuantileClipping

# --- the sections ------------------------------------------------------------------------------

_EPS = Number(float, 0.1, 100.0)


@dataclass(frozen=True)
class PrivacyPolicy(Validated):
    """The privacy contract (what a reviewer checks first; docs/privacy.md).

    Attributes:
        unit: what DP protects: one ``"interaction"``, a ``"session"`` or a ``"day"``.
        lifetime_epsilon: ε each unit may lose over the device's whole life, in [0.1, 100].
        delta: δ of the lifetime guarantee, in (0, 1e-3]; keep it well below 1 / (units).
        round_epsilon: per-round target ε (noise is calibrated to spend at most this per round
            for a unit eligible in it), in (0, lifetime_epsilon]. Exactly one of this and
            ``noise_multiplier``; when neither is given in Python, ``noise_multiplier`` is 1.6.
        noise_multiplier: σ, a fixed noise multiplier (noise std / clip norm), in [0.1, 1000].
        clip_norm: C, the L2 bound on a unit's gradient contribution, in (0, 1000].
        accountant: ``"rdp"`` (default) or ``"prv"`` (tighter): how reports compose a unit's
            rounds as a fixed schedule, next to the filter's ε.
        filter: the per-unit filter rule: ``"renyi"`` (default; Rényi filter, uses the
            amplification by Poisson sampling) or ``"gaussian"`` (Gaussian-DP filter: exact for
            the Gaussian mechanism, tighter for full-batch rounds, q = 1; it ignores sampling,
            so keep ``"renyi"`` when q ≪ 1). Bound into the store's lifetime contract at its
            first round; docs/privacy-accounting.md, section 4. Left out of :meth:`to_dict`
            when ``"renyi"``, so policies written before the key keep their digest.
        clip: ``"fixed"`` (default: every step clips at ``clip_norm``) or ``"quantile"``
            (DP quantile clipping, Andrew et al. 2021: ``clip_norm`` is the first C, then each
            step's noisy count of unclipped units steers C towards the ``target_quantile`` of
            the unit gradient norms; the charge is the same σ; docs/privacy-accounting.md,
            "Adaptive clipping"). The three keys below only act under ``"quantile"``; all four
            are left out of :meth:`to_dict` at their defaults (older policies keep their digest).
        target_quantile: γ, the share of units C should leave unclipped, in (0, 1).
        clip_learning_rate: η of the geometric update ``C ← C·exp(−η(unclipped − γ))``,
            in (0, 1].
        clip_count_noise: σ_b, the count's noise std, as a fraction of the expected units per
            step B (σ_b = clip_count_noise · B), in (0, 1]. Must exceed noise_multiplier / 2 at
            the round's B: the gradient then takes σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½).
    """

    _PATH: ClassVar[str] = "privacy"
    _REQUIRED: ClassVar[tuple[str, ...]] = ("unit", "lifetime_epsilon", "delta")

    unit: str = spec_field(Choice(("interaction", "session", "day")), "interaction")
    lifetime_epsilon: float = spec_field(_EPS, 8.0)
    delta: float = spec_field(Number(float, 0.0, 1e-3, low_open=True), 1e-6)
    round_epsilon: float | None = spec_field(
        Number(float, 0.0, 100.0, low_open=True, optional=True), None
    )
    noise_multiplier: float | None = spec_field(Number(float, 0.1, 1000.0, optional=True), None)
    clip_norm: float = spec_field(Number(float, 0.0, 1000.0, low_open=True), 0.5)
    accountant: str = spec_field(Choice(("rdp", "prv")), "rdp")
    filter: str = spec_field(Choice(("renyi", "gaussian"), implicit="renyi"), "renyi")
    clip: str = spec_field(Choice(("fixed", "quantile"), implicit="fixed"), "fixed")
    target_quantile: float = spec_field(
        Number(float, 0.0, 1.0, low_open=True, high_open=True, implicit=0.5), 0.5
    )
    clip_learning_rate: float = spec_field(
        Number(float, 0.0, 1.0, low_open=True, implicit=0.2), 0.2
    )
    clip_count_noise: float = spec_field(
        Number(float, 0.0, 1.0, low_open=True, implicit=0.05), 0.05
    )

    def quantile_clipping(self) -> QuantileClipping | None:
        """The :class:`~personal.privacy.quantile.QuantileClipping` of ``clip = "quantile"``;
        ``None`` for a fixed clip norm."""
        if self.clip != "quantile":
            return None
        return QuantileClipping(
            target_quantile=self.target_quantile,
            learning_rate=self.clip_learning_rate,
            count_noise=self.clip_count_noise,
        )

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        keys = ("round_epsilon", "noise_multiplier")
        # Neither given: the default policy's measured noise (docs/dp-utility.md).
        problems = one_of(out, cls._PATH, keys, 1.6, required=strict, fallback=1)
        eps = out["round_epsilon"]
        if not problems and eps is not None and eps > out["lifetime_epsilon"]:
            problems.append(
                f"privacy.round_epsilon = {out['round_epsilon']!r} exceeds "
                f"privacy.lifetime_epsilon = {out['lifetime_epsilon']!r}: a round may spend "
                "at most the lifetime budget; lower round_epsilon."
            )
        return problems


@dataclass(frozen=True)
class LoRAPolicy(Validated):
    """The adapter trained (see :class:`personal.model.lora.LoRAConfig`).

    Attributes:
        rank: r, in [1, 256].
        scale: update multiplier ``y = Wx + scale·BAx``, in (0, 1000] (PEFT's
            ``lora_alpha = scale · rank``).
        dropout: dropout on the LoRA input while training, in [0, 1).
        targets: module-path suffixes inside a block (``None``, written ``"all-linear"``:
            every attention and MLP linear, MoE routers excluded).
        num_layers: adapt only the last N blocks, in [1, 1024] (``None``, written ``"all"``).
    """

    _PATH: ClassVar[str] = "training.lora"

    rank: int = spec_field(Number(int, 1, 256), 1)
    scale: float = spec_field(Number(float, 0.0, 1000.0, low_open=True), 20.0)
    dropout: float = spec_field(Number(float, 0.0, 1.0, high_open=True), 0.0)
    targets: tuple[str, ...] | None = spec_field(Targets(), ("self_attn.o_proj", "mlp.down_proj"))
    num_layers: int | None = spec_field(Layers(), 2)

    def to_lora_config(self) -> Any:
        """The :class:`~personal.model.lora.LoRAConfig` (imports MLX)."""
        from personal.model.lora import LoRAConfig

        return LoRAConfig(
            rank=self.rank,
            scale=self.scale,
            dropout=self.dropout,
            targets=self.targets,
            num_layers=self.num_layers,
        )


@dataclass(frozen=True)
class TrainingPolicy(Validated):
    """When a round runs and what it does.

    Attributes:
        min_new_units: new units logged since the last round before another may run,
            in [1, 1e6].
        max_rounds_per_day: at most this many rounds per (local) day, in [1, 1440].
        steps: DP-SGD steps per round, in [1, 100000].
        learning_rate: the optimiser's step size, in (0, 10].
        optimizer: ``"adam"`` or ``"sgd"`` (both only ever see noised gradients).
        expected_batch_size: B, expected units per step (sampling rate q = B / units),
            in [1, 65536].
        max_tokens: tokens per example (longer ones are truncated), in [8, 32768].
        examples_per_unit: most recent examples a unit contributes per step, in [1, 1024]
            (the unit is clipped as one whatever this is).
        warm_start: what a store with no active adapter serves and its first round starts
            from: ``"population"`` (default: the base's public population adapter, trained
            only on public synthetic users, so it charges nothing;
            :mod:`personal.adapters.population`; measured in docs/dp-utility.md) or ``"none"``
            (a zero adapter: the bare base).
        update: what a round trains: ``"lora"`` (default: the LoRA adapter's weights) or
            ``"bank"`` (K mixing coefficients per adapted layer of the base's public adapter
            bank, :mod:`personal.model.bank`; ``training.lora.rank`` must then be the bank's
            K·r, ``warm_start`` ``"none"`` and ``continual.ewc_lambda`` 0).
        step_guard: ``"public"`` (default) checks every optimiser update on a public batch
            and halves the learning rate while the update would break the general-regression
            gate (:mod:`personal.training.step_guard`; free post-processing), or ``"off"``.
        lora: the adapter (``[training.lora]``).
    """

    _PATH: ClassVar[str] = "training"

    min_new_units: int = spec_field(Number(int, 1, 1_000_000), 64)
    max_rounds_per_day: int = spec_field(Number(int, 1, 1440), 1)
    steps: int = spec_field(Number(int, 1, 100_000), 4)
    learning_rate: float = spec_field(Number(float, 0.0, 10.0, low_open=True), 0.6)
    optimizer: str = spec_field(Choice(("adam", "sgd")), "sgd")
    expected_batch_size: float = spec_field(Number(float, 1.0, 65536.0), 4096.0)
    max_tokens: int = spec_field(Number(int, 8, 32768), 64)
    examples_per_unit: int = spec_field(Number(int, 1, 1024), 4)
    warm_start: str = spec_field(Choice(("none", "population")), "population")
    update: str = spec_field(Choice(("lora", "bank"), implicit="lora"), "lora")
    step_guard: str = spec_field(Choice(("public", "off")), "public")
    lora: LoRAPolicy = field(default_factory=LoRAPolicy)


@dataclass(frozen=True)
class ContinualPolicy(Validated):
    """Forgetting mitigation: replay of past units and public text, and online EWC.

    Attributes:
        replay_share: share of each step's expected batch drawn from the private replay
            buffer (charged to those units), in [0, 1).
        buffer_capacity: units kept in the replay buffer (reservoir sampling), in [0, 1e6].
        public_replay_share: share of each step's batch drawn from public text (free),
            in [0, 1). ``replay_share + public_replay_share < 1``: part of every batch is new.
        public_distill_weight: weight of KL(base ‖ adapted) on public text, a pull towards the
            base's own predictions on general text (free; 0 disables it), in [0, 1e4].
        public_batch_size: public examples per step for public replay and distillation,
            in [1, 256]. Larger estimates the pull more precisely at the cost of one forward
            and backward pass over more examples per step.
        ewc_lambda: weight of the EWC penalty (0 disables EWC), in [0, 1e6].
        fisher_source: ``"public"`` (Fisher on public text) or ``"dp_gradients"`` (from the
            round's already-noised gradients); neither reads raw private data.
    """

    _PATH: ClassVar[str] = "continual"

    replay_share: float = spec_field(Number(float, 0.0, 1.0, high_open=True), 0.0)
    buffer_capacity: int = spec_field(Number(int, 0, 1_000_000), 1024)
    public_replay_share: float = spec_field(Number(float, 0.0, 1.0, high_open=True), 0.0)
    public_distill_weight: float = spec_field(Number(float, 0.0, 1e4), 5.0)
    public_batch_size: int = spec_field(Number(int, 1, 256), 32)
    ewc_lambda: float = spec_field(Number(float, 0.0, 1e6), 10.0)
    fisher_source: str = spec_field(Choice(("public", "dp_gradients")), "dp_gradients")

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        problems = []
        total = out["replay_share"] + out["public_replay_share"]
        if total >= 1.0:
            problems.append(
                f"continual.replay_share + continual.public_replay_share = {total:g}: must be "
                "< 1 so that part of every batch is new data; lower one of them."
            )
        if out["replay_share"] > 0 and out["buffer_capacity"] == 0:
            problems.append(
                f"continual.replay_share = {out['replay_share']:g} needs a replay buffer but "
                "continual.buffer_capacity = 0: raise the capacity or set replay_share = 0."
            )
        return problems


@dataclass(frozen=True)
class GatesPolicy(Validated):
    """What a new adapter must show before it becomes active.

    Attributes:
        max_general_regression: largest relative rise of the public gate-set loss vs the
            reference, in [0, 1] (0.01 = 1%).
        general_reference: what that rise is measured against: ``"active"`` (the adapter
            serving now: bounds each round's step, so the drift can add up over rounds) or
            ``"base"`` (the bare base model: bounds the total drift of every adapter served).
        personal_check: ``"held_out"`` (default) holds out ~10 % of a round's units and gates
            on their DP-noised personal gain (charged to them); ``"off"`` holds out nothing:
            every unit trains, no personal metric is released or charged, and the general gate
            alone decides (docs/dp-utility.md measures both).
        min_personal_gain: smallest relative drop of the DP-noised held-out personal loss,
            in [-1, 1] (0: no worse; -1 disables the check but still measures and charges it).
        validation_noise_multiplier: σ of the Gaussian noise on the personal metric, in
            [0.1, 1000]. Exactly one of this and ``validation_epsilon``; defaults to 4 when
            neither is given.
        validation_epsilon: per-round ε target of the personal metric instead, in
            (0, privacy.lifetime_epsilon]. The metric is charged to the held-out units.
    """

    _PATH: ClassVar[str] = "gates"

    max_general_regression: float = spec_field(Number(float, 0.0, 1.0), 0.01)
    general_reference: str = spec_field(Choice(("active", "base")), "base")
    personal_check: str = spec_field(Choice(("held_out", "off"), implicit="held_out"), "held_out")
    min_personal_gain: float = spec_field(Number(float, -1.0, 1.0), -0.5)
    validation_noise_multiplier: float | None = spec_field(
        Number(float, 0.1, 1000.0, optional=True), None
    )
    validation_epsilon: float | None = spec_field(
        Number(float, 0.0, 100.0, low_open=True, optional=True), None
    )

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        keys = ("validation_noise_multiplier", "validation_epsilon")
        return one_of(out, cls._PATH, keys, 4.0, required=False)


@dataclass(frozen=True)
class RetentionPolicy(Validated):
    """How long private data lives.

    Attributes:
        days: interactions older than this are erased, in [1, 36500].
        epoch_days: length of a data-key epoch (erasure crypto-shreds whole epochs),
            in [1, 3650] and <= ``days``.
    """

    _PATH: ClassVar[str] = "retention"

    days: int = spec_field(Number(int, 1, 36500), 365)
    epoch_days: int = spec_field(Number(int, 1, 3650), 30)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        if out["epoch_days"] > out["days"]:
            return [
                f"retention.epoch_days = {out['epoch_days']} exceeds retention.days = "
                f"{out['days']}: an epoch must end before its data expires; lower epoch_days."
            ]
        return []


@dataclass(frozen=True)
class MigrationPolicy(Validated):
    """What happens to the adapter when a new base model arrives.

    Attributes:
        strategy: ``"distill"`` (free: post-processing), ``"retrain"`` (charged),
            ``"both"`` (distill, then a budgeted retrain) or ``"drop"`` (start over).
        distill_steps: distillation steps, in [1, 1e6].
        distill_learning_rate: Adam learning rate of the distillation, in [1e-6, 1]. Its own
            key: distillation reads no private data and is not noised, so the DP round's
            (often plain-SGD) learning rate does not suit it.
        retrain_budget_share: share of each unit's *remaining* budget a retrain may spend,
            in [0, 1]; must be > 0 for ``retrain`` and ``both``.
    """

    _PATH: ClassVar[str] = "migration"

    strategy: str = spec_field(Choice(("distill", "retrain", "both", "drop")), "distill")
    distill_steps: int = spec_field(Number(int, 1, 1_000_000), 24)
    distill_learning_rate: float = spec_field(Number(float, 1e-6, 1.0), 1e-3)
    retrain_budget_share: float = spec_field(Number(float, 0.0, 1.0), 0.25)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        if out["strategy"] in ("retrain", "both") and out["retrain_budget_share"] == 0:
            return [
                f'migration.strategy = "{out["strategy"]}" retrains but '
                'migration.retrain_budget_share = 0: give it a share > 0 or use "distill".'
            ]
        return []


@dataclass(frozen=True)
class StorePolicy(Validated):
    """The encrypted store.

    Attributes:
        synchronous: SQLite durability, ``"FULL"`` (every commit survives power loss) or
            ``"NORMAL"`` (faster; may lose the last commits on power loss, never corrupts).
    """

    _PATH: ClassVar[str] = "store"

    synchronous: str = spec_field(Choice(("FULL", "NORMAL")), "FULL")


# --- the policy --------------------------------------------------------------------------------
