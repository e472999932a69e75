"""One differentially private training round over an encrypted interaction log.

The round, top to bottom (:func:`run_round`):

1. **Candidates**: the privacy units present in the log (cleartext metadata: no decryption).
2. **Filter**: the ledger's Rényi filter removes every unit whose charge for this round would
   take it past the lifetime budget. The decision uses only past charges and the round's
   public parameters, never the units' data (the condition of Feldman & Zrnic 2021, Thm. 3.1).
3. **Charge first**: the ledger records the round and charges every eligible unit *before* a
   single record is decrypted. A round that dies half-way stays charged: budget is wasted, never
   hidden.
4. **Steps**: each step Poisson-samples the eligible units with rate ``q`` (CSPRNG coins),
   decrypts only the sampled units' records, tokenises them, and runs one DP-SGD step
   (per-unit clipping, Gaussian noise from :mod:`personal.privacy.noise`, division by the
   *expected* batch size ``q·|eligible|``). A step that sampled nobody still releases noise.
5. **Close**: the ledger appends the round's completion (or abortion) entry.

Under quantile clipping (``RoundPlan.quantile``; :mod:`personal.privacy.quantile`) ``C`` is the
first step's clip norm and each step moves it; the ledger records that first C, the round's end
entry and report the last one, and the charge is the same σ.

The sampling rate is fixed before the filter from the number of *candidate* units
(``q = min(1, B / |candidates|)`` for an expected batch of B units); the unit count is
cleartext metadata of the store and treated as public (docs/privacy.md says so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from personal.errors import BudgetExhausted, ConfigError, NoEligibleUnits, SamplerMismatch
from personal.model.head import output_head
from personal.model.tokenizer import encode_interaction
from personal.model.trunk import TrunkCache
from personal.privacy.dpsgd import (
    DPConfig,
    DPStepReport,
    example_ce_loss,
    make_dp_step,
    scored_ce_loss,
    trunk_ce_loss,
)
from personal.privacy.filter import Charge
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise
from personal.privacy.quantile import QuantileClipping
from personal.privacy.sampler import PoissonSampler, chunk_units, pack_token_units
from personal.runtime import peak_memory_bytes, reset_peak_memory
from personal.store.log import InteractionLog
from personal.training.gradient_canary import GradientCanaries

import mlx.nn as nn
import mlx.optimizers as optim

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class RoundPlan:
    """The public parameters of one DP round, fixed before any private data is read.

    Attributes:
        noise_multiplier: σ (noise std / clip norm), > 0 for a private round.
        clip_norm: C, the L2 bound on each unit's gradient contribution (under ``quantile``:
            the first step's).
        expected_batch_size: B, expected units per step; ``q = min(1, B / |candidates|)``.
        steps: DP-SGD steps in the round.
        learning_rate: the optimiser's step size.
        optimizer: ``"sgd"`` or ``"adam"`` (both only see noised gradients).
        max_tokens: positions per example (longer interactions are truncated).
        examples_per_unit: the most recent examples a unit contributes (a session or a day can
            hold many; the unit is clipped as one whatever this is).
        purpose: what the ledger records the round as (``"training"``, ``"replay"``, ...).
        quantile: quantile clipping (``None``: C is fixed for the round).
        max_rows: examples per forward and backward pass: a step's sample is split into
            chunks of whole units of at most this many rows, whose clipped sums are added
            before the noise (the same release; :meth:`DPStep.__call__`). Bounds a step's
            peak memory, and avoids padding a large sample to the next power of two.
            ``None``: one pass.
    """

    noise_multiplier: float
    clip_norm: float
    expected_batch_size: float
    steps: int
    learning_rate: float
    optimizer: str = "adam"
    max_tokens: int = 128
    examples_per_unit: int = 4
    purpose: str = "training"
    quantile: QuantileClipping | None = None
    max_rows: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "noise_multiplier": self.noise_multiplier > 0,
            "clip_norm": self.clip_norm > 0,
            "expected_batch_size": self.expected_batch_size > 0,
            "steps": isinstance(self.steps, int) and self.steps >= 1,
            "learning_rate": self.learning_rate > 0,
            "max_tokens": isinstance(self.max_tokens, int) and self.max_tokens >= 2,
            "examples_per_unit": isinstance(self.examples_per_unit, int)
            and self.examples_per_unit >= 1,
            "max_rows": self.max_rows is None
            or (isinstance(self.max_rows, int) and self.max_rows >= 1),
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"RoundPlan.{name} is invalid: {value!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"RoundPlan.optimizer must be one of {OPTIMIZERS}.")
        if self.quantile is not None and not isinstance(self.quantile, QuantileClipping):
            raise ConfigError("RoundPlan.quantile must be a QuantileClipping or None.")

    def gradient_noise_multiplier(self, expected_size: float) -> float:
        """The gradient sum's noise multiplier at expected batch ``expected_size``: σ, or σ_Δ
        under quantile clipping (:class:`ConfigError` when σ_b ≤ σ/2 there)."""
        if self.quantile is None:
            return self.noise_multiplier
        return self.quantile.gradient_noise_multiplier(self.noise_multiplier, expected_size)

    def sample_rate(self, candidates: int) -> float:
        """``q`` for ``candidates`` units: the expected batch over the candidate count."""
        return min(1.0, self.expected_batch_size / max(candidates, 1))

    def charge(self, candidates: int) -> Charge:
        """What the round charges each eligible unit when drawing from ``candidates`` units."""
        return Charge(
            purpose=self.purpose, sample_rate=self.sample_rate(candidates),
            noise_multiplier=self.noise_multiplier, steps=self.steps,
        )  # fmt: skip


@dataclass
class RoundReport:
    """What one round did (local information for the app; never written into the ledger)."""

    round_id: int
    status: str
    candidates: int
    eligible: int
    excluded: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    expected_batch_size: float
    sampled_units: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    clipped_fraction: float = 0.0
    epsilon_max: float = 0.0
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    adapter_version: int | None = None
    gates: dict[str, Any] | None = None
    replayed: int = 0
    clip: str = "fixed"
    clip_norm_final: float | None = None
    #: the share of the learning rate the step guard left (``training.step_guard``) ...
    step_scale: float = 1.0
    #: ... and how many updates it undid to get there.
    guard_rejections: int = 0
    #: what the round trained when not the LoRA tensors: an adapter bank's coefficients
    #: (``training.update = "bank"``: kind, bank digest, members, trained parameters; public).
    update: dict[str, Any] | None = None

    def public_summary(self) -> dict[str, Any]:
        """Only what may leave the device with the adapter: public parameters and charges.

        Training losses, clipped fractions and realised batch sizes are computed on private
        data without noise; they stay in the local report and never go into a manifest.
        """
        keys: tuple[str, ...] = (
            "round_id", "status", "eligible", "noise_multiplier", "sample_rate", "steps",
            "clip_norm", "expected_batch_size", "epsilon_max",
        )  # fmt: skip
        if self.clip != "fixed":  # the last C is a DP release's output: public
            keys += ("clip", "clip_norm_final")
        if self.update is not None:  # the public bank the coefficients mix
            keys += ("update",)
        return {k: getattr(self, k) for k in keys}

    def end_summary(self) -> dict[str, Any]:
        """What the ledger's end entry of the round records besides its outcome: the last
        clip norm under quantile clipping (public; nothing for a fixed C)."""
        if self.clip == "fixed":
            return {}
        return {"clip": self.clip, "clip_norm_final": self.clip_norm_final}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (NaN losses of empty steps become ``None``)."""
        data = asdict(self)
        data["train_loss"] = [None if math.isnan(v) else v for v in self.train_loss]
        return data


