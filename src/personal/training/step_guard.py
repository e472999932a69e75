"""A step-size guard on public data: no DP step may push general skill past the gate.

With plain SGD a learning rate measured on one base can be far too large for another: a
step's effect on the model's outputs grows with the activations the adapted layers see and
with the curvature of the free pull towards the base (``docs/continual.md``: stable only while
``lr · weight · F_max < 2``). On SmolLM2-135M the default rate 0.3 took the public loss from
0.65 to 361 in one round, and the gate refused an adapter whose round had already been charged.

:class:`PublicLossGuard` checks every optimiser update of a round on one public batch and
rejects it when that batch's loss rose more than the general-regression gate allows
(``gates.max_general_regression``, against the gate's own reference: the bare base or the
round's starting adapter). :class:`~personal.privacy.dpsgd.DPStep` then undoes the update and
retries it at half the learning rate, keeping the smaller rate for the round's later steps.

Privacy: the guard reads the released (noised) gradient's effect on public data only, so its
decisions are post-processing of the DP release; the charge is unchanged. The check batch is
public training text, never the gate's held-out set, so the gate stays an independent check.
"""

from __future__ import annotations

import math
from typing import Any

from personal.errors import ConfigError
from personal.model.evaluate import scored_mean_loss
from personal.model.lora import lora_off
from personal.model.mlx_typing import scalar

import mlx.nn as nn

#: halvings before a step is skipped: the smallest step tried is lr / 256.
MAX_HALVINGS = 8
REFERENCES = ("base", "active")


class PublicLossGuard:
    """Accepts an update while the loss on a public ``check`` batch stays at most
    ``limit`` (see :meth:`for_round`); ``last`` is the loss of the last update checked."""

    def __init__(self, check: Any, limit: float, max_halvings: int = MAX_HALVINGS) -> None:
        if not (math.isfinite(limit) and limit > 0):
            raise ConfigError(f"A step guard needs a finite positive loss limit, got {limit!r}.")
        if max_halvings < 0:
            raise ConfigError(f"max_halvings must be >= 0, got {max_halvings!r}.")
        self.check, self.limit, self.max_halvings = check, float(limit), max_halvings
        self.last: float | None = None

    @classmethod
    def for_round(
        cls,
        model: nn.Module,
        check: Any,
        *,
        max_rise: float,
        reference: str = "base",
        max_halvings: int = MAX_HALVINGS,
    ) -> PublicLossGuard:
        """The guard for a round starting from ``model``'s current adapter.

        ``limit = max(reference_loss · (1 + max_rise), start_loss)``: the gate's bound on the
        check batch (``reference`` ``"base"``: the bare base, LoRA off; ``"active"``: the
        adapter the round starts from), and never below where the round starts, so that an
        adapter already past the bound can still move (the gate judges it at the end).
        """
        if reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {REFERENCES}, got {reference!r}.")
        if not (math.isfinite(max_rise) and max_rise >= 0):
            raise ConfigError(f"max_rise must be a finite number >= 0, got {max_rise!r}.")
        start = before = _loss(model, check)
        if reference == "base":
            with lora_off(model):
                before = _loss(model, check)
        return cls(check, max(before * (1 + max_rise), start), max_halvings)

    def accepts(self, model: nn.Module) -> bool:
        """Whether the check batch's loss under ``model`` is finite and within the limit."""
        self.last = _loss(model, self.check)
        return math.isfinite(self.last) and self.last <= self.limit


def _loss(model: nn.Module, batch: Any) -> float:
    # masked_ce_loss with logits at scored positions only (a check runs after every update and
    # every retry: on a real base most positions are the chat template's system prompt).
    return scalar(scored_mean_loss(model, batch))
