"""Base-model updates: the old adapter never serves the new base; distillation charges nothing."""

from __future__ import annotations

import warnings

from personal.errors import SeededNoiseWarning
from personal.model.lora import get_adapter_weights
from personal.model.tokenizer import train_bpe_tokenizer
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey

import numpy as np
import pytest

KEY = RawKey(bytes(range(32)))
TEXTS = [f"call {name} at {hour}" for name in ("Ana", "Bo", "Cy") for hour in ("6", "7", "noon")]


def _policy(**extra):
    return load_policy("research").with_overrides({
        "privacy.lifetime_epsilon": 20.0, "privacy.noise_multiplier": 3.0,
        "training.min_new_units": 1, "training.steps": 2, "training.expected_batch_size": 4.0,
        "training.max_tokens": 24, "training.lora.rank": 2, "store.synchronous": "NORMAL",
        "gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0,
        "migration.distill_steps": 3, **extra,
    })  # fmt: skip


@pytest.fixture(scope="module")
def other_vocab_base(tmp_path_factory):
    """A tiny model with another tokenizer (another vocabulary size) and another size."""
    from tiny_models import save_tiny_model

    tokenizer = train_bpe_tokenizer(TEXTS * 3, 320, tmp_path_factory.mktemp("tok320"))
    return save_tiny_model(tmp_path_factory.mktemp("other"), "qwen2", tokenizer, 320, seed=3)


def _trained(tmp_path, base, policy):
    p = Personalizer.open(tmp_path / "s", base, policy, KEY, create=True)
    for i in range(6):
        p.log(f"call Ana at {i}", f"Calling Ana at {i}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
    assert p.active_adapter is not None
    return p


@pytest.mark.parametrize("new_base", ["same-tokenizer", "other-tokenizer"])
def test_distill_migration_charges_nothing(
    tmp_path, tiny_model_factory, other_vocab_base, new_base
):
    target = (
        tiny_model_factory("llama", seed=1) if new_base == "same-tokenizer" else other_vocab_base
    )
    with _trained(tmp_path, tiny_model_factory("llama"), _policy()) as p:
        old_fp, old_version = p.base.fingerprint, p.active_adapter.version
        spent = dict(p.ledger.epsilons())
        report = p.on_base_update(target, strategy="distill")
        assert report.old_fingerprint == old_fp and report.new_fingerprint == p.base.fingerprint
        assert report.token_level == (new_base == "same-tokenizer")
        assert report.steps == 3 and not report.charged
        assert p.ledger.epsilons() == spent  # nothing charged
        migration = [r for r in p.ledger.rounds() if r.purpose == "migration"]
        assert len(migration) == 1 and not migration[0].charged and migration[0].reason
        manifest = p.active_adapter
        assert manifest.version == report.new_version != old_version
        assert manifest.base_fingerprint == p.base.fingerprint and manifest.parent == old_version
        assert np.isfinite(p.generate("call Ana", max_tokens=3).confidence)
    with Personalizer.open(tmp_path / "s", target, None, KEY) as reopened:
        assert reopened.active_adapter.version == report.new_version


def test_drop_serves_the_bare_new_base(tmp_path, tiny_model_factory):
    with _trained(tmp_path, tiny_model_factory("llama"), _policy()) as p:
        report = p.on_base_update(tiny_model_factory("llama", seed=1), strategy="drop")
        assert report.new_version is None and p.active_adapter is None
        assert all(float(np.abs(np.array(v)).max()) == 0 or "lora_a" in k
                   for k, v in get_adapter_weights(p.base.model).items())  # fmt: skip


def test_the_old_adapter_never_loads_on_the_new_base(tmp_path, tiny_model_factory):
    with _trained(tmp_path, tiny_model_factory("llama"), _policy()):
        pass
    # Reopening the store on another base serves no adapter (the active one is for the old base).
    with Personalizer.open(tmp_path / "s", tiny_model_factory("llama", seed=1), None, KEY) as p:
        assert p.active_adapter is None


def test_retrain_is_charged(tmp_path, tiny_model_factory):
    with _trained(tmp_path, tiny_model_factory("llama"), _policy()) as p:
        before = dict(p.ledger.epsilons())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.on_base_update(
                tiny_model_factory("llama", seed=1), strategy="retrain",
                noise=GaussianNoise(seed=3), sampler_seed=4,
            )  # fmt: skip
        assert report.charged and report.retrain["eligible"] >= 1
        assert any(p.ledger.epsilons()[u] > before[u] for u in before)
