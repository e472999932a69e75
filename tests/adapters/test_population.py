"""Population adapters: the public warm start a base ships (training.warm_start)."""

from __future__ import annotations

import json
import shutil
import tomllib
import warnings
from pathlib import Path

from personal.adapters.population import (
    population_adapter_for,
    population_dir,
    read_population_adapter,
    write_population_adapter,
)
from personal.errors import (
    AdapterCorrupt,
    PopulationAdapterMismatch,
    SeededNoiseWarning,
)
from personal.model.base import load_base
from personal.model.fingerprint import fingerprint_directory, fingerprint_files
from personal.model.lora import get_adapter_weights, inject_lora
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey

import mlx.core as mx
import numpy as np
import pytest
from round_policies import TINY_PUBLIC, tiny_round_policy

KEY = RawKey(bytes(range(32)))
WARM = {"training.warm_start": "population"}


def _weights(policy, model_dir, seed=0):
    """Random adapter weights in ``policy``'s LoRA shape for the base in ``model_dir``."""
    base = load_base(model_dir)
    inject_lora(base.model, policy.training.lora.to_lora_config())
    key = mx.random.key(seed)
    out = {}
    for name, value in sorted(get_adapter_weights(base.model).items()):
        key, sub = mx.random.split(key)
        out[name] = 0.05 * mx.random.normal(value.shape, key=sub)
    return base, out


def _base_with_population(tmp_path, source, policy, *, fingerprint=None, seed=0):
    """A copy of the tiny base ``source`` shipping a population adapter in ``policy``'s shape."""
    model_dir = tmp_path / f"base-{seed}"
    shutil.copytree(source, model_dir)
    base, weights = _weights(policy, model_dir, seed)
    write_population_adapter(
        model_dir, weights, base_fingerprint=fingerprint or base.fingerprint,
        base_name=base.name, lora=policy.training.lora.to_lora_config(), built={"test": True},
    )  # fmt: skip
    return model_dir, weights


def _close(a, b, atol=1e-6):
    return set(a) == set(b) and all(np.allclose(a[k], b[k], atol=atol) for k in a)


@pytest.mark.parametrize("name", ["base-v1", "base-v2"])
def test_each_bundled_base_ships_a_population_adapter_that_fits_it(name):
    base = load_base(name)
    lora = load_policy("default").training.lora.to_lora_config()
    adapter = population_adapter_for(base, lora)
    assert adapter is not None and adapter.base_fingerprint == base.fingerprint
    manifest = adapter.manifest
    assert manifest["public"] is True and manifest["built"]["dp"] is False
    assert manifest["built"]["population"]["seed"] != 0  # never an evaluated seed
    assert manifest["parameters"] == sum(v.size for v in adapter.weights.values())
    # Shipping it leaves the base's identity alone: the fingerprint skips the folder.
    assert not any(population_dir(base.path) in p.parents for p in fingerprint_files(base.path))
    inject_lora(base.model, lora)
    assert set(adapter.weights) == set(get_adapter_weights(base.model))


def test_package_data_ships_the_population_adapters():
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["personal"]
    package = root / "src" / "personal"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    for name in ("base-v1", "base-v2"):
        folder = population_dir(package / "data" / "models" / name)
        assert {folder / "adapter.safetensors", folder / "manifest.json"} <= shipped


def test_the_population_folder_is_not_fingerprinted(tmp_path, tiny_model_factory):
    policy = tiny_round_policy()
    before = fingerprint_directory(tiny_model_factory(), use_cache=False)
    model_dir, _ = _base_with_population(tmp_path, tiny_model_factory(), policy)
    assert fingerprint_directory(model_dir, use_cache=False) == before


