"""GuardedUpdate on its own (plain optimisers, no DP): k rejections run the update at 2^-k of
the rate, a rejection at the smallest rate skips the step and leaves parameters and optimiser
state exactly as they were, and the settled rate is kept for later updates."""

from __future__ import annotations

from personal.model.guarded_update import GuardedUpdate

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from guards import Scripted
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

GRAD = {"weight": mx.full((3, 2), 1.0), "bias": mx.full((3,), -2.0)}


def _layer() -> nn.Linear:
    mx.random.seed(0)
    return nn.Linear(2, 3)


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(tree) if isinstance(v, mx.array)}


@settings(max_examples=20, deadline=None)
@given(rejections=st.integers(0, 6))
def test_k_rejections_scale_the_sgd_step_by_two_to_the_minus_k(rejections):
    layer, start = _layer(), _flat(_layer().parameters())
    optimizer = optim.SGD(learning_rate=0.5)
    guarded = GuardedUpdate(layer, optimizer, Scripted(rejections))
    kept = guarded(lambda: optimizer.update(layer, GRAD))
    skipped = rejections > 3  # max_halvings 3: four sizes tried, then the step is skipped
    assert kept is not skipped
    assert guarded.rejections == min(rejections, 4)
    assert guarded.step_scale == 2.0 ** -min(rejections, 3)
    scale = 0.0 if skipped else 0.5 * guarded.step_scale
    for name, value in _flat(layer.parameters()).items():
        expected = start[name] - scale * np.array(GRAD[name])
        np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_a_skipped_adam_step_leaves_parameters_and_state_exactly_as_they_were():
    layer = _layer()
    optimizer = optim.Adam(learning_rate=0.1)
    optimizer.init(layer.trainable_parameters())
    optimizer.update(layer, GRAD)  # some real state first
    mx.eval(layer.parameters(), optimizer.state)
    params, state = _flat(layer.parameters()), _flat(optimizer.state)
    guarded = GuardedUpdate(layer, optimizer, Scripted(99, max_halvings=2))
    assert guarded(lambda: optimizer.update(layer, GRAD)) is False
    assert guarded.rejections == 3 and guarded.step_scale == 0.25
    for name, value in _flat(layer.parameters()).items():
        np.testing.assert_array_equal(value, params[name])
    for name, value in _flat(optimizer.state).items():
        if name != "learning_rate":
            np.testing.assert_array_equal(value, state[name])


def test_the_settled_rate_is_kept_for_later_updates():
    layer = _layer()
    optimizer = optim.SGD(learning_rate=0.5)
    guard = Scripted(1)
    guarded = GuardedUpdate(layer, optimizer, guard)
    for _ in range(3):
        guarded(lambda: optimizer.update(layer, GRAD))
    assert guarded.step_scale == 0.5 and guarded.rejections == 1 and guard.seen == 4
    np.testing.assert_allclose(np.array(optimizer.learning_rate), 0.25)
