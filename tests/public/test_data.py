"""Public data as an input: JSONL files, disjoint splits, named errors with line numbers."""

from __future__ import annotations

import json
from pathlib import Path

from personal.errors import PublicDataError
from personal.public import GATE_EVERY, PublicData, PublicExample, SelfGenerated, public_source

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def test_jsonl_of_pairs_and_messages(tmp_path) -> None:
    lines: list[object] = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(6)]
    lines.insert(2, "")  # blank lines are skipped
    lines.append({"messages": [
        {"role": "user", "content": "m1"}, {"role": "assistant", "content": "r1"},
        {"role": "user", "content": "m2"}, {"role": "assistant", "content": "r2"},
    ]})  # fmt: skip
    data = PublicData.from_jsonl(_write(tmp_path / "p.jsonl", lines))
    prompts = [e.prompt for e in data.gate + data.train]
    assert sorted(prompts) == sorted([f"q{i}" for i in range(6)] + ["m1", "m2"])
    assert [e.prompt for e in data.gate] == ["q0", "q4"]  # one in GATE_EVERY, in file order
    assert GATE_EVERY == 4 and data.name.endswith("p.jsonl")
    assert PublicExample("m2", "r2") in data.train
    assert data.migration_prompts(3) == ["q1", "q2", "q3"]


def test_explicit_splits_win_and_the_gate_stays_held_out(tmp_path) -> None:
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": "same", "response": "x", "split": "gate"},
        {"prompt": "same", "response": "y", "split": "train"},
        {"prompt": "other", "response": "z", "split": "train"},
    ])  # fmt: skip
    data = PublicData.from_jsonl(path)
    assert [e.prompt for e in data.gate] == ["same"]
    assert [e.prompt for e in data.train] == ["other"]  # the gate's prompt is never trained on
    assert data.prompts == ("other",)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"prompt": "q"}, "prompt"),
        ({"prompt": "", "response": "a"}, "non-empty prompt"),
        ({"prompt": "q", "response": "a", "split": "test"}, "split must be"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "system", "content": "s"}]}, "no system turn"),
        ({"messages": [{"role": "user", "content": "u"}]}, "no assistant reply"),
    ],
)
def test_a_bad_line_is_a_named_error_with_its_number(tmp_path, line, match) -> None:
    good = [{"prompt": f"q{i}", "response": "a"} for i in range(3)]
    path = _write(tmp_path / "p.jsonl", [*good[:2], line, good[2]])
    with pytest.raises(PublicDataError, match=match) as info:
        PublicData.from_jsonl(path)
    assert "line 3" in str(info.value)


def test_too_little_or_unreadable_data_is_a_named_error(tmp_path) -> None:
    with pytest.raises(PublicDataError, match="at least 2 examples"):
        PublicData.from_jsonl(_write(tmp_path / "one.jsonl", [{"prompt": "q", "response": "a"}]))
    with pytest.raises(PublicDataError, match="cannot read"):
        PublicData.from_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(PublicDataError, match="one gate example and one training"):
        PublicData(gate=(PublicExample("q", "a"),), train=())


@settings(max_examples=60, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.sampled_from("abcdefgh"), st.text(max_size=5)), max_size=40),
    splits=st.lists(st.sampled_from(["gate", "train", None]), max_size=40),
)
def test_splits_are_disjoint_and_lose_nothing_else(pairs, splits) -> None:
    splits = (splits + [None] * len(pairs))[: len(pairs)]
    try:
        data = PublicData.from_examples(pairs, splits=splits)
    except PublicDataError:
        return  # too few examples on one side
    gate = {e.prompt for e in data.gate}
    assert not gate & {e.prompt for e in data.train} and not gate & set(data.prompts)
    kept = [(e.prompt, e.response) for e in data.gate + data.train]
    assert all(p in gate or (p, r) in kept for p, r in pairs)
    assert data.digest() == PublicData.from_examples(pairs, splits=splits).digest()


def test_public_source_resolves_what_an_app_passes(tmp_path) -> None:
    assert isinstance(public_source(None), SelfGenerated)
    data = PublicData.from_examples([("a", "1"), ("b", "2")])
    assert public_source(data) is data and data.for_base(object()) is data
    path = _write(tmp_path / "p.jsonl", [{"prompt": "a", "response": "1"}] * 2 + ["{"])
    with pytest.raises(PublicDataError, match="line 3"):
        public_source(str(path))
    with pytest.raises(PublicDataError, match="public_data must be"):
        public_source(42)  # type: ignore[arg-type]
