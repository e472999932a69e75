"""Optimiser updates under a step guard: undo a rejected update, retry it at half the rate.

A :class:`StepGuard` decides after each optimiser update whether the model may keep it (for
example :class:`personal.training.step_guard.PublicLossGuard`, which reads public text only).
:class:`GuardedUpdate` wraps the update: on a rejection it restores the trainable parameters
and the optimiser's state exactly, halves the learning rate and tries again, down to
``2**-max_halvings`` of the rate (then the step is skipped). The smaller rate is kept for the
following steps (:attr:`GuardedUpdate.step_scale`): a rate the model could not stand once is
not tried again in the same run.

Used by the DP step (:class:`personal.privacy.dpsgd.DPStep`, where the guard's decisions are
post-processing of the DP release) and by the public population adapter's plain SGD
(:func:`personal.training.population.train_population_adapter`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map


class StepGuard(Protocol):
    """Decides after each optimiser update whether to keep it (public data only)."""

    #: how many times a step's learning rate may be halved before the step is skipped.
    max_halvings: int

    def accepts(self, model: nn.Module) -> bool:
        """Whether ``model``, just updated, may keep the update."""
        ...


class GuardedUpdate:
    """Runs ``apply()`` (one optimiser update of ``model`` by ``optimizer``) under ``guard``.

    ``optimizer``'s learning rate must be a constant (not a schedule): it is the 100 % the
    guard scales down from. ``apply`` may be a compiled function that holds the optimiser's
    state containers; the undo writes into those very containers.
    """

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, guard: StepGuard) -> None:
        self.model, self.optimizer, self.guard = model, optimizer, guard
        #: the share of the optimiser's learning rate the guard settled on (1.0 at first).
        self.step_scale = 1.0
        #: updates the guard undid (each one retried at half the rate, or skipped at the end).
        self.rejections = 0
        self._learning_rate = optimizer.learning_rate

    def __call__(self, apply: Callable[[], None]) -> bool:
        """Apply one update, retried smaller while the guard rejects it.

        Returns:
            Whether an update was kept (``False``: skipped at the smallest rate).
        """
        params = self.model.trainable_parameters()
        state = self.optimizer.state
        saved = tree_map(lambda x: x, state)  # new containers: Adam mutates its state dicts
        floor = 2.0**-self.guard.max_halvings
        while True:
            self.optimizer.learning_rate = self._learning_rate * self.step_scale
            apply()
            mx.eval(self.model.parameters(), state)
            if self.guard.accepts(self.model):
                return True
            self.rejections += 1
            # Undo in place: a compiled update holds these very containers.
            self.model.update(params)
            for key, value in tree_map(lambda x: x, saved).items():
                state[key] = value
            if self.step_scale <= floor:  # no step size left to try: skip this step
                return False
            self.step_scale = max(self.step_scale / 2, floor)
