"""The token cache of personal memory: a distribution over what followed similar contexts in
recalled replies, mixed into the model's next-token distributions."""

from __future__ import annotations

import math

from personal.errors import ConfigError
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.evaluate import evaluate
from personal.model.generate import generate, greedy_replies
from personal.model.token_cache import (
    CacheSettings,
    ReplyRows,
    TokenCache,
    evaluate_with_caches,
    mixed_logprobs,
    supports_token_cache,
)
from personal.model.tokenizer import encode_interaction

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

EXCHANGES = [("call my mom", "Calling Maria now."), ("play music", "Playing The Velvet Owls.")]


@pytest.fixture(scope="module")
def base():
    return load_base("base-v1")


def test_a_cache_keeps_every_reply_position(base) -> None:
    cache = TokenCache.build(base.model, base.tokenizer, EXCHANGES)
    assert cache is not None and cache.sources == tuple(EXCHANGES)
    expected = []
    for prompt, response in EXCHANGES:
        ids, start = encode_interaction(base.tokenizer, prompt, response)
        expected += ids[start:]  # the reply and its end-of-turn token
    assert np.array(cache.values).tolist() == expected and len(cache) == len(expected)
    norms = np.linalg.norm(np.array(cache.keys), axis=-1)
    assert np.allclose(norms, 1.0, atol=1e-5)
    assert TokenCache.build(base.model, base.tokenizer, []) is None


def test_an_exchange_recalled_twice_runs_once_and_weighs_double(base) -> None:
    a, b = EXCHANGES
    deduped = TokenCache.build(base.model, base.tokenizer, [a, b, a, a])
    one_a = TokenCache.build(base.model, base.tokenizer, [a])
    one_b = TokenCache.build(base.model, base.tokenizer, [b])
    assert deduped is not None and one_a is not None and one_b is not None
    assert len(deduped) == len(one_a) + len(one_b)  # a's positions are cached once
    assert deduped.sources == (a, b, a, a)
    # The same distribution as every copy cached: a's rows weigh three times.
    expanded = TokenCache(
        mx.concatenate([one_a.keys, one_b.keys, one_a.keys, one_a.keys]),
        mx.concatenate([one_a.values, one_b.values, one_a.values, one_a.values]),
    )
    hidden = mx.array(np.random.default_rng(0).normal(size=(3, one_a.keys.shape[1])), mx.float32)
    vocab = base.model.args.vocab_size
    for temperature in (1.0, 20.0):
        got = np.array(deduped.probs(hidden, vocab, temperature))
        want = np.array(expanded.probs(hidden, vocab, temperature))
        assert np.allclose(got, want, atol=1e-5)
    assert TokenCache.build(base.model, base.tokenizer, [a, b]).log_counts is None


def _same_cache(a: TokenCache, b: TokenCache) -> bool:
    return bool(
        np.array_equal(np.array(a.values), np.array(b.values))
        and np.allclose(np.array(a.keys), np.array(b.keys), atol=1e-5)
    )


def test_kept_rows_give_the_cache_built_from_scratch(base) -> None:
    a, b = EXCHANGES
    c = ("remind me at 7", "Reminder set for 7:00.")
    rows = ReplyRows(capacity=2)
    first = TokenCache.build(base.model, base.tokenizer, [a, b], rows=rows)
    kept_a = rows._rows[a]
    again = TokenCache.build(base.model, base.tokenizer, [c, a, a], rows=rows)
    assert rows._rows[a] is kept_a  # a was not run through the model again
    assert list(rows._rows) == [c, a]  # capacity 2: b, least recently used, was evicted
    fresh = TokenCache.build(base.model, base.tokenizer, [c, a, a])
    assert first is not None and again is not None and fresh is not None
    assert _same_cache(again, fresh)
    assert np.allclose(np.array(again.log_counts), np.array(fresh.log_counts))
    assert _same_cache(first, TokenCache.build(base.model, base.tokenizer, [a, b]))
    # A snapshot replays the stream from here: restoring it forgets what came after.
    kept = rows.snapshot()
    TokenCache.build(base.model, base.tokenizer, [b], rows=rows)
    assert list(rows.snapshot()) == [a, b] and list(kept) == [c, a]
    rows.restore(kept)
    assert list(rows.snapshot()) == [c, a] and rows.snapshot()[a] is kept_a


