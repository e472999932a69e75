"""White-box gradient canaries for the empirical audit (Steinke, Nasr & Jagielski 2023, §6).

A canary unit's gradient is replaced by a *Dirac* gradient: ``C`` times the unit vector of one
coordinate of one adapter tensor, a coordinate of its own. That is the worst case the DP
analysis must cover (norm exactly C, the clip bound), and it makes membership observable from
the trained adapter alone: a member's coordinate moves against its gradient every time the
sampler picks it, a non-member's only with the noise and the real data. Canary units go through
the real sampler, ledger, clipping and noise; only their loss is swapped, inside the compiled
per-example graph, by :meth:`GradientCanaries.loss`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from personal.model.mlx_typing import flat_params
from personal.privacy.dpsgd import ExampleLoss, example_ce_loss
from personal.privacy.sampler import UnitBatch

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten


@dataclasses.dataclass(frozen=True)
class GradientCanaries:
    """Which units are canaries, and the coordinate of ``param`` each one pushes.

    Attributes:
        param: the trainable tensor's name (``tree_flatten`` path) holding the coordinates.
        coords: unit id -> flat index into ``param``, distinct per unit.
    """

    param: str
    coords: Mapping[str, int]

    @classmethod
    def pick(cls, model: nn.Module, units: Sequence[str], rng: np.random.Generator) -> Any:
        """Distinct random coordinates of the model's largest trainable tensor."""
        flat = flat_params(model.trainable_parameters())
        name, value = max(flat, key=lambda kv: kv[1].size)
        if value.size < len(units):
            raise ValueError(f"{len(units)} canaries need {len(units)} coordinates of {name}")
        chosen = rng.choice(value.size, size=len(units), replace=False)
        return cls(name, {u: int(c) for u, c in zip(units, chosen, strict=True)})

    def values(self, model: nn.Module) -> np.ndarray:
        """The canaries' coordinates' current values, in ``coords`` order."""
        flat = np.array(dict(tree_flatten(model.trainable_parameters()))[self.param]).reshape(-1)
        return flat[list(self.coords.values())]

    def loss(self, clip_norm: float) -> ExampleLoss:
        """Per-row losses: cross-entropy for real rows, ``C·θ[coord]`` for canary rows.

        Runs inside the per-example gradient pass, where each trainable tensor carries a
        leading per-row axis (:mod:`personal.model.per_example`): row ``s`` reads its own copy.
        """
        name = self.param

        def loss(
            model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, coord: mx.array
        ) -> mx.array:
            ce = example_ce_loss(model, inputs, targets, mask)  # (S,)
            param = dict(tree_flatten(model.trainable_parameters()))[name]  # (S, *shape)
            flat = param.reshape(param.shape[0], -1)  # (S, P)
            picked = mx.take_along_axis(flat, mx.maximum(coord, 0)[:, None], axis=1)[:, 0]
            return mx.where(coord >= 0, picked * clip_norm, ce)  # gradient of a canary: C·e_coord

        return loss

    def attach(
        self, batch: UnitBatch, units: Sequence[str], sequences: Sequence[Sequence[Any]]
    ) -> UnitBatch:
        """``batch`` with a 4th per-row array: the canary coordinate, or -1 for real rows."""
        coords = np.full(batch.slots, -1, dtype=np.int32)
        row = 0
        for unit, examples in zip(units, sequences, strict=True):
            for _ in examples:
                coords[row] = self.coords.get(unit, -1)
                row += 1
        return dataclasses.replace(batch, arrays=(*batch.arrays, mx.array(coords)))
