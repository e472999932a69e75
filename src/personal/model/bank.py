"""A public adapter bank: DP-SGD on K mixing coefficients instead of the adapter's weights.

With full batches a DP update's noise-to-signal ratio grows with the square root of the number
of trained parameters d (docs/dp-utility.md), so an adapter of d = 1,472 needs ~64 units a
round before its update is more signal than noise, and the shipped rank-1 adapter is too small
to learn a user's contacts or favourite artist. A *bank* separates the two: K adapters trained
**without DP on public synthetic users** (never on a user's data) are shipped with the base,
and a round trains only how much of each to use, K coefficients per adapted layer:

    ΔW = Σ_k c_k · B_k A_k        (A_k, B_k: member k's LoRA factors; c: trained under DP)

The members are public, so DP protects exactly what is trained (the coefficients) and the
accounting is unchanged. The mixture is a plain LoRA adapter of rank K·r whose ``lora_a`` holds
the members' A side by side and ``lora_b`` their B scaled by the coefficients, so serving,
saving, gates, swaps and migration see an ordinary adapter (the policy's ``training.lora.rank``
is K·r). Only training differs: inside :func:`bank_training` each adapted ``LoRALinear`` is
switched (its class, not the instance, as :func:`~personal.model.per_example.per_example_mode`
does) to one whose trainable parameter is its ``coefficients``; on exit the coefficients are
written back as ``lora_b`` and the layer is an ordinary ``LoRALinear`` again.

The coefficients of an adapter are recovered from it (:meth:`AdapterBank.coefficients_of`:
a least-squares projection of ``lora_b`` on the members' B, exact for an adapter the bank
produced), so nothing beyond the adapter itself needs storing; an adapter that is not in the
bank's span (its ``lora_a`` is not the bank's) restarts from zero coefficients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from personal.errors import AdapterMismatch

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tuner.lora import LoRALinear

_A, _B = "lora_a", "lora_b"
COEFFICIENTS = "coefficients"


@dataclass(frozen=True)
class AdapterBank:
    """K LoRA adapters of one shape, side by side, for :func:`bank_training`.

    Attributes:
        members: K.
        rank: r, each member's LoRA rank (the mixture has rank K·r).
        a: layer path -> ``(in, K·r)``: member k's ``lora_a`` in columns ``k·r .. k·r + r``.
        b: layer path -> ``(K·r, out)``: member k's ``lora_b`` in rows ``k·r .. k·r + r``.
    """

    members: int
    rank: int
    a: dict[str, mx.array]
    b: dict[str, mx.array]

    @classmethod
    def from_members(cls, members: Sequence[Mapping[str, mx.array]]) -> AdapterBank:
        """A bank of adapters given as ``get_adapter_weights`` dicts of one shape."""
        if not members:
            raise ValueError("an adapter bank needs at least one member")
        paths = _paths(members[0])
        for member in members[1:]:
            if _paths(member) != paths or any(
                member[f"{p}.{k}"].shape != members[0][f"{p}.{k}"].shape
                for p in paths
                for k in (_A, _B)
            ):
                raise AdapterMismatch("the members of an adapter bank must share one LoRA shape")
        rank = int(members[0][f"{paths[0]}.{_A}"].shape[-1])
        a = {p: mx.concatenate([m[f"{p}.{_A}"] for m in members], axis=1) for p in paths}
        b = {p: mx.concatenate([m[f"{p}.{_B}"] for m in members], axis=0) for p in paths}
        return cls(len(members), rank, a, b)

    @classmethod
    def from_weights(cls, weights: Mapping[str, mx.array], members: int) -> AdapterBank:
        """A bank stored as the LoRA weights of its rank-K·r mixture with every c = 1
        (:meth:`weights`), e.g. a shipped bank's file."""
        paths = _paths(weights)
        width = int(weights[f"{paths[0]}.{_A}"].shape[-1])
        if members < 1 or width % members:
            raise AdapterMismatch(
                f"an adapter bank of {members} members cannot have LoRA rank {width}"
            )
        a = {p: weights[f"{p}.{_A}"] for p in paths}
        b = {p: weights[f"{p}.{_B}"] for p in paths}
        return cls(members, width // members, a, b)

    @property
    def paths(self) -> list[str]:
        """The adapted layers' full paths, sorted."""
        return sorted(self.a)

    def weights(self) -> dict[str, mx.array]:
        """The bank as LoRA weights of rank K·r (every coefficient 1): how it is stored."""
        out: dict[str, mx.array] = {}
        for p in self.paths:
            out[f"{p}.{_A}"], out[f"{p}.{_B}"] = self.a[p], self.b[p]
        return out

    def zero_coefficients(self) -> dict[str, mx.array]:
        """Every layer's K coefficients at 0: the bare base."""
        return {p: mx.zeros((self.members,), dtype=mx.float32) for p in self.paths}

    def adapter(self, coefficients: Mapping[str, mx.array]) -> dict[str, mx.array]:
        """The mixture with ``coefficients`` (path -> ``(K,)``) as LoRA weights of rank K·r."""
        out: dict[str, mx.array] = {}
        for p in self.paths:
            scale = _per_column(coefficients[p], self.rank)
            out[f"{p}.{_A}"] = self.a[p]
            out[f"{p}.{_B}"] = (scale[:, None] * self.b[p]).astype(self.b[p].dtype)
        return out

    def coefficients_of(self, weights: Mapping[str, mx.array]) -> dict[str, mx.array] | None:
        """The coefficients whose mixture is ``weights``, or ``None`` when ``weights`` is not
        in the bank's span (another ``lora_a``, e.g. a migrated or older adapter).

        Each member's coefficient is the least-squares fit of its rows of ``lora_b`` to the
        member's ``B`` (a member whose ``B`` is all zero gets 0), exact for an adapter made
        by :meth:`adapter`.
        """
        out: dict[str, mx.array] = {}
        for p in self.paths:
            lora_a, lora_b = weights.get(f"{p}.{_A}"), weights.get(f"{p}.{_B}")
            if lora_a is None or lora_b is None or lora_a.shape != self.a[p].shape:
                return None
            if not bool(mx.array_equal(lora_a, self.a[p])):
                return None
            shape = (self.members, self.rank, -1)
            mine, theirs = self.b[p].reshape(shape), lora_b.reshape(shape)
            dot = (mine * theirs).sum(axis=(1, 2))
            norm = (mine * mine).sum(axis=(1, 2))
            out[p] = mx.where(norm > 0, dot / mx.maximum(norm, 1e-30), 0.0).astype(mx.float32)
        return out


def _paths(weights: Mapping[str, Any]) -> list[str]:
    paths = sorted({name.rpartition(".")[0] for name in weights})
    if not paths or any(f"{p}.{k}" not in weights for p in paths for k in (_A, _B)):
        raise AdapterMismatch("adapter weights must hold lora_a and lora_b for every layer")
    return paths


def _per_column(coefficients: mx.array, rank: int) -> mx.array:
    """``(..., K)`` -> ``(..., K·r)``: member k's coefficient on each of its r columns."""
    return coefficients if rank == 1 else mx.repeat(coefficients, rank, axis=-1)


class BankLoRALinear(LoRALinear):
    """A ``LoRALinear`` inside :func:`bank_training`: ``y = W x + s · ((x A) ⊙ c) B``.

    ``coefficients`` is ``(K,)``, or ``(S, K)`` with one row per example of a batch whose
    first axis is S (:func:`~personal.model.per_example.per_example_grads` expands it so, as it
    expands ``lora_a``/``lora_b``).
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        z = self.dropout(x) @ self["bank_a"]  # (..., K·r)
        c = _per_column(self[COEFFICIENTS], int(self["bank_rank"]))
        if c.ndim == 2:  # per example: (S, K·r) against z (S, ..., K·r)
            c = c.reshape(c.shape[0], *([1] * (z.ndim - 2)), c.shape[1])
        return y + (self.scale * ((z * c) @ self["bank_b"])).astype(x.dtype)


@contextlib.contextmanager
def bank_training(model: nn.Module, bank: AdapterBank) -> Iterator[dict[str, mx.array]]:
    """Within the block, the bank's layers of ``model`` train their coefficients only.

    On entry the coefficients start from the model's current adapter
    (:meth:`AdapterBank.coefficients_of`; zero when it is not in the bank's span); each adapted
    ``LoRALinear`` becomes a :class:`BankLoRALinear` whose only trainable parameter is
    ``coefficients``. On exit, whatever happened inside, the coefficients are written back as
    the mixture's ``lora_a``/``lora_b`` and the layers are ordinary LoRA layers again, their
    LoRA tensors trainable as before. Yields the starting coefficients (path -> ``(K,)``).

    Raises:
        AdapterMismatch: a bank layer is missing from ``model``, is not a dense
            ``LoRALinear`` (MoE expert layers are not supported), or its LoRA rank is not K·r
            (set ``training.lora.rank`` to the bank's K·r).
    """
    modules = dict(model.named_modules())
    width = bank.members * bank.rank
    layers: dict[str, LoRALinear] = {}
    for path in bank.paths:
        module = modules.get(path)
        if type(module) is not LoRALinear:
            raise AdapterMismatch(
                f"the adapter bank adapts {path!r}, which is "
                f"{'missing' if module is None else type(module).__name__} in this model, not "
                "a dense LoRA layer: the bank was built for another base or LoRA shape "
                "(training.lora's targets and num_layers must be the bank's)"
            )
        if module[_A].shape != bank.a[path].shape:
            raise AdapterMismatch(
                f"{path}: LoRA rank {module[_A].shape[-1]}, the adapter bank needs "
                f"{width} ({bank.members} members of rank {bank.rank}); set training.lora.rank "
                f"= {width}"
            )
        layers[path] = module
    current = {f"{p}.{k}": layers[p][k] for p in layers for k in (_A, _B)}
    start = bank.coefficients_of(current) or bank.zero_coefficients()
    trainable = {p: set(_trainable_keys(m)) for p, m in layers.items()}
    try:
        for path, module in layers.items():
            module.__class__ = BankLoRALinear
            module["bank_a"], module["bank_b"] = bank.a[path], bank.b[path]
            module["bank_rank"] = bank.rank
            module[COEFFICIENTS] = start[path]
            module.freeze(keys=[_A, _B, "bank_a", "bank_b"], recurse=False)
            module.unfreeze(keys=[COEFFICIENTS], recurse=False)
        yield start
    finally:
        final = {p: m[COEFFICIENTS] for p, m in layers.items() if COEFFICIENTS in m}
        mixture = bank.adapter({**start, **final})
        for path, module in layers.items():
            module.__class__ = LoRALinear
            for key in (COEFFICIENTS, "bank_a", "bank_b", "bank_rank"):
                if key in module:
                    del module[key]
            module[_A], module[_B] = mixture[f"{path}.{_A}"], mixture[f"{path}.{_B}"]
            module.freeze(keys=[_A, _B], recurse=False)
            module.unfreeze(keys=sorted(trainable[path] & {_A, _B}), recurse=False)
        mx.eval([m.parameters() for m in layers.values()])


def _trainable_keys(module: nn.Module) -> list[str]:
    return [k for k, v in module.trainable_parameters().items() if isinstance(v, mx.array)]


def trained_parameters(bank: AdapterBank) -> int:
    """Parameters a bank round trains (and adds noise to): K per adapted layer."""
    return bank.members * len(bank.paths)


__all__ = [
    "COEFFICIENTS",
    "AdapterBank",
    "BankLoRALinear",
    "bank_training",
    "trained_parameters",
]
