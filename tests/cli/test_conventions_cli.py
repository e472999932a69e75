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


POLICY = """
name = "cli-conventions"
[privacy]
unit = "interaction"
lifetime_epsilon = 8.0
delta = 1e-6
noise_multiplier = 2.0
clip_norm = 1.0
accountant = "rdp"
[training]
min_new_units = 4
max_rounds_per_day = 1
steps = 2
expected_batch_size = 4.0
learning_rate = 0.01
max_tokens = 32
[training.lora]
rank = 2
[gates]
max_general_regression = 1.0
min_personal_gain = -1.0
"""


def _fill(path, n: int, start: int = 0) -> None:
    with InteractionLog.open(path, Passphrase(PASS)) as log:
        for i in range(start, start + n):
            log.append(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} late.")


def _rounds(path) -> list[dict]:
    return json.loads(_run("audit", str(path), "--json").output)["rounds"]


def test_train_defaults_its_base_respects_the_trigger_and_numbers_rounds_as_the_audit(
    store, tmp_path, tiny_model_factory
):
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY)
    _fill(store, 24)
    first = _run("train", str(store), "--base", str(tiny_model_factory()), "--policy", str(policy))
    assert first.exit_code == 0, first.output
    rounds = _rounds(store)
    training = rounds[-1]
    assert training["purpose"] == "training"
    if training.get("validation_round"):  # a held-out set was drawn (CSPRNG coins): #1
        assert [r["purpose"] for r in rounds] == ["validation", "training"]
        expected = "round 2 (the store's 1st training round; held-out validation in round 1"
    else:
        expected = "round 1 (the store's 1st training round; numbered as in `personal audit`"
    assert expected in first.output
    assert "ε +" in first.output and "most spent so far 0 of 8" in first.output  # progress line
    _fill(store, 8, start=24)
    # The same day again: max_rounds_per_day = 1, so not due (nothing charged) ...
    not_due = _run("train", str(store))  # no --base: the store's own
    assert not_due.exit_code == 4 and "not due" in not_due.output and "--force" in not_due.output
    # (1 or 2 rounds so far: the held-out draw above may have drawn no unit)
    assert "nothing was charged" in not_due.output and len(_rounds(store)) == len(rounds)
    # ... unless forced.
    forced = _run("train", str(store), "--force", "--json")
    assert forced.exit_code == 0, forced.output
    data = json.loads(forced.output[forced.output.index("{") :])
    assert data["training_round"] == 2 and data["round_id"] == _rounds(store)[-1]["round_id"]


#: A large step on noise (Adam at 0.5) raises the general loss; the gate allows no rise at all.
RISKY = POLICY.replace("max_general_regression = 1.0", "max_general_regression = 0.0").replace(
    "learning_rate = 0.01", "learning_rate = 0.5"
)


def test_train_exits_3_when_the_gates_refuse(store, tmp_path, tiny_model_factory):
    policy = tmp_path / "p.toml"
    # The step guard would keep the public loss where it was: off, the gate sees the rise.
    policy.write_text(RISKY.replace("[training]\n", '[training]\nstep_guard = "off"\n'))
    _fill(store, 24)
    result = _run("train", str(store), "--base", str(tiny_model_factory()), "--policy", str(policy))
    assert result.exit_code == 3, result.output
    assert (
        "the gates refused the new adapter" in result.output and "step guard" not in result.output
    )
    training = [r for r in _rounds(store) if r["purpose"] == "training"]
    assert training[-1]["status"] == "refused" and training[-1]["adapter_produced"] is None


def test_train_says_when_the_step_guard_shrank_the_learning_rate(
    store, tmp_path, tiny_model_factory
):
    policy = tmp_path / "p.toml"
    policy.write_text(RISKY)  # the guard is on by default
    _fill(store, 24)
    result = _run("train", str(store), "--base", str(tiny_model_factory()), "--policy", str(policy))
    assert result.exit_code in (0, 3), result.output
    assert "step guard: " in result.output and "the policy's learning rate" in result.output


def test_init_without_a_terminal_says_how_to_give_the_passphrase(tmp_path):
    result = CliRunner().invoke(cli, ["init", str(tmp_path / "s")], input="")
    assert result.exit_code == 2 and "PERSONAL_PASSPHRASE" in result.output
    assert "--key-file" in result.output and "Aborted" not in result.output
    assert not (tmp_path / "s").exists()
