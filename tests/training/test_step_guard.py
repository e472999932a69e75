"""The step-size guard: a rejected update is undone exactly and retried at half the learning
rate; an accepting guard changes nothing; on a real round it keeps the public loss within the
gate where an unguarded step at too large a rate breaks it."""

from __future__ import annotations

import warnings

from personal.errors import ConfigError, SeededNoiseWarning
from personal.model.lora import LoRAConfig, inject_lora
from personal.personalizer import Personalizer
from personal.privacy.dpsgd import DPConfig, make_dp_step
from personal.privacy.noise import GaussianNoise
from personal.privacy.sampler import pack_token_units
from personal.store import RawKey
from personal.training.step_guard import MAX_HALVINGS, PublicLossGuard

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from guards import Scripted, greedy_public_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from round_policies import TINY_PUBLIC, tiny_round_policy
from tiny_models import build_tiny_model, perturb_lora_b

VOCAB = 96
RNG = np.random.default_rng(3)
SEQS = [RNG.integers(1, VOCAB, n).tolist() for n in (14, 9, 12)]
KEY = RawKey(bytes(range(32)))


def _model() -> nn.Module:
    model, _ = build_tiny_model("llama", VOCAB, seed=0)
    inject_lora(model, LoRAConfig(rank=2), seed=0)
    return perturb_lora_b(model)


def _flat(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def _step(optimizer: optim.Optimizer, guard=None, *, compile: bool = True, steps: int = 1):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        noise = GaussianNoise(seed=5)
    step = make_dp_step(
        model, optimizer, DPConfig(1.0, 1.0), noise=noise, compile=compile, guard=guard
    )
    batch = pack_token_units([[s] for s in SEQS], 3.0, width=16)
    for _ in range(steps):
        step(batch)
    return model, step


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rejections=st.integers(0, 5), compile=st.booleans())
def test_each_rejection_halves_the_sgd_step_and_the_last_one_skips_it(rejections, compile):
    start = _flat(_model())
    plain, _ = _step(optim.SGD(learning_rate=0.5), compile=compile)
    guarded, step = _step(optim.SGD(learning_rate=0.5), Scripted(rejections), compile=compile)
    skipped = rejections > 3  # max_halvings = 3: four sizes tried, then the step is skipped
    assert step.guard_rejections == min(rejections, 4)
    assert step.step_scale == 2.0 ** -min(rejections, 3)
    plain_params = _flat(plain)
    for name, value in _flat(guarded).items():
        scale = 0.0 if skipped else step.step_scale
        expected = (plain_params[name] - start[name]) * scale
        np.testing.assert_allclose(value - start[name], expected, rtol=1e-4, atol=1e-6)


def test_an_accepting_guard_changes_nothing_and_the_smaller_rate_is_kept():
    plain, _ = _step(optim.Adam(learning_rate=0.05), steps=3)
    guarded, step = _step(optim.Adam(learning_rate=0.05), Scripted(0), steps=3)
    for name, value in _flat(plain).items():
        np.testing.assert_allclose(_flat(guarded)[name], value, rtol=1e-5, atol=1e-7)
    assert step.step_scale == 1.0 and step.guard_rejections == 0
    # One rejection on the first step: every later step runs at half the rate (checked once).
    _, kept = _step(optim.SGD(learning_rate=0.5), guard := Scripted(1), steps=3)
    assert kept.step_scale == 0.5 and kept.guard_rejections == 1 and guard.seen == 4


def test_a_rejected_adam_update_leaves_the_optimiser_state_untouched():
    optimizer = optim.Adam(learning_rate=0.05)
    model, step = _step(optimizer, Scripted(99, max_halvings=2))
    assert step.guard_rejections == 3 and step.step_scale == 0.25
    np.testing.assert_array_equal(np.array(optimizer.state["step"]), 0)
    for _, value in tree_flatten(optimizer.state):
        if isinstance(value, mx.array) and value.ndim:  # m and v: still the zeros of init
            assert not np.any(np.array(value))
    for name, value in _flat(model).items():
        np.testing.assert_array_equal(value, _flat(_model())[name])