def test_kept_rows_are_dropped_when_the_weights_change(base) -> None:
    from mlx.utils import tree_flatten, tree_unflatten

    a = EXCHANGES[0]
    model = load_base("base-v1").model  # its own copy: the weights are changed below
    rows = ReplyRows()
    before = TokenCache.build(model, base.tokenizer, [a], rows=rows)
    name, weight = next((k, v) for k, v in tree_flatten(model.parameters()) if "norm" in k)
    model.update(tree_unflatten([(name, weight * 3.0)]))  # a new array: another served model
    after = TokenCache.build(model, base.tokenizer, [a], rows=rows)
    fresh = TokenCache.build(model, base.tokenizer, [a])
    assert before is not None and after is not None and fresh is not None
    assert _same_cache(after, fresh) and not _same_cache(after, before)
    rows.clear()
    assert not rows._rows


def test_kept_rows_are_dropped_when_lora_is_switched_off(base) -> None:
    from personal.model.lora import LoRAConfig, inject_lora, lora_off

    from tiny_models import perturb_lora_b

    model = load_base("base-v1").model
    inject_lora(model, LoRAConfig(rank=2))
    perturb_lora_b(model, scale=0.5)  # an adapter that changes the hidden states
    rows = ReplyRows()
    with_adapter = TokenCache.build(model, base.tokenizer, EXCHANGES[:1], rows=rows)
    with lora_off(model):  # the same arrays, another served model
        bare = TokenCache.build(model, base.tokenizer, EXCHANGES[:1], rows=rows)
        fresh_bare = TokenCache.build(model, base.tokenizer, EXCHANGES[:1])
    again = TokenCache.build(model, base.tokenizer, EXCHANGES[:1], rows=rows)
    assert with_adapter is not None and bare is not None and fresh_bare is not None
    assert again is not None
    assert _same_cache(bare, fresh_bare) and not _same_cache(bare, with_adapter)
    assert _same_cache(again, with_adapter)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    entries=st.integers(1, 12),
    temperature=st.floats(0.5, 100.0),
    seed=st.integers(0, 2**16),
)
def test_the_cache_distribution_is_a_distribution_over_cached_tokens(
    rows: int, entries: int, temperature: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    vocab = 20
    values = rng.integers(0, vocab, entries)
    keys = rng.normal(size=(entries, 8)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    cache = TokenCache(mx.array(keys), mx.array(values.astype(np.int32)))
    probs = np.array(
        cache.probs(mx.array(rng.normal(size=(rows, 8)).astype(np.float32)), vocab, temperature)
    )
    assert probs.shape == (rows, vocab) and (probs >= 0).all()
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    outside = np.setdiff1d(np.arange(vocab), values)
    assert np.all(probs[:, outside] == 0)


@settings(max_examples=25, deadline=None)
@given(weight=st.floats(0.0, 0.99), seed=st.integers(0, 2**16))
def test_the_mixture_is_normalised_and_weight_zero_is_the_model(weight: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = mx.array(rng.normal(size=(3, 16)).astype(np.float32) * 4)
    hidden = mx.array(rng.normal(size=(3, 8)).astype(np.float32))
    keys = rng.normal(size=(5, 8)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    cache = TokenCache(mx.array(keys), mx.array(rng.integers(0, 16, 5).astype(np.int32)))
    mixed = mixed_logprobs(logits, hidden, cache, CacheSettings(weight, 20.0))
    assert np.allclose(np.array(mx.logsumexp(mixed, axis=-1)), 0.0, atol=1e-5)
    alone = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    if weight == 0.0:
        assert np.allclose(np.array(mixed), alone, atol=1e-6)
    # exactly log((1 - λ) p_model + λ p_cache), with the cache's dense distribution
    dense = np.array(cache.probs(hidden, 16, 20.0))
    want = np.log((1 - weight) * np.exp(alone) + weight * dense)
    assert np.allclose(np.array(mixed), want, atol=1e-5)
    # never below the model's own share of the mixture: log((1 - λ) p) <= log p_mixed
    assert np.all(np.array(mixed) >= alone + math.log1p(-weight) - 1e-5)
    assert np.array_equal(np.array(mixed_logprobs(logits, hidden, None)), alone)


def test_without_caches_the_evaluation_is_the_plain_one(base) -> None:
    encoded = [encode_interaction(base.tokenizer, p, r) for p, r in EXCHANGES]
    plain = evaluate(base.model, [make_batch([e for e, _ in encoded], [s for _, s in encoded])])
    cached = evaluate_with_caches(base.model, base.tokenizer, EXCHANGES, [None, None])
    assert cached.tokens == plain.tokens and cached.examples == 2
    assert cached.loss == pytest.approx(plain.loss, rel=1e-4)
    assert cached.accuracy == pytest.approx(plain.accuracy)
    with pytest.raises(ValueError, match="1 caches for 2 exchanges"):
        evaluate_with_caches(base.model, base.tokenizer, EXCHANGES, [None])


def test_a_recalled_reply_is_cheaper_to_say_again_and_is_copied(base) -> None:
    model, tok = base.model, base.tokenizer
    cache = TokenCache.build(model, tok, EXCHANGES[:1])
    alone = evaluate_with_caches(model, tok, EXCHANGES[:1], [None])
    cached = evaluate_with_caches(model, tok, EXCHANGES[:1], [cache])
    assert cached.loss < alone.loss
    # A cache that dominates the mixture makes the greedy reply the recalled one.
    strong = CacheSettings(weight=0.95, temperature=100.0)
    reply = generate(model, tok, "call my mom", token_cache=cache, cache_settings=strong)
    assert reply.text == "Calling Maria now." and reply.finish_reason == "stop"
    assert 0 < reply.confidence <= 1
    batched = greedy_replies(model, tok, ["call my mom"], caches=[cache], cache_settings=strong)
    assert batched == [("Calling Maria now.", True)]
    plain = greedy_replies(model, tok, ["call my mom"])
    assert greedy_replies(model, tok, ["call my mom"], caches=[None]) == plain


@pytest.mark.parametrize(("weight", "temperature"), [(1.0, 20.0), (-0.1, 20.0), (0.1, 0.0)])
def test_bad_settings_are_refused(weight: float, temperature: float) -> None:
    with pytest.raises(ConfigError, match="token cache's"):
        CacheSettings(weight, temperature)


def test_a_model_without_a_separable_head_is_refused_with_the_way_out(base) -> None:
    class Opaque:  # not an mlx-lm family whose head splits off
        pass

    assert supports_token_cache(base.model) and not supports_token_cache(Opaque())
    with pytest.raises(ConfigError, match="memory_mode='context'"):
        TokenCache.build(Opaque(), base.tokenizer, EXCHANGES)


@pytest.mark.parametrize("quantize", [False, True], ids=["float", "4bit"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "mixtral", "qwen3_moe"])
def test_every_base_kind_builds_and_generates_with_a_cache(base, arch: str, quantize: bool) -> None:
    """Dense, sliding-window, MoE, and their 4-bit forms: the head splits off, the cache's keys
    are the model's own final hidden states, and generation mixes them in."""
    from personal.model.fastmath import accelerate

    from tiny_models import build_tiny_model

    model, _ = build_tiny_model(arch, base.model.args.vocab_size, quantize=quantize)
    accelerate(model)
    assert supports_token_cache(model)
    cache = TokenCache.build(model, base.tokenizer, EXCHANGES[:1])
    assert cache is not None
    ids, start = encode_interaction(base.tokenizer, *EXCHANGES[0])
    hidden = model.model(mx.array(ids[:-1])[None])[0, start - 1 :]
    want = np.array(hidden) / np.linalg.norm(np.array(hidden), axis=-1, keepdims=True)
    assert np.allclose(np.array(cache.keys), want, atol=1e-4)
    reply = generate(model, base.tokenizer, "call my mom", max_tokens=4, token_cache=cache)
    assert len(reply.tokens) <= 4 and np.isfinite(reply.confidence)
