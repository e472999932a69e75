"""Continual rounds: new units plus replayed ones, public replay, online EWC state."""

from __future__ import annotations

import warnings

from personal.continual.ewc import EWCState
from personal.continual.replay import ReplayBuffer
from personal.errors import NoEligibleUnits, SeededNoiseWarning
from personal.personalizer import Personalizer
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey

import pytest
from round_policies import tiny_round_policy

KEY = RawKey(bytes(range(32)))


def _policy(**extra):
    return tiny_round_policy(**{
        "continual.replay_share": 0.5, "continual.buffer_capacity": 64,
        "continual.public_replay_share": 0.2, "continual.ewc_lambda": 5.0, **extra,
    })  # fmt: skip


def _update(p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return p.update(noise=GaussianNoise(seed=1), sampler_seed=2)


@pytest.mark.parametrize("fisher", ["public", "dp_gradients"])
def test_rounds_replay_old_units_and_anchor_ewc(tmp_path, tiny_model_factory, fisher):
    policy = _policy(**{"continual.fisher_source": fisher})
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
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
