"""The default public data: the base's own greedy answers to bundled generic prompts, cached."""

from __future__ import annotations

import json
import os

from personal.model.base import load_base
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora, set_adapter_weights
from personal.public import (
    MAX_TOKENS,
    PublicExample,
    SelfGenerated,
    generic_prompts,
    public_batches,
)
from personal.public.selfgen import PROMPTS_FILE

import mlx.core as mx
import pytest
from chat_tokenizers import write_tokenizer
from tiny_models import save_tiny_model

PROMPTS = [f"How do I fix the {thing}?" for thing in ("bike", "poem", "river", "recipe")] * 2
PROMPTS = [f"{p} ({i})" for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def chatml_base(tmp_path_factory):
    tokenizer = write_tokenizer(tmp_path_factory.mktemp("chatml"), "chatml")
    return load_base(save_tiny_model(tmp_path_factory.mktemp("m"), "llama", tokenizer, 384))


def test_the_bundled_prompts() -> None:
    prompts = generic_prompts()
    assert 300 <= len(prompts) <= 500 and len(set(prompts)) == len(prompts)
    rows = [json.loads(line) for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"prompt", "topic"} and r["prompt"].strip() for r in rows)
    topics = {r["topic"] for r in rows}
    assert {"science", "writing", "howto", "math", "coding"} <= topics
    gate_topics = {r["topic"] for r in rows[::4]}  # interleaved: the gate covers every topic
    assert gate_topics == topics


def test_answers_are_generated_once_and_cached_per_fingerprint(
    chatml_base, tmp_path, monkeypatch
) -> None:
    source = SelfGenerated(PROMPTS, max_tokens=6, cache=tmp_path)
    data = source.for_base(chatml_base)
    assert len(data.gate) == 2 and len(data.train) == 6 and data.name == "self-generated"
    assert not set(data.prompts) & {e.prompt for e in data.gate}
    (cached,) = tmp_path.iterdir()
    assert cached.name.startswith(chatml_base.fingerprint.split(":")[1][:32])
    assert json.loads(cached.read_text().splitlines()[0])["count"] == len(PROMPTS)

    def no_generation(self, base):  # a fresh source must read the cache, not the model
        raise AssertionError("generated again")

    monkeypatch.setattr(SelfGenerated, "generate", no_generation)
    again = SelfGenerated(PROMPTS, max_tokens=6, cache=tmp_path).for_base(chatml_base)
    assert again.digest() == data.digest()
    # Another recipe (token cap) is another cache entry, never a stale one.
    with pytest.raises(AssertionError, match="generated again"):
        SelfGenerated(PROMPTS, max_tokens=7, cache=tmp_path).for_base(chatml_base)


def test_a_damaged_cache_is_regenerated_and_no_temporary_file_is_left(
    chatml_base, tmp_path, monkeypatch
) -> None:
    source = SelfGenerated(PROMPTS, max_tokens=4, cache=tmp_path)
    data = source.for_base(chatml_base)
    (cached,) = tmp_path.iterdir()
    cached.write_text(cached.read_text()[:-40])  # truncated
    assert SelfGenerated(PROMPTS, max_tokens=4, cache=tmp_path).for_base(chatml_base) == data

    def failing_replace(src, dst):
        raise OSError("disk full")

    cached.unlink()
    monkeypatch.setattr(os, "replace", failing_replace)
    fresh = SelfGenerated(PROMPTS, max_tokens=4, cache=tmp_path).for_base(chatml_base)
    assert fresh == data and list(tmp_path.iterdir()) == []  # nothing half-written


def test_answers_come_from_the_bare_base_not_the_adapter(chatml_base) -> None:
    model = chatml_base.model
    bare = SelfGenerated(PROMPTS, max_tokens=5, cache=False).for_base(chatml_base)
    inject_lora(model, LoRAConfig(rank=2))
    previous = get_adapter_weights(model)
    try:
        set_adapter_weights(model, {k: mx.ones_like(v) for k, v in previous.items()})
        with_adapter = SelfGenerated(PROMPTS, max_tokens=5, cache=False).for_base(chatml_base)
        assert with_adapter == bare
    finally:
        set_adapter_weights(model, {k: mx.zeros_like(v) for k, v in previous.items()})


def test_cut_answers_are_scored_without_an_end_of_turn(chatml_base) -> None:
    """A random tiny model never stops: every answer is cut at the cap."""
    data = SelfGenerated(PROMPTS, max_tokens=5, cache=False).for_base(chatml_base)
    assert MAX_TOKENS == 64 and not any(e.complete for e in data.train)
    (batch,) = public_batches(chatml_base.tokenizer, data.train[:1])
    end = chatml_base.tokenizer.convert_tokens_to_ids("<|im_end|>")
    first = data.train[0]
    (done,) = public_batches(chatml_base.tokenizer, [PublicExample(first.prompt, first.response)])
    assert int(done.mask.sum().item()) == int(batch.mask.sum().item()) + 1
    assert end in done.targets.tolist()[0]
