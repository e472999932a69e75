"""DP-SGD for the trainable parameters (the LoRA adapter) of any ``mlx.nn.Module``.

One step, reading top to bottom like :meth:`DPStep.__call__`:

1. per-example gradients of the trainable parameters (the LoRA adapter) for every row of a
   :class:`~personal.privacy.sampler.UnitBatch`, in one batched backward pass through the
   frozen base (:mod:`personal.model.per_example`: dense, quantized and MoE bases alike);
2. per-*unit* aggregation: the rows of one privacy unit are summed and the unit's total is
   clipped to L2 norm ``C`` as one contribution (a unit with several examples is still one);
   padded rows have weight 0 and contribute exactly nothing;
3. the sum of clipped unit gradients, whose L2 sensitivity to adding or removing a unit is C;
4. Gaussian noise N(0, σ²C²) per coordinate, drawn by :mod:`personal.privacy.noise` outside any
   compiled graph (the only place noise comes from);
5. division by the *expected* batch size ``q · |eligible|`` (never the realised one);
6. the optimiser (SGD, Adam, ...) on the noised gradient: post-processing, no privacy cost.

**Quantile clipping** (``DPConfig(quantile=QuantileClipping(...))``; Andrew et al. 2021,
:mod:`personal.privacy.quantile`): each step also releases the noisy count of its units left
unclipped (``Σ 1[‖g_i‖ ≤ C] − ½`` plus N(0, σ_b²), drawn by the same noise source), the gradient
sum takes the larger noise multiplier σ_Δ so that the pair is one Gaussian mechanism with
multiplier σ (the charge is unchanged), and the next step clips at the updated C
(:attr:`DPStep.clip_norm`).

Two optional hooks see the released gradient between steps 5 and 6, both post-processing of
the DP output (no privacy cost, no change to the analysis): ``on_release(grads)`` observes the
noised, normalised gradient (e.g. :class:`personal.training.ewc.FisherFromNoisedGradients`), then
``transform(grads, params)`` may return a modified gradient for the optimiser (e.g.
:func:`personal.training.ewc.ewc_gradient_transform` adds the EWC penalty's gradient). Both take
and give flat ``name -> array`` dicts of the trainable parameters.

An optional ``guard`` (:class:`~personal.model.guarded_update.StepGuard`; e.g.
``personal.training.step_guard``) checks each optimiser update on public data: a rejected
update is undone and retried at half the learning rate, down to ``2**-max_halvings`` of it
(then the step is skipped), and the smaller rate is kept for the rest of the steps
(:attr:`DPStep.step_scale`). It too sees only the released gradient and public data:
post-processing, no privacy cost.

Steps 1-3 are one ``mx.compile`` graph; :func:`~personal.privacy.sampler.pack_units` pads rows
to power-of-two buckets so only a few shapes are ever compiled. The accountant charges every
eligible unit ``(σ, q)`` per step; that is done by the ledger, not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

from personal.errors import ConfigError
from personal.model.fastmath import cross_entropy
from personal.model.guarded_update import GuardedUpdate, StepGuard
from personal.model.head import scored_logits
from personal.model.mlx_typing import array_sum, flat_params
from personal.model.per_example import RowLoss, per_example_grads
from personal.model.trunk import injected
from personal.privacy.noise import GaussianNoise
from personal.privacy.quantile import QuantileClipping
from personal.privacy.sampler import UnitBatch

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

#: ``loss(model, *arrays) -> (S,)`` per-row losses of a batch (see :data:`RowLoss`).
ExampleLoss = RowLoss
# name -> noised, normalised gradient; called once per step (empty steps included).
ReleaseHook = Callable[[dict[str, mx.array]], None]
# (noised gradient, current trainable parameters) -> the gradient the optimiser sees.
GradientTransform = Callable[[dict[str, mx.array], dict[str, mx.array]], dict[str, mx.array]]


# clipped_unit_sum bound to a model and loss: (arrays, units, valid, clip_norm) -> its result.
_UnitSum = Callable[
    [tuple[mx.array, ...], mx.array, mx.array, float | mx.array],
    tuple[dict[str, mx.array], mx.array, mx.array, mx.array],
]


@runtime_checkable
class NoiseObserver(Protocol):
    """An ``on_release`` hook that must know each release's noise std (it changes from step
    to step under quantile clipping), e.g. the bias correction of
    :class:`personal.training.ewc.FisherFromNoisedGradients`."""

    def observe_noise_std(self, std: float) -> None:
        """Called with the std of the noise on the summed gradient, before ``on_release``."""


# The clip target is shrunk by one part in 2^16 so that float32 rounding in the norm and the
# rescaling cannot push a unit's contribution above C.
CLIP_SAFETY = 1.0 - 2.0**-16


@dataclass(frozen=True)
class DPConfig:
    """The privacy parameters of a DP-SGD step.

    Attributes:
        noise_multiplier: σ; the noise std is σ·C. 0 disables noise (no privacy: tests only).
        clip_norm: C > 0, the L2 bound on each unit's gradient contribution (with ``quantile``:
            the first step's; the step adapts it).
        quantile: quantile clipping's parameters (``None``: C is fixed). The released pair
            (gradient sum, unclipped count) is a Gaussian mechanism with multiplier σ.
    """

    noise_multiplier: float
    clip_norm: float
    quantile: QuantileClipping | None = None

    def __post_init__(self) -> None:
        sigma, clip = self.noise_multiplier, self.clip_norm
        if not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
            raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {sigma!r}.")
        if not isinstance(clip, int | float) or not math.isfinite(clip) or clip <= 0:
            raise ConfigError(f"clip_norm must be a finite number > 0, got {clip!r}.")
        if self.quantile is not None and sigma == 0:
            raise ConfigError("quantile clipping needs noise: noise_multiplier must be > 0.")

    @property
    def noise_std(self) -> float:
        """σ·C, the standard deviation of the noise on the summed gradient (fixed C; under
        quantile clipping each step's is σ_Δ·C, :attr:`DPStepReport.noise_std`)."""
        return float(self.noise_multiplier * self.clip_norm)

    def gradient_noise_multiplier(self, expected_size: float) -> float:
        """The multiplier of the gradient sum's noise: σ, or σ_Δ > σ under quantile clipping
        (its count takes the rest; raises :class:`ConfigError` if σ_b ≤ σ/2 at this size)."""
        if self.quantile is None:
            return float(self.noise_multiplier)
        return self.quantile.gradient_noise_multiplier(self.noise_multiplier, expected_size)


@dataclass(frozen=True)
class DPStepReport:
    """What one DP step did. ``loss`` and ``clipped_fraction`` are computed from private data
    without noise: for local logs and debugging only; never base decisions on them or let
    them leave the device (or charge them to the ledger).

    Attributes:
        num_examples: real rows in the batch.
        num_units: units in the batch.
        slots: padded rows (the compiled shape).
        expected_size: the normaliser q·|eligible|.
        clipped_fraction: fraction of units whose gradient norm exceeded C.
        loss: mean per-example loss over real rows (NaN for an empty batch).
        noise_std: the std of the noise on the summed gradient: σ·C (σ_Δ·C under quantile
            clipping).
        nonfinite_units: units dropped because their gradient had a NaN or infinity.
        clip_norm: the C this step clipped at (``None``: not recorded).
        noisy_count: quantile clipping's released count b̃ (a DP output; ``None``: fixed C).
    """

    num_examples: int
    num_units: int
    slots: int
    expected_size: float
    clipped_fraction: float
    loss: float
    noise_std: float
    nonfinite_units: int = 0
    clip_norm: float | None = None
    noisy_count: float | None = None


def example_ce_loss(
    model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array
) -> mx.array:
    """Per-row loss for language models: the token-mean cross-entropy of each row.

    Args:
        model: maps ``(S, T)`` token ids to ``(S, T, V)`` logits.
        inputs: ``(S, T)`` token ids.
        targets: ``(S, T)`` next tokens.
        mask: ``(S, T)`` 1 where the target counts; an all-zero row gives loss 0, gradient 0.

    Returns:
        ``(S,)`` losses, row ``s``'s depending on row ``s`` only.
    """
    logits = model(inputs).astype(mx.float32)  # (S, T, V)
    losses = cross_entropy(logits, targets)  # (S, T)
    return (losses * mask).sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1.0)


