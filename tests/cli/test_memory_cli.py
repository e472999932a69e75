"""``personal memory rebuild|stats|drop``, ``generate --memory``, and the index in ``verify``,
``repair``, ``erase`` and ``audit``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from personal.cli import cli
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import Passphrase, ScryptParams
from personal.store import keys as keys_module

import pytest
from click.testing import CliRunner, Result

PASS = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))


def run(*args: object) -> Result:
    runner = CliRunner(env={"PERSONAL_PASSPHRASE": PASS})
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    assert run("init", path).exit_code == 0
    lines = [
        {"prompt": "call my mom", "response": "Calling Maria.", "unit": "u1"},
        {"prompt": "play some jazz", "response": "Playing Coltrane.", "unit": "u2"},
        {"prompt": "call Ana", "response": "Calling Ana.", "unit": "u3"},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert run("import", path, data).exit_code == 0
    return path


def _stats(store: Path) -> dict:
    result = run("memory", "stats", store, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_rebuild_stats_and_drop(store: Path) -> None:
    assert _stats(store)["enabled"] is False
    assert "none" in run("memory", "stats", store).output
    result = run("memory", "rebuild", store)
    assert result.exit_code == 0 and "3 entries" in result.output
    stats = _stats(store)
    assert (stats["enabled"], stats["entries"], stats["records"]) == (True, 3, 3)
    assert 0 < stats["index_bytes_ratio"] < 2
    assert "3 entries for 3 records" in run("memory", "stats", store).output
    assert run("verify", store).exit_code == 0
    result = run("erase", store, "--unit", "u1")
    assert result.exit_code == 0 and _stats(store)["entries"] == 2
    assert "2 entries" in run("memory", "drop", store).output
    assert _stats(store)["enabled"] is False


def test_a_damaged_index_fails_verify_and_names_the_rebuild(store: Path) -> None:
    run("memory", "rebuild", store)
    with sqlite3.connect(store / "store.db") as conn:
        conn.execute("DELETE FROM memory_terms WHERE id = 2")
    conn.close()
    result = run("verify", store)
    assert result.exit_code == 1
    assert "record 2 has no memory index row: run `personal memory rebuild STORE`" in result.output
    stats = run("memory", "stats", store)
    assert stats.exit_code == 2 and "personal memory rebuild STORE" in stats.output
    assert run("memory", "rebuild", store).exit_code == 0
    assert run("verify", store).exit_code == 0
    with sqlite3.connect(store / "store.db") as conn:
        conn.execute("UPDATE memory_terms SET sealed = zeroblob(93) WHERE id = 1")
    conn.close()
    result = run("repair", store)
    assert result.exit_code == 0 and "memory index: rebuilt" in result.output
    assert run("verify", store).exit_code == 0


def test_generate_with_memory_names_the_recalled_interactions(
    tmp_path: Path, tiny_model_factory
) -> None:
    policy = load_policy("research").with_overrides({"store.synchronous": "NORMAL"})
    path = tmp_path / "s"
    with Personalizer.open(path, tiny_model_factory(), policy, Passphrase(PASS), create=True) as p:
        p.log("call my mom", "Calling Maria.")
        p.log("play jazz", "Playing Coltrane.")
    result = run("generate", path, "call mom", "--no-memory", "--json", "--max-tokens", "3")
    assert result.exit_code == 0 and json.loads(result.output)["memory_ids"] == []
    result = run("generate", path, "call mom", "--json", "--max-tokens", "3")  # on by default
    assert result.exit_code == 0 and json.loads(result.output)["memory_ids"] == [1]
    result = run("generate", path, "call mom", "--memory", "--json", "--max-tokens", "3")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["memory_ids"] == [1]
    result = run("generate", path, "mom jazz", "--recall", "1", "--json", "--max-tokens", "3")
    assert len(json.loads(result.output)["memory_ids"]) == 1  # of two matches
    for mode in ("context", "cache"):
        result = run("generate", path, "mom jazz", "--memory-mode", mode, "--memory", "--json",
                     "--max-tokens", "3")  # fmt: skip
        assert result.exit_code == 0 and len(json.loads(result.output)["memory_ids"]) == 2
    result = run("generate", path, "mom", "--memory-mode", "knn", "--memory")
    assert result.exit_code != 0 and "knn" in result.output
    audit = run("audit", path, "--json")
    assert json.loads(audit.output)["memory"] == {
        "index": True, "entries": 2, "charges_epsilon": False,
        "note": json.loads(audit.output)["memory"]["note"],
    }  # fmt: skip
    assert "personal memory: on, 2 entries" in run("audit", path).output