Progress = Callable[[int, DPStepReport], None]


def _optimizer(plan: RoundPlan) -> optim.Optimizer:
    if plan.optimizer == "sgd":
        return optim.SGD(learning_rate=plan.learning_rate)
    return optim.Adam(learning_rate=plan.learning_rate)


def _unit_sequences(
    log: InteractionLog, tokenizer: Any, units: Sequence[str], keep: int
) -> tuple[list[str], list[list[list[int]]], list[list[int]]]:
    """The sampled units that still have records, with the token ids and response starts of
    their most recent ``keep`` records.

    A unit erased while the round runs (``personal erase --unit`` in another process) has no
    records left: it is dropped from the step, which is what a unit contributing nothing looks
    like to DP-SGD (its charge stands; nothing of its data is read).
    """
    by_unit: dict[str, list[Any]] = {u: [] for u in units}
    for record in log.iter_records(units=units):
        by_unit[record.unit].append(record)
    present, sequences, starts = [], [], []
    for unit in units:
        if not by_unit[unit]:
            continue
        recent = sorted(by_unit[unit], key=lambda r: (r.ts, r.id))[-keep:]
        encoded = [encode_interaction(tokenizer, r.prompt, r.response) for r in recent]
        present.append(unit)
        sequences.append([ids for ids, _ in encoded])
        starts.append([start for _, start in encoded])
    return present, sequences, starts


