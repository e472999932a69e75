"""Online EWC over the LoRA adapter: stay close to the previous adapter where it matters.

Elastic weight consolidation (Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in
neural networks") adds to the loss a quadratic pull towards the previous parameters θ*,
weighted per coordinate by a diagonal Fisher information F:

    penalty(θ) = (λ / 2) · Σᵢ Fᵢ (θᵢ - θ*ᵢ)²,      ∇penalty = λ · F ⊙ (θ - θ*).

*Online* EWC (Schwarz et al. 2018, "Progress & Compress", §2.4) keeps one running Fisher
instead of one per task: after each round, ``F ← γ·F + F_new`` and ``θ* ← the new adapter``
(:func:`update_state`); γ < 1 lets old rounds fade.

**Privacy.** The anchor θ* is the previous adapter, a DP output. The Fisher comes from

* public text (:func:`fisher_from_public`): no private data, free; or
* the round's already-noised DP gradients (:class:`FisherFromNoisedGradients`):
  post-processing of DP releases, free.

A Fisher pass over raw private records would be a fresh mechanism that must be DP and charged
(purpose ``"fisher"``); it is not offered. With both sources, the penalty and its gradient are
functions of DP outputs and public data only, so :func:`ewc_gradient_transform` may add the
penalty's gradient to the *noised* gradient (``make_dp_step(..., transform=...)``) without
touching the privacy analysis: the sensitivity of the private sum is still the clip norm C.

**Noise bias of the DP Fisher.** One step releases g̃ = (S + Z) / B with S = Σ clipped unit
gradients of the Poisson sample, Z ~ N(0, σ²C²·I) independent of S, and B the expected batch
size. Per coordinate, E[g̃²] = E[S²]/B² + 2·E[S]·E[Z]/B² + E[Z²]/B² = E[S²]/B² + σ²C²/B², so the
mean of g̃² over the round overestimates E[(S/B)²] by exactly σ²C²/B², usually the dominant
term. :class:`FisherFromNoisedGradients` subtracts it and floors at 0 (a coordinate's estimate
may go negative by chance; a negative Fisher would push *away* from the anchor). What remains
estimates E[(S/B)²] = (E[S]/B)² + Var[S]/B²: the second moment of the clipped mean gradient.
Under Poisson sampling at rate q over N units (B = qN), per coordinate
E[S/B] = ḡ (mean clipped unit gradient) and Var[S]/B² = (1-q)·mean(g²)/B, so the estimate is
ḡ² + (1-q)·mean(g²)/B: a batch-gradient Fisher, smaller than the per-example empirical
Fisher mean(g²) of :func:`fisher_from_public`. λ absorbs the scale. Snapping the noise to its
grid adds Λ²/12 ≈ 10⁻¹³·σ²C² of variance: negligible, and ignored.

**Persistence.** :meth:`EWCState.save` writes anchor and Fisher as safetensors bytes (no
pickle) sealed with AES-256-GCM in one row of the ``ewc_state`` table. The anchor belongs to
the base model the adapter was trained on: drop the state (:meth:`EWCState.delete`) when the
adapter is migrated to a new base.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from personal.adapters import codec
from personal.errors import AdapterCorrupt, AdapterMismatch, ConfigError, StoreCorrupt
from personal.privacy.dpsgd import ExampleLoss, example_ce_loss, per_example_grads
from personal.store.core import Store
from personal.store.crypto import Sealed
from personal.store.db import Migrations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

Tree = Mapping[str, Any]
GradientTransform = Callable[[dict[str, mx.array], dict[str, mx.array]], dict[str, mx.array]]

TABLE = "ewc_state"
ROW = "state"
FORMAT = "personal-ewc/1"
migrations = Migrations("ewc")


@migrations(1)
def _create(db: Any) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} (name TEXT PRIMARY KEY, key_epoch INTEGER NOT NULL, "
        "sealed BLOB NOT NULL)"
    )


@dataclass(frozen=True)
class EWCState:
    """The anchor θ*, the running diagonal Fisher F and the decay γ of online EWC.

    Attributes:
        anchor: flat ``name -> array``: the previous adapter (e.g. ``get_adapter_weights``).
        fisher: flat ``name -> array``, same names and shapes, finite and >= 0 (float32).
        gamma: decay γ in [0, 1] of the old Fisher at each :func:`update_state`.

    Raises:
        AdapterMismatch: anchor and Fisher differ in names or shapes.
        ConfigError: γ outside [0, 1], or a Fisher value negative or not finite.
    """

    anchor: dict[str, mx.array]
    fisher: dict[str, mx.array]
    gamma: float = 1.0

    def __post_init__(self) -> None:
        anchor, fisher = _flat(self.anchor), _flat(self.fisher)
        _check_same(anchor, fisher, "EWC anchor", "EWC Fisher")
        _check_gamma(self.gamma)
        fisher = {name: value.astype(mx.float32) for name, value in fisher.items()}
        for name, value in fisher.items():
            if not bool(mx.all(mx.isfinite(value) & (value >= 0)).item()):
                raise ConfigError(f"EWC Fisher {name} has negative or non-finite values.")
        object.__setattr__(self, "anchor", anchor)
        object.__setattr__(self, "fisher", fisher)
        object.__setattr__(self, "gamma", float(self.gamma))

    def save(self, store: Store) -> None:
        """Seal the state into ``store`` (one row, replaced atomically)."""
        store.apply_migrations(migrations)
        weights = {f"anchor/{k}": v for k, v in self.anchor.items()}
        weights.update({f"fisher/{k}": v for k, v in self.fisher.items()})
        codec.check_dtypes(weights)
        data = codec.encode(weights, {"format": FORMAT, "gamma": self.gamma.hex()})
        with store.atomic() as db:
            sealed = store.seal(TABLE, ROW, (), data)
            db.execute(
                f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?)", [ROW, sealed.epoch, sealed.blob]
            )

    @classmethod
    def load(cls, store: Store) -> EWCState | None:
        """The state saved in ``store``, or ``None`` if there is none.

        Raises:
            TamperDetected: the sealed row was altered or moved.
            StoreCorrupt: the row authenticates but is not a state this version wrote.
        """
        store.apply_migrations(migrations)
        row = store.db.execute(
            f"SELECT key_epoch, sealed FROM {TABLE} WHERE name = ?", [ROW]
        ).fetchone()
        if row is None:
            return None
        data = store.open_sealed(TABLE, ROW, (), Sealed(int(row[0]), bytes(row[1])))
        try:
            weights, meta = codec.decode(data, where="the sealed EWC state")
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            gamma = float.fromhex(meta["gamma"])
            parts: dict[str, dict[str, mx.array]] = {"anchor": {}, "fisher": {}}
            for key, value in weights.items():
                kind, _, name = key.partition("/")
                parts[kind][name] = value
            return cls(parts["anchor"], parts["fisher"], gamma)
        except (AdapterCorrupt, AdapterMismatch, ConfigError, KeyError, ValueError) as exc:
            raise StoreCorrupt(
                f"the sealed EWC state is not one this version reads ({exc}): upgrade personal "
                "or delete it (EWCState.delete); EWC restarts from the next round"
            ) from None

    @staticmethod
    def delete(store: Store) -> bool:
        """Drop the saved state (e.g. after a base-model migration); whether one existed."""
        store.apply_migrations(migrations)
        with store.atomic() as db:
            cursor = db.execute(f"DELETE FROM {TABLE} WHERE name = ?", [ROW])
        return cursor.rowcount > 0


def update_state(
    state: EWCState | None,
    new_anchor: Tree,
    new_fisher: Tree,
    gamma: float | None = None,
) -> EWCState:
    """Online EWC after a round: ``F ← γ·F + F_new``, ``θ* ← new_anchor``.

    Args:
        state: the state before the round, or ``None`` for the first round (``F = F_new``).
        new_anchor: the adapter the round produced (a DP output).
        new_fisher: the round's Fisher diagonal (public or from noised gradients).
        gamma: decay of the old Fisher; ``None`` keeps ``state.gamma`` (1.0 for a first round).

    Returns:
        A new :class:`EWCState`; ``state`` is not modified.
    """
    gamma = (state.gamma if state is not None else 1.0) if gamma is None else gamma
    _check_gamma(gamma)
    fisher = {k: v.astype(mx.float32) for k, v in _flat(new_fisher).items()}
    if state is not None:
        _check_same(state.fisher, fisher, "EWC Fisher", "the new Fisher")
        fisher = {k: gamma * state.fisher[k] + v for k, v in fisher.items()}
    anchor = {k: mx.array(v) for k, v in _flat(new_anchor).items()}
    mx.eval(fisher, anchor)
    return EWCState(anchor, fisher, gamma)


def penalty(params: Tree, state: EWCState, lam: float) -> mx.array:
    """``(λ/2) · Σ F ⊙ (θ - θ*)²`` over every parameter of the state (a float32 scalar).

    Args:
        params: the adapter θ, flat ``name -> array`` or a nested tree; same names as the state.
        state: anchor θ* and Fisher F.
        lam: λ >= 0.
    """
    flat = _flat(params)
    _check_same(state.anchor, flat, "EWC anchor", "the parameters")
    total = mx.array(0.0, dtype=mx.float32)
    for name, theta in flat.items():
        diff = theta.astype(mx.float32) - state.anchor[name].astype(mx.float32)
        total = total + (state.fisher[name] * diff * diff).sum()
    return (_check_lambda(lam) / 2.0) * total


def penalty_grad(params: Tree, state: EWCState, lam: float) -> dict[str, mx.array]:
    """The gradient ``λ · F ⊙ (θ - θ*)`` of :func:`penalty`, flat ``name -> array``."""
    flat = _flat(params)
    _check_same(state.anchor, flat, "EWC anchor", "the parameters")
    lam = _check_lambda(lam)
    return {
        name: (lam * state.fisher[name] * (theta.astype(mx.float32) - state.anchor[name])).astype(
            theta.dtype
        )
        for name, theta in flat.items()
    }


def add_penalty_grad(grads: Tree, params: Tree, state: EWCState, lam: float) -> dict[str, mx.array]:
    """``grads + λ · F ⊙ (θ - θ*)`` per parameter, as a flat ``name -> array`` dict.

    Apply it to the *noised* DP gradient: the penalty depends on DP outputs (the previous
    adapter) and the Fisher only, so this is post-processing with no privacy cost.

    Raises:
        AdapterMismatch: ``grads``, ``params`` and the state differ in names or shapes.
    """
    flat = _flat(grads)
    extra = penalty_grad(params, state, lam)
    _check_same(extra, flat, "the parameters", "the gradients")
    return {name: g + extra[name].astype(g.dtype) for name, g in flat.items()}


def ewc_gradient_transform(state: EWCState, lam: float) -> GradientTransform:
    """A ``transform(grads, params) -> grads`` for ``make_dp_step(..., transform=...)``.

    It adds the EWC penalty's gradient to the noised, normalised DP gradient before the
    optimiser sees it (post-processing: free).
    """
    lam = _check_lambda(lam)

    def transform(grads: dict[str, mx.array], params: dict[str, mx.array]) -> dict[str, mx.array]:
        return add_penalty_grad(grads, params, state, lam)

    return transform


# --- Fisher sources --------------------------------------------------------------------------


def fisher_from_public(
    model: nn.Module, batches: Iterable[Any], *, loss: ExampleLoss = example_ce_loss
) -> dict[str, mx.array]:
    """The diagonal empirical Fisher of ``model``'s trainable parameters on *public* data.

    ``F = mean over rows of g ⊙ g`` with ``g`` the per-row gradient of ``loss``, computed with
    ``mx.vmap(mx.grad(...))`` as in DP-SGD. Public data only: it is free. Never pass private
    records (that pass would have to be DP and charged).

    Args:
        model: e.g. a base model after ``inject_lora`` (the adapter is what is trainable).
        batches: each a :class:`~personal.model.batching.Batch` (``inputs, targets, mask``),
            a :class:`~personal.privacy.sampler.UnitBatch` (padding rows are ignored), or a
            tuple of per-row arrays ``(S, ...)`` for ``loss``.
        loss: per-row losses ``loss(model, *arrays) -> (S,)``; default token-mean
            cross-entropy.

    Returns:
        Flat ``name -> float32 array`` in the trainable parameters' shapes.

    Raises:
        ConfigError: no row at all, or no row with a finite gradient.
    """
    if not tree_flatten(model.trainable_parameters()):
        raise ConfigError("The model has no trainable parameters (inject LoRA first).")
    totals: dict[str, mx.array] = {}
    rows = mx.array(0.0, dtype=mx.float32)
    for batch in batches:
        arrays, valid = _rows_of(batch)
        _, grads = per_example_grads(model, loss, arrays)
        size = next(iter(grads.values())).shape[0] if grads else 0
        weight = mx.ones((size,), dtype=mx.float32) if valid is None else valid
        squares = {k: g.astype(mx.float32).reshape(size, -1) ** 2 for k, g in grads.items()}
        finite = sum(mx.isfinite(s.sum(axis=-1)).astype(mx.float32) for s in squares.values())
        weight = mx.where(finite == len(squares), weight, 0.0)  # (S,) drop non-finite rows
        for name, sq in squares.items():
            part = (weight @ mx.where(weight[:, None] > 0, sq, 0.0)).reshape(grads[name].shape[1:])
            totals[name] = totals[name] + part if name in totals else part
        rows = rows + weight.sum()
        mx.eval(totals, rows)
    if not bool((rows > 0).item()):
        raise ConfigError("fisher_from_public got no row with a finite gradient.")
    return {name: total / rows for name, total in totals.items()}


class FisherFromNoisedGradients:
    """Diagonal Fisher from a round's noised DP gradients, corrected for the noise's bias.

    Pass it as ``make_dp_step(..., on_release=fisher)``; it is called with every released
    (noised, normalised) gradient g̃ and keeps the running mean of g̃ ⊙ g̃. :meth:`estimate`
    subtracts the noise's contribution σ²C²/B² and floors at 0 (derivation in the module
    docstring). Post-processing of DP outputs: free. Under quantile clipping the noise std
    changes from step to step: the DP step reports each one (:meth:`observe_noise_std`, a
    :class:`~personal.privacy.dpsgd.NoiseObserver`) and the bias is their mean of squares.

    Args:
        noise_std: σ·C, the std of the noise added to the *sum* of clipped gradients
            (``DPConfig.noise_std``); the std of every release not otherwise reported.
        expected_size: B, the expected batch size the sum was divided by.
    """

    def __init__(self, *, noise_std: float, expected_size: float) -> None:
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ConfigError(f"noise_std must be a finite number >= 0, got {noise_std!r}.")
        if not (math.isfinite(expected_size) and expected_size > 0):
            raise ConfigError(f"expected_size must be a finite number > 0, got {expected_size!r}.")
        self.noise_std = float(noise_std)
        self.expected_size = float(expected_size)
        self.steps = 0
        self._sum_sq: dict[str, mx.array] = {}
        self._next_std: float | None = None
        self._sum_var = 0.0  # Σ over recorded steps of (noise std)²

    def observe_noise_std(self, std: float) -> None:
        """The noise std of the release the next call records (a public value)."""
        if not (math.isfinite(std) and std >= 0):
            raise ConfigError(f"noise std must be a finite number >= 0, got {std!r}.")
        self._next_std = float(std)

    @property
    def bias(self) -> float:
        """σ²C²/B² (the mean over the recorded steps when their std differed): what the noise
        adds to E[g̃²] in every coordinate."""
        if not self.steps:
            return (self.noise_std / self.expected_size) ** 2
        return self._sum_var / self.steps / self.expected_size**2

    def __call__(self, grads: Mapping[str, mx.array]) -> None:
        """Record one released gradient (the ``on_release`` hook of a DP step)."""
        flat = _flat(grads)
        if self._sum_sq:
            _check_same(self._sum_sq, flat, "the earlier gradients", "this gradient")
        for name, g in flat.items():
            sq = g.astype(mx.float32) ** 2
            self._sum_sq[name] = self._sum_sq[name] + sq if name in self._sum_sq else sq
        std = self.noise_std if self._next_std is None else self._next_std
        self._sum_var += std * std
        self._next_std = None
        self.steps += 1
        mx.eval(self._sum_sq)

    def uncorrected(self) -> dict[str, mx.array]:
        """The plain mean of g̃ ⊙ g̃ over the recorded steps (biased up by :attr:`bias`)."""
        if self.steps == 0:
            raise ConfigError("No noised gradient was recorded: run at least one DP step.")
        return {name: total / self.steps for name, total in self._sum_sq.items()}

    def estimate(self) -> dict[str, mx.array]:
        """``max(0, mean(g̃²) - σ²C²/B²)`` per coordinate: the corrected Fisher diagonal."""
        bias = self.bias
        return {name: mx.maximum(m - bias, 0.0) for name, m in self.uncorrected().items()}


# --- helpers ---------------------------------------------------------------------------------


def _rows_of(batch: Any) -> tuple[tuple[mx.array, ...], mx.array | None]:
    if hasattr(batch, "arrays") and hasattr(batch, "valid"):  # UnitBatch
        return tuple(batch.arrays), batch.valid.astype(mx.float32)
    if all(hasattr(batch, f) for f in ("inputs", "targets", "mask")):  # Batch
        return (batch.inputs, batch.targets, batch.mask), None
    return tuple(batch), None


def _flat(tree: Tree) -> dict[str, mx.array]:
    return dict(tree_flatten(dict(tree)))


def _check_same(
    a: Mapping[str, mx.array], b: Mapping[str, mx.array], what_a: str, what_b: str
) -> None:
    if set(a) != set(b):
        missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise AdapterMismatch(
            f"{what_b} do not match {what_a}: {len(missing)} missing {missing[:3]}, "
            f"{len(extra)} unexpected {extra[:3]} (another LoRA layout: reset the EWC state)."
        )
    for name, value in b.items():
        if tuple(value.shape) != tuple(a[name].shape):
            raise AdapterMismatch(
                f"{what_b} has {name} of shape {tuple(value.shape)}, {what_a} "
                f"{tuple(a[name].shape)} (another LoRA rank: reset the EWC state)."
            )


def _check_gamma(gamma: object) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 <= gamma <= 1:
        raise ConfigError(f"EWC decay gamma must be a number in [0, 1], got {gamma!r}.")


def _check_lambda(lam: object) -> float:
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam):
        raise ConfigError(f"EWC lambda must be a finite number >= 0, got {lam!r}.")
    if lam < 0:
        raise ConfigError(f"EWC lambda must be >= 0, got {lam!r}.")
    return float(lam)