def scored_ce_loss(
    model: nn.Module,
    inputs: mx.array,
    positions: mx.array,
    targets: mx.array,
    mask: mx.array,
) -> mx.array:
    """:func:`example_ce_loss` computing logits at the scored positions only.

    The body runs on every position (attention needs them); the vocabulary projection and its
    softmax run on ``K`` positions per row instead of ``T``. Same values and gradients as
    :func:`example_ce_loss` on the full-width arrays (a test checks it); arrays come from
    :func:`~personal.privacy.sampler.pack_token_units` with ``scored_only=True``.

    Args:
        model: an mlx-lm model whose :func:`~personal.model.head.output_head` is not ``None``.
        inputs: ``(S, T)`` token ids.
        positions: ``(S, K)`` the time index of each scored slot.
        targets: ``(S, K)`` the next token at each slot.
        mask: ``(S, K)`` 1 where the slot is a real scored position.

    Returns:
        ``(S,)`` losses, row ``s``'s depending on row ``s`` only.
    """
    logits = scored_logits(model, inputs, positions).astype(mx.float32)  # (S, K, V)
    losses = cross_entropy(logits, targets)  # (S, K)
    return (losses * mask).sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1.0)


def trunk_ce_loss(depth: int) -> ExampleLoss:
    """:func:`scored_ce_loss` from cached trunk outputs: ``loss(model, inputs, hidden,
    positions, targets, mask)``, with ``hidden`` ``(S, T, D)`` the states entering block
    ``depth`` (:class:`~personal.model.trunk.TrunkCache`); only the blocks from ``depth`` on,
    the adapted ones, run. Same values and gradients as :func:`scored_ce_loss` (a test)."""

    def loss(
        model: nn.Module,
        inputs: mx.array,
        hidden: mx.array,
        positions: mx.array,
        targets: mx.array,
        mask: mx.array,
    ) -> mx.array:
        with injected(model, depth, hidden):
            return scored_ce_loss(model, inputs, positions, targets, mask)

    return loss


