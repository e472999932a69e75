"""The one-run canary audit: sound DP stays under its accounted ε, broken noise is caught."""

from __future__ import annotations

import warnings

from personal.canary_audit import run_canary_audit
from personal.errors import SeededNoiseWarning
from personal.policy import load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import InteractionLog, RawKey

import numpy as np
import pytest

KEY = RawKey(bytes(range(32)))


class BrokenNoise(GaussianNoise):
    """A deliberately broken mechanism: 1% of the noise the accountant assumes."""

    def privatize_tree(self, tree, std, **kwargs):  # type: ignore[override]
        return super().privatize_tree(tree, std * 0.01, **kwargs)


def _policy():
    return load_policy("research").with_overrides({
        "privacy.lifetime_epsilon": 4.0,
        "privacy.noise_multiplier": 12.0,
        "training.steps": 24,
        "training.expected_batch_size": 4096.0,  # q = 1: every unit in every step
        "training.learning_rate": 0.02,
        "training.max_tokens": 24,
    })  # fmt: skip


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    with InteractionLog.create(path, KEY, synchronous="NORMAL") as log:
        for i in range(6):
            log.append(f"set an alarm for {i}", f"Alarm set for {i}.")
    return path


@pytest.mark.parametrize("broken", [False, True], ids=["sound", "noise-x0.01"])
def test_canary_audit(store, tiny_model_factory, broken):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        result = run_canary_audit(
            store, KEY, tiny_model_factory("llama"), _policy(), canaries=200, seed=5,
            noise=BrokenNoise(seed=6) if broken else GaussianNoise(seed=6),
        )  # fmt: skip
    assert 0 < result.epsilon_accounted <= 4.0
    assert result.canaries == 200 and 60 < result.included < 140
    if broken:
        assert result.epsilon_lower_bound > result.epsilon_accounted
        assert not result.passed
    else:
        assert result.epsilon_lower_bound <= result.epsilon_accounted
        assert result.passed
    assert np.isfinite(result.epsilon_lower_bound)


def test_the_original_store_is_untouched(store, tiny_model_factory):
    from personal.privacy.ledger import Ledger
    from personal.store import Store

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        run_canary_audit(
            store, KEY, tiny_model_factory("llama"), _policy(), canaries=8, seed=1,
            noise=GaussianNoise(seed=2),
        )  # fmt: skip
    with Store.open(store, KEY) as opened:
        assert Ledger.open(opened, epsilon=4.0, delta=1e-6).rounds() == []
        assert len(InteractionLog(opened)) == 6
    assert not (store / "adapters").exists() or not any((store / "adapters").iterdir())
