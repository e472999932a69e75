"""Text generation with a confidence signal.

Apps route a request to a bigger (server) model when the on-device model is unsure. The signal:
the mean log-probability the model gave to the tokens it produced and the mean entropy of its
next-token distributions, both measured on the *untempered* distribution so they do not depend
on the sampling temperature. ``confidence = exp(mean_logprob)`` is the geometric-mean probability
of the generated tokens, in (0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from personal.errors import ConfigError
from personal.model.chat import History, chat_format, eos_ids
from personal.model.head import output_head
from personal.model.mlx_typing import scalar
from personal.model.token_cache import (
    DEFAULT_SETTINGS,
    CacheSettings,
    TokenCache,
    mixed_logprobs,
)

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache


@dataclass(frozen=True)
class Generation:
    """A generated continuation and how sure the model was of it.

    Attributes:
        text: decoded continuation (special tokens removed).
        tokens: generated token ids (the end-of-sequence token excluded).
        mean_logprob: mean log-probability of the chosen tokens, end-of-sequence included.
        mean_entropy: mean entropy, in nats, of the next-token distributions.
        finish_reason: ``"stop"`` (end-of-sequence) or ``"length"`` (``max_tokens`` reached).
        memory_ids: ids of the past interactions recalled into the prompt (personal memory),
            least relevant first; empty when memory was off or recalled nothing.
    """

    text: str
    tokens: list[int]
    mean_logprob: float
    mean_entropy: float
    finish_reason: str
    memory_ids: tuple[int, ...] = ()

    @property
    def confidence(self) -> float:
        return math.exp(self.mean_logprob)

    def to_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "mean_logprob": self.mean_logprob,
            "mean_entropy": self.mean_entropy,
            "confidence": self.confidence,
            "finish_reason": self.finish_reason,
            "memory_ids": list(self.memory_ids),
        }


def prompt_tokens(
    tokenizer: object, prompt: str, *, chat: bool = True, history: History = ()
) -> list[int]:
    """Token ids that start a generation: the base's chat format, or the raw prompt.

    With ``chat`` the prompt is rendered by :func:`~personal.model.chat.chat_format`, the same
    rendering training and the gates use; ``history`` (earlier ``(prompt, response)``
    exchanges, e.g. recalled memory) goes before it as prior turns.
    """
    if chat:
        return chat_format(tokenizer).prompt_ids(prompt, history)
    if history:
        raise ConfigError("earlier turns (memory) need the chat format: pass chat=True")
    return list(tokenizer.encode(prompt))  # type: ignore[attr-defined]


def stop_ids(tokenizer: object, *, chat: bool = True) -> set[int]:
    """Token ids that end a generation: the EOS tokens, and the chat format's end of turn."""
    ids = eos_ids(tokenizer)
    if chat:
        ids |= chat_format(tokenizer).stop_ids
    return ids


def generate_tokens(
    model: nn.Module,
    prompt_ids: list[int],
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    eos_ids: set[int] | None = None,
    seed: int | None = None,
    token_cache: TokenCache | None = None,
    cache_settings: CacheSettings = DEFAULT_SETTINGS,
) -> tuple[list[int], list[float], list[float], str]:
    """Sample up to ``max_tokens`` ids after ``prompt_ids`` with a KV cache.

    Returns the ids (end-of-sequence excluded), each chosen token's log-probability and each
    step's entropy (end-of-sequence step included), and the finish reason.
    ``temperature == 0`` is greedy decoding. With ``token_cache`` (personal memory, see
    :mod:`personal.model.token_cache`) every step samples from the model's distribution mixed
    with the cache's, and the log-probabilities and entropies are those of the mixture.
    """
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token")
    eos_ids = eos_ids or set()
    key = mx.random.key(seed if seed is not None else 0)
    cache = make_prompt_cache(model)
    head = output_head(model) if token_cache is not None else None

    def next_logprobs(ids: mx.array) -> mx.array:
        if head is None:
            logits = model(ids[None], cache=cache)[0, -1].astype(mx.float32)
            return logits - mx.logsumexp(logits)
        hidden = model.model(ids[None], cache=cache)[0, -1:]
        return mixed_logprobs(head(hidden), hidden, token_cache, cache_settings)[0]

    logprobs = next_logprobs(mx.array(prompt_ids))
    tokens: list[int] = []
    logps: list[float] = []
    entropies: list[float] = []
    for _ in range(max_tokens):
        entropy = -(mx.exp(logprobs) * logprobs).sum()
        if temperature <= 0:
            token = mx.argmax(logprobs)
        else:
            key, sub = mx.random.split(key)
            token = mx.random.categorical(logprobs / temperature, key=sub)
        mx.eval(token, logprobs, entropy)
        tid = int(scalar(token))
        # The end-of-sequence choice is a decision too: it counts in the confidence.
        logps.append(scalar(logprobs[tid]))
        entropies.append(scalar(entropy))
        if tid in eos_ids:
            return tokens, logps, entropies, "stop"
        tokens.append(tid)
        logprobs = next_logprobs(mx.array([tid]))
    return tokens, logps, entropies, "length"


