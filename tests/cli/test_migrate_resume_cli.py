"""A migration killed half-way is finished by a re-run, never reported as a success that lost
the personalization; a migration from the wrong base is refused."""

from __future__ import annotations

import json

from personal.cli import cli

import pytest
from click.testing import CliRunner
from test_train_audit_cli import PASS
from trained_store import build, copy


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_factory):
    """One trained store for the module (a training round each costs seconds)."""
    return build(tmp_path_factory.mktemp("trained"), tiny_model_factory("llama"))


@pytest.fixture
def trained(built, tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONAL_PASSPHRASE", PASS)
    return copy(built, tmp_path)


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _active(store):
    listed = json.loads(_run("adapters", "list", store, "--json").output)
    return [v["version"] for v in listed if v["active"]]


def test_a_killed_migration_is_finished_by_a_rerun(trained, tiny_model_factory, monkeypatch):
    import personal.training.migration as migration

    new = tiny_model_factory("llama", seed=1)

    def killed(*args, **kwargs):  # the process dies here: no code after this point runs
        raise RuntimeError("SIGKILL")

    real = migration.distill_migration
    monkeypatch.setattr(migration, "distill_migration", killed)
    crashed = _run("migrate", trained, "--base", new, "--strategy", "distill")
    assert isinstance(crashed.exception, RuntimeError)
    assert _active(trained) == []  # the bare new base, as a SIGKILL leaves it
    monkeypatch.setattr(migration, "distill_migration", real)

    other = tiny_model_factory("llama", seed=2)
    wrong = _run("migrate", trained, "--base", other, "--strategy", "distill")
    assert wrong.exit_code == 2 and "was interrupted" in wrong.output
    assert f"--base {new}" in wrong.output and "--from" in wrong.output

    rerun = _run("migrate", trained, "--base", new, "--strategy", "distill", "--json")
    assert rerun.exit_code == 0, rerun.output
    assert "resuming the interrupted migration" in rerun.output
    report = json.loads(rerun.output[rerun.output.index("{") :])
    assert report["old_version"] == 1 and report["new_version"] == 2
    assert _active(trained) == [2]
    again = json.loads(_run("migrate", trained, "--base", new, "--json").output)
    assert again["old_version"] == again["new_version"] == 2  # done: nothing left to do


def test_migrating_from_a_base_that_is_not_the_stores_is_refused(trained, tiny_model_factory):
    other = tiny_model_factory("llama", seed=2)
    new = tiny_model_factory("llama", seed=1)
    result = _run("migrate", trained, "--base", new, "--from", other)
    assert result.exit_code == 2 and "not" in result.output and "--from" in result.output
    assert _active(trained) == [1]


def test_training_another_base_than_the_stores_is_refused(trained, tiny_model_factory, tmp_path):
    """Issue 19, item 6: after a migration to v2, `train --base v1` charges nothing."""
    old, new = tiny_model_factory("llama"), tiny_model_factory("llama", seed=1)
    assert _run("migrate", trained, "--base", new, "--strategy", "distill").exit_code == 0
    rounds = len(json.loads(_run("audit", trained, "--json").output)["rounds"])
    active = _active(trained)
    refused = _run("train", trained, "--base", old)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "adapters are on base" in refused.output and "nothing was charged" in refused.output
    assert len(json.loads(_run("audit", trained, "--json").output)["rounds"]) == rounds
    assert _active(trained) == active
