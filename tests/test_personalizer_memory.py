"""Generation with personal memory: recalled interactions become a token cache (the default) or
earlier turns before the request, through the active adapter, and the result names them."""

from __future__ import annotations

from personal.errors import ConfigError
from personal.memory import MAX_MEMORY_TOKENS
from personal.model.generate import generate
from personal.model.lora import get_adapter_weights
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import RawKey
from personal.store import memory as mi

import pytest
from tiny_models import perturb_lora_b

KEY = RawKey(bytes(range(32)))
LOGGED = [
    ("call my mom", "Calling Maria (mom) now."),
    ("what's the weather", "Sunny."),
    ("remind me to water the plants", "Reminder set for 7 pm."),
]


@pytest.fixture
def opened(tmp_path, tiny_model_factory):
    policy = load_policy("research").with_overrides({"store.synchronous": "NORMAL"})
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        for prompt, response in LOGGED:
            p.log(prompt, response)
        yield p


def test_memory_is_on_by_default_and_indexes_at_the_first_generation(opened: Personalizer) -> None:
    assert opened.memory_default is None and opened.memory_on
    assert not mi.enabled(opened.store.db)  # opening builds nothing
    reply = opened.generate("call mom", max_tokens=4)
    assert reply.memory_ids == (1,) and reply.to_dict()["memory_ids"] == [1]
    assert mi.enabled(opened.store.db)


def test_memory_off_keeps_no_index(tmp_path, tiny_model_factory) -> None:
    policy = load_policy("research").with_overrides({"store.synchronous": "NORMAL"})
    with Personalizer.open(
        tmp_path / "s", tiny_model_factory(), policy, KEY, create=True, memory=False
    ) as p:
        p.log("call my mom", "Calling Maria.")
        assert not p.memory_on and p.generate("call mom", max_tokens=4).memory_ids == ()
        assert not mi.enabled(p.store.db)


def test_by_default_a_base_without_a_separable_head_serves_without_memory(
    opened: Personalizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import personal.personalizer as module

    monkeypatch.setattr(module, "supports_token_cache", lambda model: False)
    assert not opened.memory_on
    assert opened.generate("call mom", max_tokens=2).memory_ids == ()
    opened.memory_mode = "context"  # every base can take earlier turns
    assert opened.memory_on


def test_generate_with_memory_recalls_through_the_active_adapter(opened: Personalizer) -> None:
    model, tokenizer = opened.base.model, opened.base.tokenizer
    perturb_lora_b(model)  # a non-zero adapter: memory must compose with it
    assert any(float(abs(v).sum()) > 0 for v in get_adapter_weights(model).values())
    turns, ids = opened.memory_context("call mom please", 2)
    assert ids == [1] and turns == [LOGGED[0]]  # only the record sharing terms
    reply = opened.generate("call mom please", memory=2, memory_mode="context", max_tokens=8)
    assert reply.memory_ids == (1,)
    direct = generate(model, tokenizer, "call mom please", max_tokens=8, history=turns)
    assert reply.tokens == direct.tokens and reply.mean_logprob == direct.mean_logprob
    assert 0 < reply.confidence <= 1 and reply.mean_entropy >= 0
    bare = opened.generate("call mom please", memory=False, max_tokens=8)
    assert (
        bare.memory_ids == ()
        and bare.tokens == generate(model, tokenizer, "call mom please", max_tokens=8).tokens
    )


def test_memory_recalls_what_was_logged_after_it_was_built(opened: Personalizer) -> None:
    assert opened.generate("zither", memory=True, max_tokens=2).memory_ids == ()
    rid = opened.log("tune my zither", "Tuned.")
    assert opened.generate("zither", memory=True, max_tokens=2).memory_ids == (rid,)
    opened.interactions.erase(f"interaction:{rid}")
    assert opened.generate("zither", memory=True, max_tokens=2).memory_ids == ()


def test_the_default_is_an_open_option(tmp_path, tiny_model_factory) -> None:
    policy = load_policy("research").with_overrides({"store.synchronous": "NORMAL"})
    path, model = tmp_path / "s", tiny_model_factory()
    with Personalizer.open(path, model, policy, KEY, create=True) as p:
        p.log("call my mom", "Calling Maria.")
    with Personalizer.open(path, model, policy, KEY, memory=True) as p:
        assert mi.enabled(p.store.db)  # built at open
        assert p.generate("mom", max_tokens=2).memory_ids == (1,)
        assert p.generate("mom", memory=False, max_tokens=2).memory_ids == ()
    with pytest.raises(ConfigError, match="memory must be"):
        Personalizer.open(path, model, policy, KEY, memory=-1)


def test_recalled_turns_fit_the_token_budget(opened: Personalizer) -> None:
    from personal.model.chat import chat_format

    long = "water the plants " * 200
    for _ in range(3):
        opened.log(long, long)
    turns, ids = opened.memory_context("water the plants", 4)
    assert 3 in ids and all(len(p) <= 300 and len(r) <= 300 for p, r in turns)
    fmt = chat_format(opened.base.tokenizer)
    alone = len(fmt.prompt_ids("water the plants"))
    assert len(fmt.prompt_ids("water the plants", turns)) - alone <= MAX_MEMORY_TOKENS


def test_the_default_mode_is_a_token_cache_through_the_active_adapter(opened: Personalizer) -> None:
    model, tokenizer = opened.base.model, opened.base.tokenizer
    perturb_lora_b(model)
    cache, ids = opened.memory_cache("call mom please", 2)
    assert ids == [1] and cache is not None and cache.sources == (LOGGED[0],)
    reply = opened.generate("call mom please", memory=2, max_tokens=8)
    assert reply.memory_ids == (1,)
    direct = generate(model, tokenizer, "call mom please", max_tokens=8, token_cache=cache)
    assert reply.tokens == direct.tokens and reply.mean_logprob == direct.mean_logprob
    assert 0 < reply.confidence <= 1 and reply.mean_entropy >= 0
    assert opened.memory_cache("zither") == (None, [])  # nothing shares a word


def test_memory_true_recalls_the_modes_default_number(opened: Personalizer) -> None:
    from personal.memory import CACHE_K, DEFAULT_K

    for i in range(12):
        opened.log(f"call mom {i}", f"Calling Maria, try {i}.")
    assert len(opened.generate("call mom", memory=True, max_tokens=2).memory_ids) == CACHE_K
    context = opened.generate("call mom", memory=True, memory_mode="context", max_tokens=2)
    assert len(context.memory_ids) == DEFAULT_K


def test_an_unknown_memory_mode_is_refused(tmp_path, opened: Personalizer) -> None:
    with pytest.raises(ConfigError, match="memory_mode must be one of cache, context"):
        opened.generate("call mom", memory=True, memory_mode="kNN")  # type: ignore[arg-type]
