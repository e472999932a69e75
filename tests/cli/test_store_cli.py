"""The store's commands: init, import, export, erase, rotate-keys, verify, stats."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from personal.cli import cli
from personal.store import ScryptParams
from personal.store import keys as keys_module

import pytest
from click.testing import CliRunner, Result

PASS = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))
    monkeypatch.delenv("PERSONAL_PASSPHRASE", raising=False)
    monkeypatch.delenv("PERSONAL_NEW_PASSPHRASE", raising=False)


def run(*args: str, passphrase: str | None = PASS, **kwargs: object) -> Result:
    env = {"PERSONAL_PASSPHRASE": passphrase} if passphrase else {}
    env.update(kwargs.pop("env", {}))  # type: ignore[arg-type]
    return CliRunner().invoke(cli, list(args), env=env, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "store")
    result = run("init", path)
    assert result.exit_code == 0, result.output
    return path


def _jsonl(tmp_path: Path, *items: object, name: str = "in.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return str(path)


def _export(store: str) -> list[dict]:
    result = run("export", store)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_init_import_export_round_trip(store: str, tmp_path: Path) -> None:
    source = _jsonl(
        tmp_path,
        {"unit": "s1", "prompt": "hi", "response": "hello", "ts": "2024-05-01T10:00:00Z"},
        {"unit": "s1", "prompt": "и ты?", "response": "да", "feedback": {"stars": 5}},
        {"prompt": "no unit", "response": "ok", "ts": 1714557600},
    )
    result = run("import", store, source)
    assert result.exit_code == 0, result.output
    assert "imported 3 interactions" in result.output
    exported = _export(store)
    assert [e["id"] for e in exported] == [1, 2, 3]
    assert exported[0]["ts"] == "2024-05-01T10:00:00.000000Z"
    assert exported[1]["prompt"] == "и ты?" and exported[1]["feedback"] == {"stars": 5}
    assert exported[2]["unit"] == "interaction:3"
    assert exported[2]["ts"] == "2024-05-01T10:00:00.000000Z"
    # An export imports back (ids are re-assigned).
    again = tmp_path / "again.jsonl"
    again.write_text(run("export", store).stdout, encoding="utf-8")
    assert run("import", store, str(again)).exit_code == 0
    assert len(_export(store)) == 6


def test_import_from_stdin(store: str) -> None:
    line = json.dumps({"unit": "u", "prompt": "p", "response": "r"}) + "\n"
    assert run("import", store, "-", input=line).exit_code == 0
    assert [e["prompt"] for e in _export(store)] == ["p"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"prompt": "p"}', "line 2: response must be present"),
        ('{"prompt": "p", "response": "r", "colour": 1}', "unknown field(s) colour"),
        ('{"prompt": "p", "response": "r", "ts": "last tuesday"}', "not an ISO 8601"),
        ('{"prompt": "p", "response": "r", "unit": ""}', "line 2: unit must be 1 to 256"),
        ('{"prompt": "p", "response": "r", "metadata": [1]}', "line 2: metadata must be"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_a_bad_import_line_is_named_and_nothing_is_imported(
    store: str, tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "response": "ok"}) + "\n" + line + "\n")
    result = run("import", store, str(path))
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.startswith("error:")
    assert _export(store) == []


def test_keys_from_a_file_or_a_prompt(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(PASS + "\n")
    path = str(tmp_path / "s")
    assert run("init", path, "--key-file", str(key_file), passphrase=None).exit_code == 0
    prompted = run("stats", path, passphrase=None, input=PASS + "\n")
    assert prompted.exit_code == 0, prompted.output
    assert "records      0" in prompted.stdout
    assert run("init", str(tmp_path / "p"), passphrase=None, input="a\na\n").exit_code == 0
    assert run("stats", str(tmp_path / "p"), passphrase="a").exit_code == 0


def test_errors_are_clean_messages(store: str, tmp_path: Path) -> None:
    wrong = run("export", store, passphrase="nope")
    assert wrong.exit_code == 2 and "error: wrong key" in wrong.stderr
    assert "Traceback" not in wrong.output
    missing = run("stats", str(tmp_path / "missing"))
    assert missing.exit_code == 2 and "no store at" in missing.stderr
    again = run("init", store)
    assert again.exit_code == 2 and "already exists" in again.stderr


def test_erase_by_unit_or_date(store: str, tmp_path: Path) -> None:
    source = _jsonl(
        tmp_path,
        {"unit": "a", "prompt": "1", "response": "r", "ts": "2024-01-01"},
        {"unit": "b", "prompt": "2", "response": "r", "ts": "2024-02-01"},
        {"unit": "c", "prompt": "3", "response": "r", "ts": "2024-03-01"},
    )
    run("import", store, source)
    result = run("erase", store, "--unit", "a", "--unit", "zzz")
    assert result.exit_code == 0 and "erased 1 record(s)" in result.stdout
    assert run("erase", store, "--before", "2024-02-15").stdout.startswith("erased 1 record(s)")
    assert [e["unit"] for e in _export(store)] == ["c"]
    both = run("erase", store, "--unit", "c", "--before", "2024-01-01")
    assert both.exit_code == 2 and "not both" in both.output
    assert run("erase", store).exit_code == 2


def test_rotate_keys(store: str, tmp_path: Path) -> None:
    run("import", store, _jsonl(tmp_path, {"unit": "u", "prompt": "p", "response": "r"}))
    result = run("rotate-keys", store, env={"PERSONAL_NEW_PASSPHRASE": "new passphrase"})
    assert result.exit_code == 0, result.output
    assert run("export", store).exit_code == 2
    assert run("export", store, passphrase="new passphrase").stdout.count("\n") == 1
    new_file = tmp_path / "newkey"
    new_file.write_text("third\n")
    rotated = run(
        "rotate-keys", store, "--new-key-file", str(new_file), passphrase="new passphrase"
    )
    assert rotated.exit_code == 0
    assert run("verify", store, passphrase="third").exit_code == 0


def test_verify_exits_non_zero_on_tampering(store: str, tmp_path: Path) -> None:
    items = [{"unit": f"u{i}", "prompt": f"p{i}", "response": "r"} for i in range(3)]
    run("import", store, _jsonl(tmp_path, *items))
    ok = run("verify", store)
    assert ok.exit_code == 0 and ok.stdout.strip().endswith("ok")
    conn = sqlite3.connect(Path(store) / "store.db", isolation_level=None)
    conn.execute("UPDATE records SET unit = 'u9' WHERE id = 2")
    conn.close()
    bad = run("verify", store)
    assert bad.exit_code == 1
    assert "bad record 2: record 2 failed authentication" in bad.stdout
    assert "FAILED" in bad.stdout
    report = json.loads(run("verify", store, "--json").stdout)
    assert report["ok"] is False and [b["id"] for b in report["bad_records"]] == [2]
    export = run("export", store)
    assert export.exit_code == 2 and "1 record(s) could not be opened" in export.stderr
    assert [json.loads(x)["id"] for x in export.stdout.splitlines()] == [1, 3]


def test_stats(store: str, tmp_path: Path) -> None:
    run("import", store, _jsonl(tmp_path, {"unit": "u", "prompt": "p", "response": "r"}))
    human = run("stats", store)
    assert human.exit_code == 0 and "records      1 in 1 units" in human.stdout
    stats = json.loads(run("stats", store, "--json").stdout)
    assert stats["records"] == 1 and stats["key_kind"] == "passphrase"
