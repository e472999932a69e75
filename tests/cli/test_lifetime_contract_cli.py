"""The lifetime contract through the CLI: a settings row can neither raise it nor fool the audit."""

from __future__ import annotations

import json
import sqlite3

from personal.cli import cli
from personal.store import InteractionLog, Passphrase

import pytest
from click.testing import CliRunner
from test_train_audit_cli import PASS, POLICY


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONAL_PASSPHRASE", PASS)
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "bigger.toml").write_text(
        POLICY.replace("lifetime_epsilon = 6.0", "lifetime_epsilon = 60.0")
    )
    return tmp_path / "store"


def _fill(path, n: int = 10) -> None:
    with InteractionLog.open(path, Passphrase(PASS)) as log:
        for i in range(n):
            log.append(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} minutes late.")


def _run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_deleting_the_policy_row_neither_raises_the_budget_nor_passes_the_audit(
    store, tiny_model_factory, tmp_path
):
    InteractionLog.create(store, Passphrase(PASS), synchronous="NORMAL").close()
    _fill(store)
    base = tiny_model_factory("llama")
    assert _run("train", store, "--base", base, "--policy", tmp_path / "policy.toml").exit_code == 0
    conn = sqlite3.connect(store / "store.db")
    conn.execute("DELETE FROM store_settings WHERE name = 'policy'")
    conn.commit()
    conn.close()
    for extra in (["--policy", tmp_path / "bigger.toml"], []):
        refused = _run("train", store, "--base", base, *extra)
        assert refused.exit_code == 2, refused.output
        assert "lifetime contract is fixed" in refused.output and "Traceback" not in refused.output

    audit = _run("audit", store, "--json")
    assert audit.exit_code == 0, audit.output
    data = json.loads(audit.output)
    assert data["lifetime_epsilon"] == 6.0 and data["contract_source"] == "ledger genesis"
    assert data["units"]["epsilon_max"] <= 6.0
    (round_,) = data["rounds"]
    assert round_["policy_digest"].startswith("sha256:") and 0 < round_["epsilon"] <= 6.0

    bigger = _run("audit", store, "--json", "--policy", tmp_path / "bigger.toml")
    assert bigger.exit_code == 1
    check = {c["name"]: c for c in json.loads(bigger.output)["compliance"]}
    assert not check["policy_matches_ledger"]["ok"]
    assert "lifetime_epsilon" not in check["policy_matches_ledger"]["detail"]  # ledger names
    assert "epsilon: 6.0 -> 60.0" in check["policy_matches_ledger"]["detail"]


def test_a_failed_uncharged_first_train_does_not_fix_the_policy(
    store, tiny_model_factory, tmp_path
):
    InteractionLog.create(store, Passphrase(PASS), synchronous="NORMAL").close()
    base = tiny_model_factory("llama")
    empty = _run("train", store, "--base", base, "--policy", tmp_path / "policy.toml")
    assert empty.exit_code == 2 and "nothing was charged" in empty.output
    _fill(store)
    second = _run("train", store, "--base", base, "--policy", tmp_path / "bigger.toml", "--json")
    assert second.exit_code == 0, second.output
    audit = json.loads(_run("audit", store, "--json").output)
    assert audit["lifetime_epsilon"] == 60.0 and audit["ok"]
