"""Continual rounds: new units plus replayed ones, public replay, distillation to the base,
online EWC state."""

from __future__ import annotations

import warnings

from personal.errors import ConfigError, NoEligibleUnits, SeededNoiseWarning
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora, set_adapter_weights
from personal.personalizer import Personalizer
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey
from personal.store.settings import StoreSettings
from personal.training.continual import (
    PUBLIC_CURSOR_KEY,
    PublicStream,
    distill_to_base_loss,
    distill_to_base_transform,
)
from personal.training.ewc import EWCState
from personal.training.replay import ReplayBuffer

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from round_policies import TINY_PUBLIC, tiny_round_policy

KEY = RawKey(bytes(range(32)))


def _policy(**extra):
    return tiny_round_policy(**{
        "continual.replay_share": 0.5, "continual.buffer_capacity": 64,
        "continual.public_replay_share": 0.2, "continual.public_distill_weight": 2.0,
        "continual.ewc_lambda": 5.0, **extra,
    })  # fmt: skip


def _update(p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return p.update(noise=GaussianNoise(seed=1), sampler_seed=2)


@pytest.mark.parametrize("fisher", ["public", "dp_gradients"])
def test_rounds_replay_old_units_and_anchor_ewc(tmp_path, tiny_model_factory, fisher):
    policy = _policy(**{"continual.fisher_source": fisher})
    with Personalizer.open(
        tmp_path / "s", tiny_model_factory(), policy, KEY, create=True, public_data=TINY_PUBLIC
    ) as p:
        for i in range(8):
            p.log(f"play song {i}", f"Playing song {i}.")
        first = _update(p)
        assert first.replayed == 0 and first.candidates == 8
        assert EWCState.load(p.store) is not None  # anchored at the accepted adapter
        with pytest.raises(NoEligibleUnits, match="no new interactions"):
            p.update()
        for i in range(4):
            p.log(f"call friend {i}", f"Calling friend {i}.")
        second = _update(p)
        assert second.replayed == 4  # replay share 0.5: as many old units as new ones
        assert second.candidates == 8
        charged = [r for r in p.ledger.rounds(with_units=True) if r.purpose == "training"]
        old = set(charged[0].units)
        assert len(old & set(charged[1].units)) == 4  # only the replayed old units charged
        assert len(ReplayBuffer.open(p.store, 64)) == 12


def _drifted(tiny_model_factory):
    """A tiny base with a rank-2 adapter moved away from zero, and a public-like batch."""
    base = load_base(tiny_model_factory("llama"))
    inject_lora(base.model, LoRAConfig(rank=2), seed=0)
    at_base = get_adapter_weights(base.model)
    moved = {k: v + 0.05 * mx.random.normal(v.shape, key=mx.random.key(i))
             for i, (k, v) in enumerate(sorted(at_base.items()))}  # fmt: skip
    rows = [[1, 5, 9, 13, 17, 21, 25, 29], [2, 6, 10, 14, 18, 22, 26, 30]]
    return base.model, at_base, moved, make_batch(rows, [3, 3])


def test_distill_to_base_is_zero_at_the_base_and_grows_with_drift(tiny_model_factory):
    model, at_base, moved, batch = _drifted(tiny_model_factory)
    assert float(distill_to_base_loss(model, batch)) == pytest.approx(0.0, abs=1e-6)  # B = 0
    set_adapter_weights(model, moved)
    assert float(distill_to_base_loss(model, batch)) > 1e-6
    # lora_off inside the loss restores the adapter (else a second call would compare the base
    # with itself and give 0).
    assert float(distill_to_base_loss(model, batch)) == float(distill_to_base_loss(model, batch))
    set_adapter_weights(model, at_base)
    assert float(distill_to_base_loss(model, batch)) == pytest.approx(0.0, abs=1e-6)


def test_distill_to_base_transform_adds_a_pull_that_reduces_the_drift(tiny_model_factory):
    model, _, moved, batch = _drifted(tiny_model_factory)
    set_adapter_weights(model, moved)
    before = float(distill_to_base_loss(model, batch))
    zeros = {k: mx.zeros_like(v) for k, v in moved.items()}
    ones = {k: mx.ones_like(v) for k, v in moved.items()}
    pull = distill_to_base_transform(model, [batch], 2.0)(zeros, moved)
    shifted = distill_to_base_transform(model, [batch], 2.0)(ones, moved)
    for k in moved:  # additive: the released gradient is kept, the pull added on top
        assert np.allclose(np.array(shifted[k]), np.array(pull[k]) + 1.0, atol=1e-6)
    assert any(float(mx.abs(g).max()) > 0 for g in pull.values())
    set_adapter_weights(model, {k: v - 0.05 * pull[k] for k, v in moved.items()})
    assert float(distill_to_base_loss(model, batch)) < before


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.floats(0.0, 0.3), seed=st.integers(0, 2**16))
def test_distill_to_base_is_a_divergence(tiny_model_factory, scale, seed):
    """KL(base ‖ adapted) is never negative, and zero at the base (B = 0)."""
    model, at_base, _, batch = _drifted(tiny_model_factory)
    moved = {k: v + scale * mx.random.normal(v.shape, key=mx.random.key(seed + i))
             for i, (k, v) in enumerate(sorted(at_base.items()))}  # fmt: skip
    set_adapter_weights(model, moved)
    value = float(distill_to_base_loss(model, batch))
    assert value >= -1e-6
    if scale == 0.0:
        assert value == pytest.approx(0.0, abs=1e-6)


def test_public_stream_cycles_from_its_start():
    stream = PublicStream(["a", "b", "c"], start=4)
    assert [stream.next() for _ in range(4)] == ["b", "c", "a", "b"]
    assert stream.position == 2
    with pytest.raises(ConfigError, match="at least one public batch"):
        PublicStream([])


def test_each_round_goes_on_with_the_public_text_the_last_one_stopped_at(
    tmp_path, tiny_model_factory, monkeypatch
):
    """Public replay and distillation draw ``public_batch_size``-example batches from one stream
    that a reopened store resumes (restarting it every round reused the same few examples)."""
    drawn: list[tuple[int, int]] = []  # (position, rows) of every public batch handed out
    next_batch = PublicStream.next

    def spy(self):
        position, batch = self.position, next_batch(self)
        drawn.append((position, batch.inputs.shape[0]))
        return batch

    monkeypatch.setattr(PublicStream, "next", spy)
    size = 6  # TINY_PUBLIC's 18 training examples: 3 full batches
    policy = _policy(**{"continual.public_batch_size": size})
    base = tiny_model_factory()
    ends = []
    for r in range(2):
        with Personalizer.open(
            tmp_path / "s", base, policy, KEY, create=r == 0, public_data=TINY_PUBLIC
        ) as p:
            for i in range(6):
                p.log(f"play song {r}-{i}", f"Playing song {r}-{i}.")
            _update(p)
            ends.append(StoreSettings(p.store).get(PUBLIC_CURSOR_KEY))
    batches = len(TINY_PUBLIC.train) // size
    first = [pos for pos, _ in drawn[: len(drawn) // 2]]
    second = [pos for pos, _ in drawn[len(drawn) // 2 :]]
    assert len(first) % batches != 0  # else a stream restarted each round would pass as well
    assert first == [i % batches for i in range(len(first))]
    assert second == [(len(first) + i) % batches for i in range(len(second))]
    assert ends == [len(first) % batches, len(drawn) % batches]
    assert {rows for _, rows in drawn} == {size}