def run_round(
    model: nn.Module,
    tokenizer: Any,
    log: InteractionLog,
    ledger: Ledger,
    plan: RoundPlan,
    *,
    context: dict[str, Any] | None = None,
    noise: GaussianNoise | None = None,
    sampler_seed: int | None = None,
    progress: Progress | None = None,
    canaries: GradientCanaries | None = None,
    sampler: PoissonSampler[str] | None = None,
    candidates: Sequence[str] | None = None,
    hooks: Callable[[int], dict[str, Any]] | None = None,
    max_budget_share: float | None = None,
    finish: bool = True,
    trunk: TrunkCache | None = None,
) -> RoundReport:
    """Run one DP round on ``model``'s trainable parameters (inject LoRA and freeze first).

    Args:
        model: the live model; its trainable parameters are updated in place.
        tokenizer: the base model's tokenizer (chat format).
        log: the store's interaction log (the round decrypts only sampled units).
        ledger: the store's privacy ledger; charges every eligible unit before training.
        plan: σ, C, batch, steps, optimiser.
        context: what the ledger records with the round (base fingerprint, adapter version,
            policy digest, accountant, ...).
        noise: the noise source; ``None`` is the CSPRNG (a seeded one is for tests only).
        sampler_seed: ``None`` for CSPRNG coins; an integer for tests only.
        progress: called with ``(step, report)`` after each step.
        canaries: audit only (:mod:`personal.canary_audit`): units whose gradient is
            replaced by a gradient canary.
        candidates: the units the round may draw from (default: every unit in the log).
        hooks: ``hooks(num_eligible)`` returns ``on_release`` / ``transform`` / ``guard`` for
            the DP step (post-processing of the released gradient: replay of public data, EWC,
            Fisher, the step-size guard).
        sampler: a custom sampler; it must be a :class:`PoissonSampler` at the round's rate
            ``q``, the only sampling the charge is valid for.
        max_budget_share: exclude units the round would cost more than this share of their
            remaining budget (a migration retrain's ``retrain_budget_share``).
        finish: close the ledger round as ``completed`` after the last step. ``False`` leaves
            it open for the caller, who records the gates' outcome and the adapter version it
            produced with :meth:`Ledger.finish_round` (an error during training still closes
            it as ``aborted`` here).
        trunk: the round's cache of the frozen blocks' outputs (:class:`TrunkCache`, e.g. one
            the caller keeps attached for its gates); default: a new one when the model has a
            frozen trunk (:func:`~personal.model.trunk.trunk_depth`).

    Raises:
        NoEligibleUnits: the log holds no unit at all.
        BudgetExhausted: every unit has spent its lifetime budget (nothing is charged).
        SamplerMismatch: ``sampler`` is not Poisson at rate ``q`` (nothing is charged).
    """
    started = time.perf_counter()
    reset_peak_memory()
    candidates = log.units() if candidates is None else list(candidates)
    if not candidates:
        raise NoEligibleUnits(
            "the store holds no interactions to train on: log some first (nothing was charged)"
        )
    charge = plan.charge(len(candidates))
    q = charge.sample_rate
    sampler = _check_sampler(sampler, q, sampler_seed)
    selection = ledger.select(charge, candidates, max_share=max_budget_share)
    eligible = [str(u) for u in selection.eligible]
    if not eligible:
        raise BudgetExhausted(
            f"all {len(candidates)} units have spent their lifetime privacy budget: log new "
            "interactions, or erase old ones (nothing was charged for this round)"
        )
    plan.gradient_noise_multiplier(q * len(eligible))  # quantile: σ_b > σ/2, before the charge
    round_id = ledger.begin_round(
        charge, eligible, **{"clip_norm": plan.clip_norm, **(context or {})}
    )
    report = RoundReport(
        round_id, "running", len(candidates), len(eligible), len(candidates) - len(eligible),
        plan.noise_multiplier, q, plan.steps, plan.clip_norm, q * len(eligible),
    )  # fmt: skip
    if plan.quantile is not None:
        report.clip, report.clip_norm_final = "quantile", plan.clip_norm
    try:
        _train(
            model, tokenizer, log, plan, eligible, report, noise, sampler, progress, canaries,
            hooks(len(eligible)) if hooks else {}, trunk,
        )  # fmt: skip
    except BaseException:
        done = {"completed_steps": len(report.train_loss), **report.end_summary()}
        ledger.finish_round(round_id, "aborted", done)
        raise
    report.status = "completed"
    report.epsilon_max = max(ledger.epsilon_of(u) for u in eligible)
    report.seconds = round(time.perf_counter() - started, 3)
    report.peak_memory_bytes = peak_memory_bytes()
    if finish:
        done = {"completed_steps": plan.steps, **report.end_summary()}
        ledger.finish_round(round_id, "completed", done)
    return report


