"""The simulator passes its public corpus (or a --public-data file) into the library."""

from __future__ import annotations

import json

from personal.errors import ConfigError, PublicDataError
from personal.public import PublicExample

import pytest

from personal_sim.public_corpus import split
from personal_sim.public_data import (
    GATE_SEED,
    PROMPT_SEED,
    TRAIN_SEED,
    corpus_public_data,
    eval_examples,
    simulation_public_data,
)
from personal_sim.runner import SimConfig, simulate


def test_the_corpus_keeps_the_streams_the_library_used() -> None:
    data = corpus_public_data()
    as_examples = lambda items: tuple(PublicExample(i.prompt, i.response) for i in items)  # noqa: E731
    assert data.gate == as_examples(split(GATE_SEED, 0, 0, 128).test)
    assert data.train == as_examples(split(TRAIN_SEED, 256, 0, 0).train)
    assert data.migration_prompts(64) == [i.prompt for i in split(PROMPT_SEED, 64, 0, 0).train]
    assert eval_examples(None, 64) == as_examples(split(GATE_SEED, 0, 0, 64).test)
    assert eval_examples(None, 64) == data.gate[:64]  # the probe is a prefix of the gate


def test_a_public_data_file_replaces_the_corpus(tmp_path) -> None:
    path = tmp_path / "public.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}) + "\n"
        for i in range(40)
    ))  # fmt: skip
    data = simulation_public_data(str(path))
    assert len(data.gate) == 10 and eval_examples(str(path), 4) == data.gate[:4]
    metrics = simulate(
        SimConfig(users=1, days=1, public_data=str(path)), backend="local", workers=1
    )
    day = metrics["users"][0]["arms"]["dp"]["days"][0]
    assert metrics["config"]["public_data"] == str(path) and day["general_loss"] > 0


def test_a_bad_public_data_file_fails_before_any_worker_starts(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\nnot json\n')
    with pytest.raises(PublicDataError, match="line 2"):
        simulate(SimConfig(users=1, days=1, public_data=str(path)), backend="local", workers=1)
    assert issubclass(PublicDataError, ConfigError)
