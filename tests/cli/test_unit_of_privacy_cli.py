"""The unit of privacy is enforced where data enters, and the audit's claim is what was charged."""

from __future__ import annotations

import json

from personal.cli import cli
from personal.privacy.contract import fits_unit
from personal.privacy.ledger import Ledger
from personal.store import InteractionLog, Passphrase, Store

import pytest
from click.testing import CliRunner
from test_train_audit_cli import PASS, POLICY

DAY_POLICY = POLICY.replace('unit = "interaction"', 'unit = "day"')
SESSION_POLICY = POLICY.replace('unit = "interaction"', 'unit = "session"')


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONAL_PASSPHRASE", PASS)
    (tmp_path / "day.toml").write_text(DAY_POLICY)
    (tmp_path / "session.toml").write_text(SESSION_POLICY)
    return tmp_path


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _jsonl(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _day_lines(day: str, n: int):
    return [
        {"prompt": f"text Ana {i}", "response": f"Sent {i}.", "ts": f"{day}T{i % 24:02d}:00:00Z"}
        for i in range(n)
    ]


def test_forty_interactions_of_one_day_are_one_unit_and_the_audit_says_so(env, tiny_model_factory):
    store = env / "store"
    created = _run("init", store, "--policy", env / "day.toml")
    assert created.exit_code == 0 and "unit of privacy: day" in created.output
    lines = _day_lines("2024-05-01", 40) + _day_lines("2024-05-02", 8)
    imported = _run("import", store, _jsonl(env / "in.jsonl", lines))
    assert imported.exit_code == 0, imported.output
    with InteractionLog.open(store, Passphrase(PASS)) as log:
        assert log.units() == ["2024-05-01", "2024-05-02"] and len(log) == 48

    base = tiny_model_factory("llama")
    trained = _run("train", store, "--base", base, "--policy", env / "day.toml")
    assert trained.exit_code == 0, trained.output
    audit = json.loads(_run("audit", store, "--json").output)
    assert audit["ok"] and audit["unit_of_privacy"] == "day"
    assert audit["units"]["count"] <= 2  # 48 interactions, two days: never 48 units
    with Store.open(store, Passphrase(PASS)) as opened:
        ledger = Ledger.open(opened)
        charged = [u for r in ledger.rounds(with_units=True) for u in r.units or ()]
        assert charged and all(fits_unit("day", u) for u in charged)
        assert set(charged) <= {"2024-05-01", "2024-05-02"}


def test_imports_that_contradict_the_unit_are_refused(env):
    store = env / "store"
    assert _run("init", store, "--policy", env / "day.toml").exit_code == 0
    wrong = [{"prompt": "a", "response": "b", "ts": "2024-05-01T10:00:00Z", "unit": "s-1"}]
    result = _run("import", store, _jsonl(env / "bad.jsonl", wrong))
    assert result.exit_code == 2 and "line 1" in result.output and "2024-05-01" in result.output
    right = [{**wrong[0], "unit": "2024-05-01"}]
    assert _run("import", store, _jsonl(env / "ok.jsonl", right)).exit_code == 0

    sessions = env / "sessions"
    assert _run("init", sessions, "--policy", env / "session.toml").exit_code == 0
    bare = _run("import", sessions, _jsonl(env / "bare.jsonl", [{"prompt": "a", "response": "b"}]))
    assert bare.exit_code == 2 and "session" in bare.output
    auto = [{"prompt": "a", "response": "b", "unit": "interaction:7"}]
    assert _run("import", sessions, _jsonl(env / "auto.jsonl", auto)).exit_code == 2
    with InteractionLog.open(sessions, Passphrase(PASS)) as log:
        assert len(log) == 0


def test_training_refuses_records_logged_under_another_unit(env, tiny_model_factory):
    store = env / "store"
    assert _run("init", store).exit_code == 0  # no policy: one unit per interaction
    lines = _jsonl(env / "in.jsonl", _day_lines("2024-05-01", 6))
    assert _run("import", store, lines).exit_code == 0
    base = tiny_model_factory("llama")
    refused = _run("train", store, "--base", base, "--policy", env / "day.toml")
    assert refused.exit_code == 2 and "another unit of privacy" in refused.output
    with Store.open(store, Passphrase(PASS)) as opened:
        assert not Ledger.exists(opened) or Ledger.open(opened).rounds() == []