def test_public_loss_guard_holds_the_public_loss_under_a_rate_that_breaks_it():
    model, _ = build_tiny_model("llama", VOCAB, seed=1)
    inject_lora(model, LoRAConfig(rank=2, scale=20.0), seed=1)
    check = greedy_public_batch(model, VOCAB)
    guard = PublicLossGuard.for_round(model, check, max_rise=0.01, reference="base")
    assert guard.accepts(model)  # the zero adapter is the base itself
    batch = pack_token_units([[s] for s in SEQS], 3.0, width=16)

    def run(with_guard: PublicLossGuard | None) -> tuple[float, object]:
        trained, _ = build_tiny_model("llama", VOCAB, seed=1)
        inject_lora(trained, LoRAConfig(rank=2, scale=20.0), seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            noise = GaussianNoise(seed=2)
        step = make_dp_step(
            trained, optim.SGD(learning_rate=30.0), DPConfig(0.5, 1.0), noise=noise,
            guard=with_guard,
        )  # fmt: skip
        for _ in range(4):
            step(batch)
        return _loss(trained, check), step

    unguarded, _ = run(None)
    guarded, step = run(guard)
    assert unguarded > guard.limit  # the rate really breaks the public loss ...
    assert guarded <= guard.limit  # ... and the guard keeps it within the gate's bound
    assert step.step_scale < 1.0 and step.guard_rejections >= 1


def _loss(model: nn.Module, batch) -> float:
    guard = PublicLossGuard(batch, 1e9)
    guard.accepts(model)
    assert guard.last is not None
    return guard.last


def test_guard_limits_follow_the_gate_reference_and_never_sit_below_the_start():
    model, _ = build_tiny_model("llama", VOCAB, seed=1)
    inject_lora(model, LoRAConfig(rank=2, scale=20.0), seed=1)
    check = greedy_public_batch(model, VOCAB)
    bare = _loss(model, check)
    assert PublicLossGuard.for_round(model, check, max_rise=0.05).limit == pytest.approx(
        bare * 1.05, rel=1e-6
    )
    perturb_lora_b(model, scale=5.0)  # an adapter far from the base
    start = _loss(model, check)
    assert start > bare * 1.05
    assert PublicLossGuard.for_round(model, check, max_rise=0.05).limit == pytest.approx(start)
    active = PublicLossGuard.for_round(model, check, max_rise=0.05, reference="active")
    assert active.limit == pytest.approx(start * 1.05, rel=1e-6)
    with pytest.raises(ConfigError, match="reference"):
        PublicLossGuard.for_round(model, check, max_rise=0.05, reference="gate")
    with pytest.raises(ConfigError, match="max_rise"):
        PublicLossGuard.for_round(model, check, max_rise=float("nan"))
    with pytest.raises(ConfigError, match="limit"):
        PublicLossGuard(check, float("inf"))
    assert MAX_HALVINGS == 8


@pytest.mark.parametrize("guard", ["public", "off"])
def test_rounds_report_the_guard(tmp_path, tiny_model_factory, guard):
    policy = tiny_round_policy(**{
        "training.step_guard": guard, "training.optimizer": "sgd",
        "training.learning_rate": 10.0, "training.lora.scale": 20.0,
        "gates.max_general_regression": 0.01,
    })  # fmt: skip
    with Personalizer.open(
        tmp_path / "s", tiny_model_factory(), policy, KEY, create=True, public_data=TINY_PUBLIC
    ) as p:
        for i in range(8):
            p.log(f"play song {i}", f"Playing song {i}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
    if guard == "off":
        assert report.step_scale == 1.0 and report.guard_rejections == 0
    else:
        assert report.guard_rejections >= 1 and report.step_scale < 1.0


def test_the_guard_is_on_by_default_in_every_bundled_policy():
    from personal.policy import Policy, load_policy

    assert Policy().training.step_guard == "public"
    assert {load_policy(n).training.step_guard for n in ("default", "strict", "research")} == {
        "public"
    }
    off = Policy().with_overrides({"training.step_guard": "off"})
    assert off.to_dict()["training"]["step_guard"] == "off" and off.digest() != Policy().digest()