def clipped_unit_sum(
    model: nn.Module,
    loss: ExampleLoss,
    arrays: tuple[mx.array, ...],
    units: mx.array,
    valid: mx.array,
    clip_norm: float | mx.array,
) -> tuple[dict[str, mx.array], mx.array, mx.array, mx.array]:
    """Steps 1-3: the sum over units of per-unit clipped gradients (pure; compiled by DPStep).

    Args:
        model: its trainable parameters are differentiated; the model is left as it was.
        loss: ``loss(model, *arrays) -> (S,)`` per-row losses.
        arrays: per-example inputs, each ``(S, ...)``.
        units: ``(S,)`` int32 unit slot of each row.
        valid: ``(S,)`` 1.0 for real rows, 0.0 for padding.
        clip_norm: C.

    Returns:
        ``(sums, unit_norms, unit_rows, losses)``: ``name -> array`` of the clipped sum (the
        trainable parameters' shapes), ``(S,)`` unclipped unit norms (NaN for a unit that was
        dropped because a row gradient or the squared norm was not finite), ``(S,)`` rows
        per unit slot, and ``(S,)`` per-row losses.
    """
    losses, grads = per_example_grads(model, loss, arrays)
    slots = units.shape[0]
    # (S rows, S unit slots): row i belongs to unit slot units[i]; padding rows are all zero.
    member = (units[:, None] == mx.arange(slots)[None, :]).astype(mx.float32) * valid[:, None]
    flat = [(name, g.reshape(slots, -1)) for name, g in grads.items()]  # each (S, P_leaf)
    # Rows whose gradient is not finite are selected away, not multiplied by 0 (0 * inf is
    # NaN and would poison every unit through the matmul below). Padding rows are selected
    # away too: a user loss that divides by an all-zero mask gives NaN there.
    row_sq = array_sum((g * g).sum(axis=-1) for _, g in flat)  # (S,)
    row_ok = mx.isfinite(row_sq) & (valid > 0)  # (S,)
    unit_grads = [member.T @ mx.where(row_ok[:, None], g, 0.0) for _, g in flat]  # (S, P_leaf)
    sq_norms = array_sum((u * u).sum(axis=-1) for u in unit_grads)  # (S,)
    # A unit with a non-finite row or squared norm contributes nothing: that is a function of
    # its own data only, so the sensitivity stays C, and the update does not become NaN.
    bad_rows = member.T @ (~row_ok).astype(mx.float32)  # (S,) padding rows have no unit
    finite = mx.isfinite(sq_norms) & (bad_rows == 0)  # (S,)
    norms = mx.sqrt(mx.where(finite, sq_norms, 0.0))
    factors = mx.minimum(1.0, clip_norm * CLIP_SAFETY / mx.maximum(norms, 1e-30))
    factors = mx.where(finite, factors, 0.0)  # (S,)
    sums = {
        name: (factors @ mx.where(finite[:, None], u, 0.0)).reshape(grads[name].shape[1:])
        for (name, _), u in zip(flat, unit_grads, strict=True)
    }
    return sums, mx.where(finite, norms, mx.nan), member.sum(axis=0), losses


