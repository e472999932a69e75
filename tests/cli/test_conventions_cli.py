"""The CLI speaks the formats app developers already use (issue 21): mlx-lm data files on
import, duplicate detection, ..."""

from __future__ import annotations

import json

from personal.cli import cli
from personal.store import InteractionLog, Passphrase

import pytest
from click.testing import CliRunner

PASS = "correct horse battery staple"


def _run(*args: str, input: str | None = None):
    runner = CliRunner(env={"PERSONAL_PASSPHRASE": PASS})
    return runner.invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "store"
    InteractionLog.create(path, Passphrase(PASS), synchronous="NORMAL").close()
    return path


def _records(path):
    with InteractionLog.open(path, Passphrase(PASS)) as log:
        return [(r.prompt, r.response) for r in log.iter_records()]


def test_import_accepts_mlx_lm_completions_and_chats(store, tmp_path):
    lines = [
        {"prompt": "call Ana", "completion": "Calling Ana."},
        {"messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "text Bo hi"}, {"role": "assistant", "content": "Sent."},
            {"role": "user", "content": "and Ana?"}, {"role": "assistant", "content": "Sent too."},
        ]},
        {"prompt": "own format", "response": "still fine", "ts": "2024-05-01T10:00:00Z"},
    ]  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = _run("import", str(store), str(data))
    assert result.exit_code == 0, result.output
    assert "imported 4 interactions" in result.output
    assert _records(store) == [
        ("call Ana", "Calling Ana."), ("text Bo hi", "Sent."), ("and Ana?", "Sent too."),
        ("own format", "still fine"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "line, message",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "answered"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"prompt": "a", "completion": "b", "response": "c"}, "one of"),
        ({"prompt": "a"}, "must be present"),
    ],
)
def test_import_names_the_bad_line(store, tmp_path, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "ok", "completion": "ok"}) + "\n" + json.dumps(line))
    result = CliRunner(env={"PERSONAL_PASSPHRASE": PASS}).invoke(
        cli, ["import", str(store), str(data)]
    )
    assert result.exit_code == 2 and "line 2" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert _records(store) == []  # nothing written


def test_importing_twice_warns_and_skip_duplicates_leaves_copies_out(store, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "completion": f"r{i}"}) + "\n" for i in range(3))
    )
    assert "warning" not in _run("import", str(store), str(data)).output
    again = _run("import", str(store), str(data))
    assert again.exit_code == 0 and "warning: 3 imported interaction(s) repeat" in again.output
    assert len(_records(store)) == 6
    skipped = _run("import", str(store), str(data), "--skip-duplicates")
    assert skipped.exit_code == 0 and "skipped 3" in skipped.output
    assert "imported 0 interactions" in skipped.output and len(_records(store)) == 6
