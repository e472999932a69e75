"""Continual learning without forgetting: a replay buffer of past units, and online EWC.

Public surface::

    ReplayBuffer                      reservoir of past private unit ids (CSPRNG, sealed)
    EWCState, update_state            online EWC anchor + running Fisher diagonal (sealed)
    penalty, penalty_grad, add_penalty_grad, ewc_gradient_transform
                                      the penalty, and its gradient added to a noised DP gradient
    fisher_from_public                Fisher diagonal on public text (free)
    FisherFromNoisedGradients         Fisher from a round's noised DP gradients (free, debiased)

What is charged to the privacy ledger and what is free: ``docs/continual.md``.
"""

from __future__ import annotations

from personal.continual.ewc import (
    EWCState,
    FisherFromNoisedGradients,
    add_penalty_grad,
    ewc_gradient_transform,
    fisher_from_public,
    penalty,
    penalty_grad,
    update_state,
)
from personal.continual.replay import ReplayBuffer

__all__ = [
    "EWCState",
    "FisherFromNoisedGradients",
    "ReplayBuffer",
    "add_penalty_grad",
    "ewc_gradient_transform",
    "fisher_from_public",
    "penalty",
    "penalty_grad",
    "update_state",
]
