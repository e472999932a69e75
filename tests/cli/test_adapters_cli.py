"""`personal adapters list|activate|rollback|verify|prune` (no key needed)."""

from __future__ import annotations

import json
from pathlib import Path

from personal.adapters import AdapterRegistry
from personal.cli import _Group
from personal.cli.adapters import register

import click
import mlx.core as mx
import pytest
from click.testing import CliRunner, Result

FP = "sha256:" + "a" * 64
LORA = {"rank": 2, "scale": 20.0, "dropout": 0.0, "targets": None, "num_layers": None}


def save(registry: AdapterRegistry, tag: int) -> int:
    weights = {"l.0.q.lora_a": mx.full((8, 2), float(tag)), "l.0.q.lora_b": mx.zeros((2, 8))}
    return registry.save(weights, base_fingerprint=FP, base_name="base-test", lora=LORA)


@pytest.fixture(scope="module")
def cli() -> click.Group:
    @click.group(cls=_Group)
    def group() -> None:
        """A fresh `personal` group holding only the adapter commands."""

    register(group)
    return group


@pytest.fixture
def store(tmp_path: Path) -> Path:
    registry = AdapterRegistry.for_store(tmp_path)
    for i in (1, 2, 3):
        save(registry, i)
    registry.activate(1)
    registry.activate(2)
    return tmp_path


def run(cli: click.Group, *args: object) -> Result:
    return CliRunner().invoke(cli, ["adapters", *map(str, args)], env={})


def test_list_json(cli, store):
    result = run(cli, "list", store, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["version"] for r in rows] == [1, 2, 3]
    assert [r["active"] for r in rows] == [False, True, False]
    for row in rows:
        assert {"version", "base_fingerprint", "active", "created", "sha256"} <= set(row)
        assert row["base_fingerprint"] == FP and len(row["sha256"]) == 64
        assert row["created"].endswith("Z")


def test_list_text_and_empty(cli, store, tmp_path):
    result = run(cli, "list", store)
    assert result.exit_code == 0 and "*       2" in result.output
    (tmp_path / "empty").mkdir()
    assert run(cli, "list", tmp_path / "empty").output.strip() == "no adapters"


def test_activate_rollback(cli, store):
    result = run(cli, "activate", store, 3)
    assert result.exit_code == 0 and "activated version 3" in result.output
    result = run(cli, "rollback", store)
    assert result.exit_code == 0 and "rolled back to version 2" in result.output
    result = run(cli, "rollback", store, "--to", 3)
    assert result.exit_code == 0 and "version 3" in result.output
    assert AdapterRegistry.for_store(store).active_version == 3


def test_activate_checks_base(cli, store, tiny_model_factory):
    result = run(cli, "activate", store, 3, "--base", tiny_model_factory("llama"))
    assert result.exit_code == 2 and "never loads onto another base" in result.output
    assert AdapterRegistry.for_store(store).active_version == 2


def test_errors_are_clean(cli, store, tmp_path):
    result = run(cli, "activate", store, 9)
    assert result.exit_code == 2 and "error: No adapter version 9" in result.output
    result = run(cli, "list", tmp_path / "missing")
    assert result.exit_code == 2 and "personal init" in result.output
    run(cli, "rollback", store)
    result = run(cli, "rollback", store)
    assert result.exit_code == 2 and "No earlier activated version" in result.output
    assert run(cli, "activate", store, 0).exit_code == 2  # click's own range check


def test_verify_exit_status(cli, store):
    result = run(cli, "verify", store)
    assert result.exit_code == 0 and result.output.strip().endswith("ok")
    weights = store / "adapters" / "v000003" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    result = run(cli, "verify", store)
    assert result.exit_code == 1 and "SHA-256" in result.output and "FAILED" in result.output
    report = json.loads(run(cli, "verify", store, "--json").output)
    assert report["ok"] is False and report["verified"] == [1, 2] and report["active"] == 2


def test_prune(cli, store):
    result = run(cli, "prune", store, "--keep", 1, "--json")
    assert result.exit_code == 0 and json.loads(result.output) == {"removed": []}
    registry = AdapterRegistry.for_store(store)
    registry.activate(3)  # now 2 is the rollback target and 1 is free to go
    result = run(cli, "prune", store, "--keep", 1)
    assert result.exit_code == 0 and "removed version(s) 1" in result.output
    assert registry.versions() == [2, 3]
    assert run(cli, "prune", store, "--keep", 0).exit_code == 2


def test_no_key_is_asked_for(cli, store):
    result = CliRunner().invoke(cli, ["adapters", "list", str(store)], input="")
    assert result.exit_code == 0 and "assphrase" not in result.output