class DPStep:
    """A DP-SGD step bound to a model, optimiser, loss and noise source; see the module doc.

    Build it with :func:`make_dp_step`; call it with a :class:`UnitBatch` per step, or
    :meth:`empty` when the Poisson sample drew no unit (the step must still happen: releasing
    pure noise is part of the mechanism the accountant analyses).

    :attr:`clip_norm` is the C of the next step: the configuration's, or under quantile
    clipping the one the last release steered it to (set it to resume from an earlier C).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        config: DPConfig,
        loss: ExampleLoss,
        noise: GaussianNoise,
        compile: bool,
        on_release: ReleaseHook | None = None,
        transform: GradientTransform | None = None,
        guard: StepGuard | None = None,
    ) -> None:
        self.model, self.optimizer, self.config, self.noise = model, optimizer, config, noise
        self.on_release, self.transform, self.guard = on_release, transform, guard
        self.clip_norm = float(config.clip_norm)
        #: Draw each step's noise on a background thread while the gradients are computed
        #: (True), or after them (False, the default: see docs/performance.md).
        self.prefetch_noise = False
        self._noisy_count: float | None = None
        optimizer.init(model.trainable_parameters())
        self._guarded = None if guard is None else GuardedUpdate(model, optimizer, guard)
        core: _UnitSum = partial(clipped_unit_sum, model, loss)
        update = self._update
        if compile:
            # The RNG state is captured so that LoRA dropout draws new masks every step (dropout
            # is not privacy noise: the noise comes from personal.privacy.noise only).
            state = [model.state, mx.random.state]
            core = partial(mx.compile, inputs=state, outputs=state)(core)
            full = [model.state, optimizer.state]
            update = partial(mx.compile, inputs=full, outputs=full)(update)
        self._core, self._apply = core, update

    def _update(self, flat_grads: dict[str, mx.array], scale: mx.array) -> None:
        grads = tree_unflatten([(name, value * scale) for name, value in flat_grads.items()])
        self.optimizer.update(self.model, grads)

    @property
    def _noise_size(self) -> int:
        """Values in one gradient release: every trainable parameter."""
        return sum(v.size for _, v in flat_params(self.model.trainable_parameters()))

    @property
    def step_scale(self) -> float:
        """The share of the optimiser's learning rate the guard settled on (1.0 without one)."""
        return 1.0 if self._guarded is None else self._guarded.step_scale

    @property
    def guard_rejections(self) -> int:
        """Updates the guard undid (each retried at half the rate, or skipped at the end)."""
        return 0 if self._guarded is None else self._guarded.rejections

    def _optimise(self, flat_grads: dict[str, mx.array], scale: mx.array) -> None:
        """The optimiser's update; under a guard, undone and retried at half the learning rate
        while the guard rejects it (:class:`~personal.model.guarded_update.GuardedUpdate`)."""
        if self._guarded is None:
            self._apply(flat_grads, scale)
        else:
            self._guarded(lambda: self._apply(flat_grads, scale))

    def __call__(self, batch: UnitBatch | Sequence[UnitBatch]) -> DPStepReport:
        """One DP-SGD step on ``batch``; returns its (non-private) report.

        ``batch`` may be a sequence of chunks of one Poisson sample (every unit whole in one
        chunk, the same expected size: :func:`~personal.privacy.sampler.chunk_units`): each
        chunk's clipped unit sum is computed in its own pass and the sums are added before the
        noise. The release is the same (a sum of per-unit clipped gradients, sensitivity C);
        the peak memory is a chunk's, and no pass pads a large sample to the next power of two.

        Raises:
            ConfigError: the batch's expected size is not a positive number, or the chunks
                disagree on it.
        """
        parts = [batch] if isinstance(batch, UnitBatch) else list(batch)
        if not parts:
            raise ConfigError("A DP step needs a batch (or at least one chunk).")
        expected = parts[0].expected_size
        _check_expected_size(expected)
        if any(part.expected_size != expected for part in parts):
            raise ConfigError("The chunks of one step must share the sample's expected size.")
        slots = sum(part.slots for part in parts)
        units = sum(part.num_units for part in parts)
        if units == 0:
            return self.empty(expected, slots=slots)
        # The noise multiplier first: a quantile step that cannot be private fails untouched.
        multiplier = self.config.gradient_noise_multiplier(expected)
        if multiplier > 0 and self.prefetch_noise:
            # The noise depends on nothing private: draw it while MLX computes the gradients.
            self.noise.prefetch(self._noise_size)
        limit = self.clip_norm
        clip = mx.array(limit, dtype=mx.float32)
        sums: dict[str, mx.array] = {}
        clipped = nonfinite = kept_count = loss_sum = 0.0
        for part in parts:
            if part.num_units == 0:
                continue
            part_sums, norms, rows, losses = self._core(part.arrays, part.units, part.valid, clip)
            real = rows > 0  # (S,) unit slots that hold a unit
            over = (norms > limit * CLIP_SAFETY) & real  # NaN (dropped) compares False
            # Σ (1[‖g_i‖ ≤ C] − ½) over the units (quantile clipping): ±½ each (sensitivity
            # ½); a dropped unit contributes 0, a function of its own data only.
            kept = real & ~mx.isnan(norms)
            stats = mx.stack([
                over.sum(), (mx.isnan(norms) & real).sum(),
                mx.where(kept, mx.where(over, -0.5, 0.5), 0.0).sum(), (losses * part.valid).sum(),
            ]).astype(mx.float32)  # fmt: skip
            sums = part_sums if not sums else {k: sums[k] + v for k, v in part_sums.items()}
            mx.eval(sums, stats)
            over_n, nan_n, kept_n, loss_n = np.asarray(stats, dtype=np.float64).tolist()
            clipped, nonfinite = clipped + over_n, nonfinite + nan_n
            kept_count, loss_sum = kept_count + kept_n, loss_sum + loss_n
        count = kept_count if self.config.quantile is not None else None
        noise_std = self._release(sums, expected, slots, multiplier, count)
        examples = sum(part.num_examples for part in parts)
        return DPStepReport(
            num_examples=examples,
            num_units=units,
            slots=slots,
            expected_size=expected,
            clipped_fraction=clipped / units,
            loss=loss_sum / examples,
            noise_std=noise_std,
            nonfinite_units=int(nonfinite),
            clip_norm=limit,
            noisy_count=self._noisy_count,
        )

    def empty(self, expected_size: float, *, slots: int = 0) -> DPStepReport:
        """The step for a sample that drew no unit: the update is noise alone (and, under
        quantile clipping, the count is noise alone too)."""
        _check_expected_size(expected_size)
        multiplier = self.config.gradient_noise_multiplier(expected_size)
        limit = self.clip_norm
        zeros = {k: mx.zeros_like(v) for k, v in flat_params(self.model.trainable_parameters())}
        count = None if self.config.quantile is None else 0.0
        std = self._release(zeros, expected_size, max(slots, 1), multiplier, count)
        return DPStepReport(
            0, 0, slots, expected_size, 0.0, math.nan, std, clip_norm=limit,
            noisy_count=self._noisy_count,
        )  # fmt: skip

    def _release(
        self,
        sums: dict[str, mx.array],
        expected_size: float,
        slots: int,
        multiplier: float,
        count: float | None,
    ) -> float:
        """Steps 4-6: noise (outside the graph), normalise by the expected size, optimise;
        under quantile clipping also release ``count`` and move C. Returns the noise std."""
        # Each coordinate of the sum is at most C per unit, and there are at most `slots`
        # units: a bound from the configuration, never from the data.
        clip = self.clip_norm
        std = float(multiplier * clip)
        noised = self.noise.privatize_tree(sums, std, bound=slots * clip)
        self._noisy_count = None
        quantile = self.config.quantile
        if quantile is not None and count is not None:
            # |count| <= slots / 2: a public bound again. The new C is a function of releases
            # and public values only (post-processing); the next step clips at it.
            released = self.noise.privatize_count(
                count, quantile.count_std(expected_size), bound=slots / 2
            )
            self._noisy_count = released
            self.clip_norm = quantile.next_clip(clip, released, expected_size)
        scale = mx.array(1.0 / expected_size, dtype=mx.float32)
        if self.on_release is not None or self.transform is not None:
            # Everything below sees only the released (noised) gradient: post-processing.
            noised = {name: value * scale for name, value in noised.items()}
            mx.eval(noised)
            scale = mx.array(1.0, dtype=mx.float32)
            if isinstance(self.on_release, NoiseObserver):
                self.on_release.observe_noise_std(std)
            if self.on_release is not None:
                self.on_release(dict(noised))
            if self.transform is not None:
                params = dict(tree_flatten(self.model.trainable_parameters()))
                noised = dict(self.transform(noised, params))
        self._optimise(noised, scale)
        mx.eval(self.model.parameters(), self.optimizer.state)
        return std