def generate(
    model: nn.Module,
    tokenizer: object,
    prompt: str,
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
    chat: bool = True,
    history: History = (),
    token_cache: TokenCache | None = None,
    cache_settings: CacheSettings = DEFAULT_SETTINGS,
) -> Generation:
    """Generate a reply to ``prompt`` and report how confident the model was.

    Args:
        model: an mlx-lm model (with or without an active adapter).
        tokenizer: its tokenizer (mlx-lm ``TokenizerWrapper`` or an HF tokenizer).
        prompt: the user's request (rendered in the base's chat format when ``chat``; the
            generation stops on that format's end-of-turn token).
        max_tokens: upper bound on generated tokens.
        temperature: 0 for greedy decoding; > 0 samples from the tempered distribution.
        seed: seeds sampling, for reproducible simulations.
        chat: render ``prompt`` in the base's chat format (see :mod:`personal.model.chat`).
        history: earlier ``(prompt, response)`` exchanges rendered before ``prompt`` as prior
            turns (personal memory in context; see :mod:`personal.memory`).
        token_cache: recalled exchanges as a token cache mixed into every next-token
            distribution (personal memory's default; :mod:`personal.model.token_cache`).
        cache_settings: the cache's weight and temperature.
    """
    ids = prompt_tokens(tokenizer, prompt, chat=chat, history=history)
    tokens, logps, entropies, reason = generate_tokens(
        model,
        ids,
        max_tokens=max_tokens,
        temperature=temperature,
        eos_ids=stop_ids(tokenizer, chat=chat),
        seed=seed,
        token_cache=token_cache,
        cache_settings=cache_settings,
    )
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokens else ""  # type: ignore[attr-defined]
    mean_logp = sum(logps) / len(logps) if logps else 0.0
    mean_ent = sum(entropies) / len(entropies) if entropies else 0.0
    return Generation(text, tokens, mean_logp, mean_ent, reason)


def greedy_replies(
    model: nn.Module,
    tokenizer: object,
    prompts: Sequence[str],
    *,
    max_tokens: int = 64,
    batch_size: int = 32,
    histories: Sequence[History] | None = None,
    caches: Sequence[TokenCache | None] | None = None,
    cache_settings: CacheSettings = DEFAULT_SETTINGS,
) -> list[tuple[str, bool]]:
    """Greedy replies to many prompts, in the base's chat format: ``(text, complete)`` each.

    ``complete`` is ``False`` for a reply cut at ``max_tokens``. Prompts run ``batch_size`` at a
    time through mlx-lm's ``BatchGenerator`` (one forward pass per step for the whole batch:
    about 10x faster than one prompt at a time on the bundled bases); a model whose cache cannot
    batch falls back to :func:`generate` one prompt at a time. Both are greedy, so the replies
    agree up to floating-point ties. ``histories``: per prompt, earlier exchanges rendered
    before it (recalled memory in context), as in :func:`generate`. ``caches``: per prompt, a
    token cache (recalled memory, :mod:`personal.model.token_cache`) or ``None``; with caches
    the prompts run one at a time.
    """
    if histories is None:
        histories = [()] * len(prompts)
    ids = [prompt_tokens(tokenizer, p, history=h) for p, h in zip(prompts, histories, strict=True)]
    stops = stop_ids(tokenizer)
    if caches is not None:
        results = [
            (tokens, reason == "stop")
            for tokens, _, _, reason in (
                generate_tokens(
                    model,
                    p,
                    max_tokens=max_tokens,
                    eos_ids=stops,
                    token_cache=c,
                    cache_settings=cache_settings,
                )
                for p, c in zip(ids, caches, strict=True)
            )
        ]
        decode = tokenizer.decode  # type: ignore[attr-defined]
        return [(decode(t, skip_special_tokens=True) if t else "", done) for t, done in results]
    try:
        results = _batched_greedy(model, ids, stops, max_tokens, batch_size)
    except (ValueError, TypeError, NotImplementedError, AttributeError):
        results = [
            (tokens, reason == "stop")
            for tokens, _, _, reason in (
                generate_tokens(model, p, max_tokens=max_tokens, eos_ids=stops) for p in ids
            )
        ]
    decode = tokenizer.decode  # type: ignore[attr-defined]
    return [(decode(t, skip_special_tokens=True) if t else "", done) for t, done in results]


def _batched_greedy(
    model: nn.Module, ids: list[list[int]], stops: set[int], max_tokens: int, batch_size: int
) -> list[tuple[list[int], bool]]:
    from mlx_lm.generate import BatchGenerator

    generator = BatchGenerator(
        model,
        stop_tokens=[[t] for t in sorted(stops)],
        completion_batch_size=batch_size,
        prefill_batch_size=batch_size,
    )
    try:
        uids = generator.insert(ids, [max_tokens] * len(ids))
        tokens: dict[int, list[int]] = {uid: [] for uid in uids}
        done: dict[int, bool] = {}
        while responses := generator.next_generated():
            for r in responses:
                if r.finish_reason != "stop":
                    tokens[r.uid].append(int(r.token))
                if r.finish_reason is not None:
                    done[r.uid] = r.finish_reason == "stop"
    finally:
        generator.close()
    return [(tokens[uid], done.get(uid, False)) for uid in uids]
