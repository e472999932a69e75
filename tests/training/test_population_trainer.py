"""The public population adapter's trainer: plain SGD on public examples, a pure function of
its seed, and under a step guard the public loss stays within the gate's bound at a rate that
breaks it unguarded."""

from __future__ import annotations

from personal.model.base import load_base
from personal.model.fit import masked_ce_loss
from personal.model.lora import LoRAConfig, inject_lora
from personal.public import PublicExample
from personal.training.population import train_population_adapter
from personal.training.step_guard import PublicLossGuard

import numpy as np
from guards import greedy_public_batch

EXAMPLES = [
    PublicExample(f"text {name} about the weekend plans", f"sure, {name} is set for saturday")
    for name in ("ana", "bo", "cy", "di", "ed", "fay")
]
PUBLIC = [
    PublicExample(f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    for a, b in ((1, 2), (3, 4), (5, 6), (7, 8))
]


def _train(factory, learning_rate: float, guarded: bool, seed: int = 0):
    base = load_base(factory())
    # A large LoRA scale makes a step's effect big enough for the rate to break the base.
    inject_lora(base.model, LoRAConfig(rank=2, scale=20.0), seed=0)
    check = greedy_public_batch(base.model, base.tokenizer.vocab_size)
    guard = PublicLossGuard.for_round(base.model, check, max_rise=0.01) if guarded else None
    scales: list[float] = []
    weights = train_population_adapter(
        base, EXAMPLES, PUBLIC, steps=4, learning_rate=learning_rate, batch_size=4,
        distill_weight=1.0, public_batch_size=4, seed=seed, guard=guard,
        callback=lambda step, loss, scale: scales.append(scale),
    )  # fmt: skip
    return weights, scales, float(masked_ce_loss(base.model, check)), guard


def test_the_adapter_is_a_pure_function_of_its_inputs_and_seed(tiny_model_factory):
    first, scales, _, _ = _train(tiny_model_factory, 0.5, guarded=False)
    again, _, _, _ = _train(tiny_model_factory, 0.5, guarded=False)
    other, _, _, _ = _train(tiny_model_factory, 0.5, guarded=False, seed=1)
    assert scales == [1.0] * 4  # unguarded: the rate is the rate
    assert all(np.array_equal(np.array(first[k]), np.array(again[k])) for k in first)
    assert any(not np.array_equal(np.array(first[k]), np.array(other[k])) for k in first)


def test_the_guard_holds_the_public_loss_where_the_rate_breaks_it(tiny_model_factory):
    _, _, unguarded, _ = _train(tiny_model_factory, 20.0, guarded=False)
    _, scales, guarded, guard = _train(tiny_model_factory, 20.0, guarded=True)
    assert unguarded > guard.limit  # the rate really breaks the public loss ...
    assert guarded <= guard.limit  # ... and the guard keeps it within the bound
    assert scales[-1] < 1.0 and scales == sorted(scales, reverse=True)  # kept, never raised