def test_a_mismatched_or_damaged_population_adapter_is_refused(tmp_path, tiny_model_factory):
    policy = tiny_round_policy(**WARM)
    other = "sha256:" + "0" * 64
    model_dir, _ = _base_with_population(tmp_path, tiny_model_factory(), policy, fingerprint=other)
    with pytest.raises(PopulationAdapterMismatch, match="built for base"):
        Personalizer.open(tmp_path / "s", model_dir, policy, KEY, create=True)
    assert not (tmp_path / "s").exists()  # a failed create leaves nothing behind
    # Another LoRA shape than the policy's.
    good_dir, _ = _base_with_population(tmp_path, tiny_model_factory(), policy, seed=1)
    wider = tiny_round_policy(**WARM, **{"training.lora.rank": 4})
    with pytest.raises(PopulationAdapterMismatch, match="LoRA shape"):
        Personalizer.open(tmp_path / "s2", good_dir, wider, KEY, create=True)
    # Weights that fail the manifest's SHA-256.
    weights = population_dir(good_dir) / "adapter.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterCorrupt, match="SHA-256"):
        read_population_adapter(good_dir)


def test_a_fresh_store_serves_the_population_adapter_and_charges_nothing(
    tmp_path, tiny_model_factory
):
    policy = tiny_round_policy(**WARM)
    model_dir, weights = _base_with_population(tmp_path, tiny_model_factory(), policy)
    with Personalizer.open(tmp_path / "s", model_dir, policy, KEY, create=True) as p:
        assert p.active_adapter is None and p.warm_start is not None
        assert _close(get_adapter_weights(p.base.model), weights)
        p.log("call Ana at 6", "Calling Ana at 6.")
        p.generate("call Ana", max_tokens=4)
        assert p.ledger.rounds() == [] and not p.ledger.epsilons()
        assert p.budget()["spent_max"] == 0.0
    # Without the key the same base serves a zero adapter (B = 0): the bare base.
    cold = tiny_round_policy()
    with Personalizer.open(tmp_path / "c", model_dir, cold, KEY, create=True) as p:
        assert p.warm_start is None
        b = [v for k, v in get_adapter_weights(p.base.model).items() if k.endswith("lora_b")]
        assert all(not np.any(np.array(v)) for v in b)


def test_a_base_without_one_falls_back_to_a_cold_start(tmp_path, tiny_model_factory):
    policy = tiny_round_policy(**WARM)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silent: the default policy asks for it on any base
        p = Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True)
    with p:
        assert p.warm_start is None and p.active_adapter is None


def test_the_first_round_starts_from_the_population_weights(tmp_path, tiny_model_factory):
    # A tiny learning rate: the round's adapter stays next to where it started.
    policy = tiny_round_policy(**WARM, **{"training.learning_rate": 1e-6})
    model_dir, weights = _base_with_population(tmp_path, tiny_model_factory(), policy)
    with Personalizer.open(
        tmp_path / "s", model_dir, policy, KEY, create=True, public_data=TINY_PUBLIC
    ) as p:
        for i in range(8):
            p.log(f"call Ana at {i}", f"Calling Ana at {i}.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.update(noise=GaussianNoise(seed=1), sampler_seed=2)
        assert report.adapter_version == 1
        trained, manifest = p.registry.load(1)
        assert _close(trained, weights, atol=1e-3) and not _close(trained, weights)
        assert manifest.training["warm_start"] == p.warm_start.describe()
        assert manifest.parent is None


def test_a_migration_starts_the_new_base_from_its_own_population_adapter(
    tmp_path, tiny_model_factory
):
    policy = tiny_round_policy(**WARM)
    old_dir, _ = _base_with_population(tmp_path, tiny_model_factory(), policy, seed=0)
    new_dir, new_weights = _base_with_population(
        tmp_path, tiny_model_factory("llama", seed=1), policy, seed=1
    )
    with Personalizer.open(
        tmp_path / "s", old_dir, policy, KEY, create=True, public_data=TINY_PUBLIC
    ) as p:
        report = p.on_base_update(new_dir, strategy="drop")
        assert report.new_version is None and p.active_adapter is None
        assert p.warm_start is not None and p.warm_start.base_fingerprint == p.base.fingerprint
        assert _close(get_adapter_weights(p.base.model), new_weights)
        assert p.ledger.rounds() == []


def test_the_manifest_records_how_it_was_built(tmp_path, tiny_model_factory):
    policy = tiny_round_policy()
    model_dir, _ = _base_with_population(tmp_path, tiny_model_factory(), policy)
    manifest = json.loads((population_dir(model_dir) / "manifest.json").read_text())
    assert manifest["built"] == {"test": True} and manifest["format_version"] == 1
    assert manifest["lora"]["rank"] == policy.training.lora.rank
