"""The charged held-out validation of a round: the personal gain a gate reads.

A round holds out some of its candidate units (:func:`~personal.training.gates.split_held_out`).
Before any of them is decrypted, the ledger charges them a ``validation`` round (q = 1, one
step, σ_v); then :class:`Validation` scores the old adapter on them, the round trains, and
:meth:`Validation.measure` releases the noised gain of the new adapter over the old one
(:func:`~personal.training.gates.noised_gain`).
"""

from __future__ import annotations

from typing import Any

from personal.errors import BudgetExhausted
from personal.model.base import BaseModel
from personal.privacy.filter import Charge
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise
from personal.store.log import InteractionLog
from personal.training.gates import GateResult, noised_gain, unit_losses

import numpy as np


class Validation:
    """An open, already charged ``validation`` round over held-out units.

    Open it with :meth:`open`; close it with :meth:`finish` (the gate's decision) or
    :meth:`abort` (it stays charged).
    """

    def __init__(
        self,
        base: BaseModel,
        interactions: InteractionLog,
        ledger: Ledger,
        round_id: int,
        units: list[str],
        sigma: float,
        keep: int,
    ) -> None:
        self.base, self.interactions, self.ledger = base, interactions, ledger
        self.round_id, self.units, self.sigma, self.keep = round_id, units, sigma, keep
        self.before = np.zeros(len(units))

    @classmethod
    def open(
        cls,
        base: BaseModel,
        interactions: InteractionLog,
        ledger: Ledger,
        held_out: list[str],
        *,
        sigma: float,
        keep: int,
        context: dict[str, Any],
        max_share: float | None = None,
    ) -> Validation | None:
        """Charge the held-out units for the personal metric, then score the old adapter.

        ``None`` when no held-out unit is within budget: the round then runs without the
        personal-gain gate.
        """
        charge = Charge(purpose="validation", sample_rate=1.0, noise_multiplier=sigma, steps=1)
        try:
            selection = ledger.select(charge, held_out, max_share=max_share)
            units = [str(u) for u in selection.eligible]
        except BudgetExhausted:
            return None
        round_id = ledger.begin_round(charge, units, **{**context, "clip_norm": 1.0})
        validation = cls(base, interactions, ledger, round_id, units, sigma, keep)
        try:
            validation.before = unit_losses(base.model, base.tokenizer, interactions, units, keep)
        except BaseException:
            validation.abort()
            raise
        return validation

    def measure(self, noise: GaussianNoise | None) -> float:
        """The noised personal gain of the live (new) adapter over the old one."""
        model, tokenizer = self.base.model, self.base.tokenizer
        after = unit_losses(model, tokenizer, self.interactions, self.units, self.keep)
        return noised_gain(self.before, after, self.sigma, noise)

    def finish(self, gate: GateResult) -> None:
        """Close the round, recording the gate's decision (public and DP values only)."""
        summary = {"passed": gate.passed, "personal_gain": gate.personal_gain}
        self.ledger.finish_round(self.round_id, "completed", summary)

    def abort(self) -> None:
        """Close the round as aborted (it stays charged)."""
        self.ledger.finish_round(self.round_id, "aborted")
