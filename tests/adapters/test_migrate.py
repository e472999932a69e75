"""Base-model updates: the old adapter never serves the new base; distillation charges nothing."""

from __future__ import annotations

import warnings

from personal.errors import SeededNoiseWarning
from personal.model.lora import get_adapter_weights
from personal.model.tokenizer import train_bpe_tokenizer
from personal.personalizer import Personalizer
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey

import numpy as np
import pytest
from round_policies import TINY_PUBLIC, tiny_round_policy

KEY = RawKey(bytes(range(32)))
TEXTS = [f"call {name} at {hour}" for name in ("Ana", "Bo", "Cy") for hour in ("6", "7", "noon")]


def _policy(**extra):
    return tiny_round_policy(**{"migration.distill_steps": 3, **extra})


@pytest.fixture(scope="module")
def other_vocab_base(tmp_path_factory):
    """A tiny model with another tokenizer (another vocabulary size) and another size."""
    from tiny_models import save_tiny_model

    tokenizer = train_bpe_tokenizer(TEXTS * 3, 320, tmp_path_factory.mktemp("tok320"))
    return save_tiny_model(tmp_path_factory.mktemp("other"), "qwen2", tokenizer, 320, seed=3)


def _trained(tmp_path, base, policy):
    """A store with one accepted round. TINY_PUBLIC: migration on the self-generated default
    is tested in tests/cli/test_train_audit_cli.py and tests/test_personalizer_public.py."""
    p = Personalizer.open(tmp_path / "s", base, policy, KEY, create=True, public_data=TINY_PUBLIC)
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
        after = p.ledger.epsilons()
        assert any(after[u] > before[u] for u in before)
        share = p.policy.migration.retrain_budget_share
        lifetime = p.policy.privacy.lifetime_epsilon
        for u, spent in before.items():  # nobody spent more than its share of what was left
            assert after[u] <= spent + share * (lifetime - spent) + 1e-9


def test_retrain_respects_the_budget_share(tmp_path, tiny_model_factory):
    """A share too small for one round: the retrain is skipped and nothing is charged."""
    policy = _policy(**{"migration.retrain_budget_share": 0.001})
    with _trained(tmp_path, tiny_model_factory("llama"), policy) as p:
        before = dict(p.ledger.epsilons())
        report = p.on_base_update(tiny_model_factory("llama", seed=1), strategy="retrain")
        assert not report.charged and "0.10% of their remaining budget" in report.retrain["skipped"]
        assert p.ledger.epsilons() == before


def _lora_base(path, seed):
    from personal.model.base import load_base
    from personal.model.lora import LoRAConfig, inject_lora

    base = load_base(path)
    inject_lora(base.model, LoRAConfig(rank=2), seed=seed)
    return base


def test_residual_target_of_a_zero_adapter_is_the_new_base(tiny_model_factory):
    """A teacher whose adapter changes nothing asks the new base to change nothing."""
    from personal.adapters.migrate import residual_target
    from personal.model.lora import lora_off

    import mlx.core as mx
    import mlx.nn as nn

    old = _lora_base(tiny_model_factory("llama"), 0)  # fresh LoRA: B = 0
    new = _lora_base(tiny_model_factory("llama", seed=1), 1)
    inputs = mx.array([[1, 5, 9, 13, 17, 21]])
    target = nn.log_softmax(residual_target(old.model, new.model, inputs), axis=-1)
    with lora_off(new.model):
        expected = nn.log_softmax(new.model(inputs), axis=-1)
    assert np.allclose(np.array(target), np.array(expected), atol=1e-5)


def test_residual_distill_transfers_the_adapters_shift(tiny_model_factory):
    """The student learns the teacher's shift: its loss falls, and lora_off restores scales.

    Both bases share weights here, so the shift is exactly representable by the student's LoRA.
    """
    from personal.adapters.migrate import residual_distill
    from personal.model.batching import make_batch
    from personal.model.lora import get_adapter_weights, lora_modules, lora_off, set_adapter_weights

    import mlx.core as mx
    import mlx.optimizers as optim

    old = _lora_base(tiny_model_factory("llama"), 0)
    rng = np.random.default_rng(0)
    shifted = {k: mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32))
               for k, v in get_adapter_weights(old.model).items()}  # fmt: skip
    set_adapter_weights(old.model, shifted)
    new = _lora_base(tiny_model_factory("llama"), 1)
    scales = [m.scale for m in lora_modules(new.model).values()]
    with lora_off(new.model):
        assert all(m.scale == 0 for m in lora_modules(new.model).values())
    assert [m.scale for m in lora_modules(new.model).values()] == scales
    batch = make_batch([list(range(1, 12)), list(range(20, 28))], [3, 2])
    losses = residual_distill(old.model, new.model, [batch] * 40, optim.Adam(learning_rate=1e-3))
    assert losses[0] > 0 and losses[-1] < 0.3 * losses[0]


def test_residual_distill_at_scored_positions_from_cached_trunks_equals_the_full_one(monkeypatch):
    """4-block bases with LoRA on the last one: the targets and the student's logits at the
    replies' positions, each model's trunk computed once; the same losses and the same trained
    adapter as every position's logits through the whole models."""
    import personal.adapters.migrate as migrate
    from personal.model.batching import make_batch
    from personal.model.lora import get_adapter_weights

    import mlx.optimizers as optim
    from tiny_models import tiny_lora_model

    def base(seed: int):
        return tiny_lora_model("llama", 96, seed=seed, layers=4, adapted=1)

    rng = np.random.default_rng(3)
    batches = [
        make_batch([rng.integers(1, 96, 14).tolist(), rng.integers(1, 96, 9).tolist()], [8, 5])
        for _ in range(3)
    ] * 2  # repeated rows: the trunk cache serves the second epoch

    def run():
        student = base(2)
        # SGD: Adam's g/sqrt(v) would blow float32 rounding of near-zero gradients up to ±lr
        losses = migrate.residual_distill(base(1), student, batches, optim.SGD(0.5))
        return losses, {k: np.array(v) for k, v in get_adapter_weights(student).items()}

    losses, adapter = run()
    monkeypatch.setattr(migrate, "output_head", lambda model: None)
    monkeypatch.setattr(migrate.TrunkCache, "for_model", classmethod(lambda cls, model: None))
    full_losses, full_adapter = run()
    np.testing.assert_allclose(losses, full_losses, rtol=1e-4, atol=1e-6)
    start = get_adapter_weights(base(2))
    assert max(float(np.abs(adapter[k] - np.array(v)).max()) for k, v in start.items()) > 1e-3
    for name, value in full_adapter.items():
        np.testing.assert_allclose(adapter[name], value, rtol=1e-3, atol=1e-5)
