"""The public population adapter's build (make population-adapters) and its simulator arms."""

from __future__ import annotations

from personal.adapters.population import read_population_adapter
from personal.errors import ConfigError
from personal.model.base import load_base

import pytest

from personal_sim.build_population_adapter import build
from personal_sim.population import PUBLIC_SEED
from personal_sim.scenario import ABLATION_ARMS, ARMS, CANDIDATE_ARMS, SimConfig, default_policy

TINY_BUILD = {"steps": 2, "users": 1, "days": 2, "batch_size": 4, "eval_every": 2}


def test_the_build_is_a_pure_function_of_its_seed(tmp_path, tiny_model_factory):
    source = tiny_model_factory()
    first = build(source, tmp_path / "a", **TINY_BUILD)
    again = build(source, tmp_path / "b", **TINY_BUILD)
    other = build(source, tmp_path / "c", **TINY_BUILD, seed=1)
    assert first.digest == again.digest != other.digest
    assert (first.path / "adapter.safetensors").read_bytes() == (
        again.path / "adapter.safetensors"
    ).read_bytes()
    manifest = read_population_adapter(first.path.parent).manifest
    assert manifest["base_fingerprint"] == load_base(source).fingerprint
    built = manifest["built"]
    assert built["dp"] is False and built["population"]["seed"] == PUBLIC_SEED
    assert built["steps"] == 2 and built["optimizer"] == "sgd"
    assert [point["step"] for point in manifest["measured"]["curve"]] == [2]


def test_the_build_records_its_guard_and_public_text(tmp_path, tiny_model_factory):
    source = tiny_model_factory()
    guarded = build(source, tmp_path / "g", **TINY_BUILD, guard_max_rise=0.005)
    built = read_population_adapter(guarded.path.parent).manifest["built"]
    assert built["guard_max_rise"] == 0.005 and 0 < built["step_scale"] <= 1.0
    # Not a bundled base: trained on its own self-generated public text.
    assert built["public_data"]["name"] == "self-generated"
    plain = read_population_adapter(build(source, tmp_path / "p", **TINY_BUILD).path.parent)
    assert plain.manifest["built"]["guard_max_rise"] is None
    assert plain.manifest["built"]["step_scale"] == 1.0


def test_no_simulation_evaluates_the_public_population():
    with pytest.raises(ConfigError, match="public population"):
        SimConfig(seed=PUBLIC_SEED)


def test_the_warm_start_arms():
    assert {"dp-warm", "warm-only"} <= set(CANDIDATE_ARMS)
    warm, only = ARMS["dp-warm"], ARMS["warm-only"]
    assert warm.overrides == {"training.warm_start": "population"} and warm.dp and warm.train
    assert only.overrides == warm.overrides and not only.train
    assert warm.training() != only.training()  # separate stores
    # The shipped default starts warm; the ablation arm undoes it.
    assert default_policy().training.warm_start == "population"
    assert "dp-cold" in ABLATION_ARMS
    assert ARMS["dp-cold"].overrides == {"training.warm_start": "none"}
