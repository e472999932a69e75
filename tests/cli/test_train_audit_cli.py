"""`personal train` and `personal audit` through the real CLI on a real store."""

from __future__ import annotations

import json

from personal.cli import cli
from personal.store import InteractionLog, Passphrase

import pytest
from click.testing import CliRunner

PASS = "correct horse battery staple"
POLICY = """
name = "cli-test"
[privacy]
unit = "interaction"
lifetime_epsilon = 6.0
delta = 1e-6
noise_multiplier = 2.0
clip_norm = 1.0
accountant = "rdp"
[training]
min_new_units = 1
steps = 3
expected_batch_size = 4.0
learning_rate = 0.01
max_tokens = 32
[training.lora]
rank = 2
scale = 4.0
[gates]
max_general_regression = 1.0
min_personal_gain = -1.0
[migration]
distill_steps = 8
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONAL_PASSPHRASE", PASS)
    path = tmp_path / "store"
    with InteractionLog.create(path, Passphrase(PASS), synchronous="NORMAL") as log:
        for i in range(10):
            log.append(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} minutes late.")
    (tmp_path / "policy.toml").write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_factory):
    """The ``store`` fixture's store after ``train --policy policy.toml``, built once."""
    from trained_store import build  # it imports PASS and POLICY from here

    return build(tmp_path_factory.mktemp("trained"), str(tiny_model_factory("llama")))


@pytest.fixture
def trained(built, tmp_path, monkeypatch):
    """A fresh copy of ``built`` (test_train_then_audit_passes checks that first round)."""
    from trained_store import copy

    monkeypatch.setenv("PERSONAL_PASSPHRASE", PASS)
    return copy(built, tmp_path)


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_train_then_audit_passes(store, tiny_model_factory, tmp_path):
    base = str(tiny_model_factory("llama"))
    policy = str(tmp_path / "policy.toml")
    result = _run("train", str(store), "--base", base, "--policy", policy, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["status"] == "completed" and report["adapter_version"] == 1
    assert report["eligible"] == 10 and 0 < report["epsilon_max"] <= 6.0

    html = tmp_path / "audit.html"
    audit = _run("audit", str(store), "--json", "--html", str(html))
    assert audit.exit_code == 0, audit.output
    data = json.loads(audit.output)
    for key in ("delta", "lifetime_epsilon", "accountant", "rounds", "units", "ledger_ok"):
        assert key in data
    (round_,) = data["rounds"]
    assert {"noise_multiplier", "sample_rate", "steps", "clip_norm", "purpose"} <= set(round_)
    assert round_["noise_multiplier"] == 2.0 and round_["purpose"] == "training"
    assert data["units"]["count"] == 10 and data["ledger_ok"] and data["ok"]
    assert data["units"]["epsilon_max"] == pytest.approx(report["epsilon_max"])
    # opacus' plain RDP composition at δ is below the filter's conversion at δ/32.
    assert 0 < data["units"]["accountant_epsilon_max"] <= data["units"]["epsilon_max"]
    page = html.read_text()
    assert (
        page.startswith("<!DOCTYPE html>")
        and "<svg" in page
        and "http" not in page.split("<body>")[1].replace("http://www.w3.org/2000/svg", "")
    )


def test_audit_fails_on_a_rolled_back_ledger(trained, tiny_model_factory, tmp_path):
    import shutil

    store, base = trained, str(tiny_model_factory("llama"))
    backup = tmp_path / "backup"
    with InteractionLog.open(store, Passphrase(PASS)) as log:
        log.store.checkpoint()
        log.append("text Ana I'm on my way", "Sent to Ana: on my way.")
    shutil.copytree(store, backup)
    assert _run("train", str(store), "--base", base, "--force").exit_code == 0
    for name in ("store.db", "store.db-wal", "store.db-shm"):
        if (backup / name).exists():
            shutil.copy2(backup / name, store / name)
    audit = _run("audit", str(store), "--json")
    assert audit.exit_code == 1
    data = json.loads(audit.output)
    assert not data["ledger_ok"] and not data["ok"]
    assert "rollback" in " ".join(data["ledger_problems"]).lower() or data["ledger_problems"]
    refused = CliRunner().invoke(cli, ["train", str(store), "--base", base])
    assert refused.exit_code == 2 and "error:" in refused.output


def test_a_policy_cannot_raise_the_lifetime_budget(trained, tiny_model_factory, tmp_path):
    store, base = trained, str(tiny_model_factory("llama"))
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(POLICY.replace("lifetime_epsilon = 6.0", "lifetime_epsilon = 60.0"))
    result = CliRunner().invoke(cli, ["train", str(store), "--base", base, "--policy", str(bigger)])
    assert result.exit_code == 2 and "lifetime" in result.output


def test_migrate_to_a_new_base(trained, tiny_model_factory):
    store = trained
    new = str(tiny_model_factory("llama", seed=1))
    result = _run("migrate", str(store), "--base", new, "--strategy", "distill", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["old_version"] == 1 and report["new_version"] == 2 and not report["charged"]
    listed = json.loads(_run("adapters", "list", str(store), "--json").output)
    active = [v for v in listed if v["active"]]
    assert len(active) == 1 and active[0]["version"] == 2
    audit = json.loads(_run("audit", str(store), "--json").output)
    assert [r["purpose"] for r in audit["rounds"]] == ["training", "migration"]
    assert audit["ok"]


def test_a_gaussian_filter_store_previews_and_audits_with_it(store, tiny_model_factory, tmp_path):
    """privacy.filter = "gaussian": the round preview, the ledger and the audit all use the
    Gaussian-DP filter (a round costs each eligible unit μ² = steps/σ², sampling ignored)."""
    from personal.privacy.gdp import gaussian_epsilon

    base = str(tiny_model_factory("llama"))
    policy = tmp_path / "gaussian.toml"
    policy.write_text(POLICY.replace("[training]", 'filter = "gaussian"\n[training]', 1))
    result = _run("train", str(store), "--base", base, "--policy", str(policy))
    assert result.exit_code == 0, result.output
    round_eps = gaussian_epsilon((3 / 2.0**2) ** 0.5, 1e-6)  # 3 steps at σ = 2
    assert f"ε +{round_eps:.3g} per eligible unit, gaussian filter" in result.output
    audit = _run("audit", str(store), "--json")
    assert audit.exit_code == 0, audit.output
    data = json.loads(audit.output)
    assert data["ok"] and data["filter"] == "gaussian"
    training = next(r for r in data["rounds"] if r["purpose"] == "training")
    assert training["epsilon"] == pytest.approx(round_eps, rel=1e-9)
    assert "filter: gaussian" in _run("audit", str(store)).output