def _check_sampler(
    sampler: PoissonSampler[str] | None, q: float, seed: int | None
) -> PoissonSampler[str]:
    """The round's sampler: Poisson at exactly rate ``q``, or :class:`SamplerMismatch`."""
    if sampler is None:
        return PoissonSampler(q, seed=seed)
    if type(sampler) is not PoissonSampler:
        raise SamplerMismatch(
            f"{type(sampler).__name__} is not the Poisson sampler the accountant analyses; "
            "shuffled or fixed-size batches would make the charged ε wrong. Use PoissonSampler "
            "(nothing was charged)"
        )
    if sampler.sample_rate != q:
        raise SamplerMismatch(
            f"the sampler's rate {sampler.sample_rate} differs from the round's q={q}, which the "
            "charge is computed for; build PoissonSampler(q) (nothing was charged)"
        )
    return sampler


def _train(
    model: nn.Module,
    tokenizer: Any,
    log: InteractionLog,
    plan: RoundPlan,
    eligible: list[str],
    report: RoundReport,
    noise: GaussianNoise | None,
    sampler: PoissonSampler[str],
    progress: Progress | None,
    canaries: GradientCanaries | None,
    step_hooks: dict[str, Any],
    trunk: TrunkCache | None,
) -> None:
    # Logits at the reply's positions only where the model allows it (same gradients, less
    # work: docs/performance.md); gradient canaries read full-width arrays.
    scored_only = canaries is None and output_head(model) is not None
    # The frozen blocks before the adapted ones run once per row and round, not once per step
    # (same gradients: personal.model.trunk).
    if not scored_only:
        trunk = None
    elif trunk is None:
        trunk = TrunkCache.for_model(model)
    if canaries:
        loss = canaries.loss(plan.clip_norm)
    elif trunk is not None:
        loss = trunk_ce_loss(trunk.depth)
    else:
        loss = scored_ce_loss if scored_only else example_ce_loss
    config = DPConfig(plan.noise_multiplier, plan.clip_norm, quantile=plan.quantile)
    step = make_dp_step(
        model, _optimizer(plan), config, noise=noise, loss=loss, **step_hooks
    )  # fmt: skip
    clipped = 0.0
    for t in range(plan.steps):
        sample = sampler.sample(eligible)
        units, sequences, starts = (
            _unit_sequences(log, tokenizer, sample.units, plan.examples_per_unit)
            if len(sample)
            else ([], [], [])
        )
        if not units:  # none drawn, or every drawn unit was erased meanwhile
            result = step.empty(sample.expected_size)
        else:
            groups = (
                chunk_units([len(rows) for rows in sequences], plan.max_rows)
                if plan.max_rows is not None and canaries is None
                else [list(range(len(units)))]
            )
            chunks = []
            for group in groups:
                batch = pack_token_units(
                    [sequences[i] for i in group], sample.expected_size,
                    loss_starts=[starts[i] for i in group], width=plan.max_tokens,
                    scored_only=scored_only,
                )  # fmt: skip
                if canaries:
                    batch = canaries.attach(batch, units, sequences)
                elif trunk is not None:
                    inputs, *rest = batch.arrays
                    batch = replace(batch, arrays=(inputs, trunk.hidden(inputs), *rest))
                chunks.append(batch)
            result = step(chunks)
        clipped += result.clipped_fraction * result.num_units
        if plan.quantile is not None:
            report.clip_norm_final = step.clip_norm
        report.sampled_units.append(result.num_units)
        report.train_loss.append(float(result.loss))
        report.step_scale, report.guard_rejections = step.step_scale, step.guard_rejections
        if progress is not None:
            progress(t, result)
    report.clipped_fraction = clipped / max(sum(report.sampled_units), 1)