def _check_expected_size(expected_size: float) -> None:
    if not (isinstance(expected_size, int | float) and math.isfinite(expected_size)):
        raise ConfigError(f"Expected batch size must be a finite number, got {expected_size!r}.")
    if expected_size <= 0:
        raise ConfigError(
            f"Expected batch size must be > 0 (q · |eligible|), got {expected_size!r}; "
            "with no eligible unit there is nothing to train."
        )


def make_dp_step(
    model: nn.Module,
    optimizer: optim.Optimizer,
    config: DPConfig,
    *,
    loss: ExampleLoss = example_ce_loss,
    noise: GaussianNoise | None = None,
    compile: bool = True,
    on_release: ReleaseHook | None = None,
    transform: GradientTransform | None = None,
    guard: StepGuard | None = None,
) -> DPStep:
    """A DP-SGD step for ``model``'s trainable parameters (freeze the rest first).

    Args:
        model: any ``mlx.nn.Module``; e.g. a base model after ``inject_lora``.
        optimizer: an ``mlx.optimizers`` optimiser; it sees only noised gradients.
        config: σ and C.
        loss: per-row losses ``loss(model, *arrays) -> (S,)`` of the batch's ``arrays``; row
            ``s``'s loss must depend on row ``s`` only. Default: :func:`example_ce_loss`.
        noise: the noise source; ``None`` makes a CSPRNG one (pass a seeded one in tests).
        compile: compile the gradient graph and the update.
        on_release: called every step (empty steps included) with the noised gradient already
            divided by the expected batch size, before ``transform`` and the optimiser.
            Post-processing of the DP release: it may record it, never change it.
        transform: ``transform(grads, params) -> grads`` maps the noised, normalised gradient
            to the one the optimiser sees, given the current trainable parameters (flat
            dicts); e.g. adding the EWC penalty's gradient. Post-processing: free, provided
            it reads no private data.
        guard: checks every optimiser update (:class:`StepGuard`): a rejected one is undone
            and retried at half the learning rate (see the module doc). It must read public
            data only; the optimiser's learning rate must be a constant, not a schedule.

    Raises:
        ConfigError: the model has no trainable parameters.
    """
    if not tree_flatten(model.trainable_parameters()):
        raise ConfigError("The model has no trainable parameters (inject LoRA first).")
    return DPStep(
        model,
        optimizer,
        config,
        loss,
        noise or GaussianNoise(),
        compile,
        on_release=on_release,
        transform=transform,
        guard=guard,
    )
