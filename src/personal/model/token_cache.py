"""A per-request token cache: next-token distributions copied from the user's own past replies.

Personal memory's default mechanism (docs/memory.md). For a request, the recalled past
exchanges are run through the served model once; at every position of their replies the final
hidden state (the context) is kept with the token that followed it (what the assistant said
next). While the model scores or generates a reply, each next-token distribution is mixed with
a distribution over those tokens, weighted by how similar their contexts are to the current
one::

    p(w) = (1 - λ) · p_model(w) + λ · Σ_i softmax_i(θ · cos(h, k_i)) · [v_i = w]

This is the continuous cache of Grave et al. (2017, "Improving neural language models with a
continuous cache") with a retrieved rather than a recent history, the form kNN-LM takes
(Khandelwal et al. 2020) when the datastore is a handful of exchanges: nothing is trained, and
nothing is added to the prompt, so it also works for bases that never learned to read earlier
chat turns (the bundled ones: putting recalled turns in the prompt doubled their loss). When
"call mom" was answered "Calling Rosa" last week, the context after "Calling" is close to the
stored one and "Rosa" gets probability mass the base model alone does not give it.

The keys are the base's own final (normed) hidden states, so a cache is built per request
from the model serving it (base + active adapter) and never stored: a base-model update
changes nothing on disk. ``λ`` and ``θ`` are :class:`CacheSettings`; their defaults were
measured on public synthetic users (``benchmarks/memory_cache.py``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from personal.errors import ConfigError
from personal.model.batching import make_batch
from personal.model.evaluate import EvalResult
from personal.model.head import output_head
from personal.model.lora import lora_modules
from personal.model.mlx_typing import flat_params, scalar
from personal.model.tokenizer import encode_interaction

import mlx.core as mx
import mlx.nn as nn
import numpy as np

#: The weight λ of the cache in the mixture (measured on public users,
#: benchmarks/memory_cache.py: λ 0.3 gave the best slot accuracy measured, with a loss gain
#: within a point of the best λ; docs/memory.md).
DEFAULT_WEIGHT = 0.3
#: The inverse temperature θ on the cosine similarity of contexts (measured, as above).
DEFAULT_TEMPERATURE = 20.0


@dataclass(frozen=True)
class CacheSettings:
    """How strongly the token cache bends the model's next-token distributions.

    Attributes:
        weight: λ in ``(1 - λ) p_model + λ p_cache``, in ``[0, 1)``; 0 turns the cache off.
        temperature: θ, the inverse temperature on the cosine similarity of a context to each
            cached context (larger: only the closest contexts count).
    """

    weight: float = DEFAULT_WEIGHT
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight < 1.0:
            raise ConfigError(f"the token cache's weight must be in [0, 1), not {self.weight}")
        if not self.temperature > 0.0:
            raise ConfigError(f"the token cache's temperature must be > 0, not {self.temperature}")


#: The measured defaults (a module-level value: settings are immutable).
DEFAULT_SETTINGS = CacheSettings()


def supports_token_cache(model: nn.Module) -> bool:
    """Whether ``model``'s final hidden states and output head can be taken apart (the cache's
    keys are those hidden states; see :func:`personal.model.head.output_head`)."""
    return output_head(model) is not None


def _head(model: nn.Module) -> nn.Module:
    head = output_head(model)
    if head is None:
        raise ConfigError(
            f"{type(model).__name__} does not expose its final hidden states apart from its "
            "output head, which the token cache needs: use memory_mode='context' with this base"
        )
    return head  # type: ignore[return-value]


def _unit(rows: mx.array) -> mx.array:
    return rows / mx.maximum(mx.linalg.norm(rows, axis=-1, keepdims=True), 1e-6)


@dataclass(frozen=True)
class TokenCache:
    """Contexts and next tokens at every reply position of some past exchanges.

    Attributes:
        keys: ``(M, D)`` unit-norm final hidden states, one per cached reply position.
        values: ``(M,)`` int32, the token that followed each context.
        sources: the ``(prompt, response)`` exchanges the cache was built from.
        log_counts: ``(M,)`` the log of how many of ``sources`` are the exchange each row
            comes from (``None``: each once). An exchange recalled twice is run through the
            model once and its rows weigh double, which is exactly the softmax over both
            copies (a user repeats requests: 8 recalled exchanges hold about 6 distinct ones).
    """

    keys: mx.array
    values: mx.array
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    log_counts: mx.array | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def build(
        cls,
        model: nn.Module,
        tokenizer: object,
        exchanges: Sequence[tuple[str, str]],
        rows: ReplyRows | None = None,
    ) -> TokenCache | None:
        """Run ``exchanges`` through ``model`` (in the base's chat format) and keep the context
        and next token at every reply position (the end-of-turn token included).

        ``rows`` (optional) keeps each exchange's rows for the next request, so an exchange
        recalled again is not run through the model again while the model's weights are the
        same (:class:`ReplyRows`). Returns ``None`` for no exchanges. Raises
        :class:`~personal.errors.ConfigError` when the model's head cannot be split off
        (:func:`supports_token_cache`).
        """
        _head(model)
        if not exchanges:
            return None
        counts = Counter(exchanges)  # each distinct exchange through the model once
        distinct = list(counts)
        per_exchange = (rows or ReplyRows(0)).get(model, tokenizer, distinct)
        keys = mx.concatenate([k for k, _ in per_exchange])
        values = mx.concatenate([v for _, v in per_exchange])
        log_counts = None
        if len(distinct) < len(exchanges):
            weights = [
                np.full(v.shape[0], np.log(counts[e]), np.float32)
                for e, (_, v) in zip(distinct, per_exchange, strict=True)
            ]
            log_counts = mx.array(np.concatenate(weights))
        mx.eval(keys, values)
        return cls(keys, values, tuple(exchanges), log_counts)

    def probs(self, hidden: mx.array, vocab: int, temperature: float) -> mx.array:
        """The cache's next-token distribution for each context of ``hidden`` (``(N, D)``):
        ``(N, vocab)``, each row summing to 1 over the cached tokens."""
        tokens, _ = self._columns
        rows = mx.arange(hidden.shape[0])[:, None]
        dense = mx.zeros((hidden.shape[0], vocab))
        return dense.at[rows, tokens[None, :]].add(self.token_probs(hidden, temperature))

    def token_probs(self, hidden: mx.array, temperature: float) -> mx.array:
        """:meth:`probs` at the distinct cached tokens only (``(N, U)``, in the order of
        ``self._columns[0]``): the rest of the vocabulary has probability 0."""
        scores = temperature * (_unit(hidden.astype(mx.float32)) @ self.keys.T)
        if self.log_counts is not None:
            scores = scores + self.log_counts
        return mx.softmax(scores, -1) @ self._columns[1]

    @cached_property
    def _columns(self) -> tuple[mx.array, mx.array]:
        """The distinct cached tokens ``(U,)`` and each row's one-hot over them ``(M, U)``:
        mixing touches U columns, not the whole vocabulary (generation mixes at every step)."""
        values = np.array(self.values)
        distinct, which = np.unique(values, return_inverse=True)
        onehot = np.zeros((len(values), len(distinct)), np.float32)
        onehot[np.arange(len(values)), which] = 1.0
        return mx.array(distinct.astype(np.int32)), mx.array(onehot)


def _reply_rows(
    model: nn.Module, tokenizer: object, exchanges: Sequence[tuple[str, str]]
) -> list[tuple[mx.array, mx.array]]:
    """Each exchange's ``(keys, values)`` at its reply positions, from one batched forward."""
    encoded = [encode_interaction(tokenizer, p, r) for p, r in exchanges]
    batch = make_batch([ids for ids, _ in encoded], [start for _, start in encoded])
    hidden = model.model(batch.inputs)  # (B, T, D); right padding leaves each row as alone
    mask = np.array(batch.mask) > 0
    out = []
    for b in range(len(exchanges)):
        cols = mx.array(np.nonzero(mask[b])[0])
        keys = _unit(hidden[b][cols].astype(mx.float32))
        out.append((keys, batch.targets[b][cols].astype(mx.int32)))
    mx.eval(out)
    return out


class ReplyRows:
    """Per-exchange token-cache rows kept between requests (least recently used evicted).

    A user repeats requests, so the exchanges recalled for one request are often recalled for
    the next (22 % of the recalled exchanges over a stream of 64 held-out requests of a
    simulated user, ``benchmarks/memory.py``'s ``rows_reused_share``). Their rows depend on
    the served model, so they are kept only while its weights are the very same arrays: a
    round that activates an adapter, a rollback or a base update assigns new arrays (MLX never
    changes a parameter array in place through ``Module.update``;
    :func:`~personal.model.lora.lora_off` changes the LoRA scales, which are compared too), and
    the next :meth:`get` starts afresh. The rows are derived from
    decrypted records and live only in RAM; the owner drops them with the store
    (:meth:`clear`).

    Args:
        capacity: how many exchanges to keep (0: keep none, compute every time).

    Attributes:
        reused: exchanges served from kept rows so far; ``computed``: run through the model.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self.reused = self.computed = 0
        self._rows: OrderedDict[tuple[str, str], tuple[mx.array, mx.array]] = OrderedDict()
        self._weights: list[mx.array] = []  # held, so their identities cannot be reused
        self._scales: tuple[float, ...] = ()  # LoRA scales: lora_off changes them, not arrays

    def clear(self) -> None:
        """Forget every kept row."""
        self._rows.clear()
        self._weights = []
        self._scales = ()

    def snapshot(self) -> OrderedDict[tuple[str, str], tuple[mx.array, mx.array]]:
        """A copy of the kept rows, oldest first (e.g. to replay a request stream from here)."""
        return self._rows.copy()

    def restore(self, rows: OrderedDict[tuple[str, str], tuple[mx.array, mx.array]]) -> None:
        """Keep exactly ``rows`` (a :meth:`snapshot` taken under the same weights)."""
        self._rows = rows.copy()

    def get(
        self, model: nn.Module, tokenizer: object, exchanges: Sequence[tuple[str, str]]
    ) -> list[tuple[mx.array, mx.array]]:
        """``(keys, values)`` for each of ``exchanges`` (distinct), computing only those not
        kept for this model's current weights, in one batched forward."""
        if self.capacity:
            weights = [w for _, w in flat_params(model.parameters())]
            scales = tuple(float(m.scale) for m in lora_modules(model).values())
            same = len(weights) == len(self._weights) and all(
                a is b for a, b in zip(weights, self._weights, strict=True)
            )
            if not same or scales != self._scales:
                self.clear()
                self._weights, self._scales = weights, scales
        missing = [e for e in exchanges if e not in self._rows]
        self.computed += len(missing)
        self.reused += len(exchanges) - len(missing)
        computed = (
            dict(zip(missing, _reply_rows(model, tokenizer, missing), strict=True))
            if missing
            else {}
        )
        out = []
        for exchange in exchanges:
            rows = computed.get(exchange) or self._rows[exchange]
            if self.capacity:
                self._rows[exchange] = rows
                self._rows.move_to_end(exchange)
            out.append(rows)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)
        return out


def mixed_logprobs(
    logits: mx.array,
    hidden: mx.array,
    cache: TokenCache | None,
    settings: CacheSettings = DEFAULT_SETTINGS,
) -> mx.array:
    """``log((1 - λ) softmax(logits) + λ p_cache)`` for ``(N, V)`` logits at the contexts
    ``hidden`` (``(N, D)``); the model's log-probabilities alone without a cache or at λ = 0."""
    logits = logits.astype(mx.float32)
    model_lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    if cache is None or settings.weight == 0.0:
        return model_lp
    # Off the cached tokens the mixture is the model's alone, scaled by 1 - λ; only the U
    # cached tokens' columns need the log-sum (a few dozen of the vocabulary's thousands).
    scaled = model_lp + float(np.log1p(-settings.weight))
    tokens = mx.broadcast_to(cache._columns[0][None, :], (scaled.shape[0], len(cache._columns[0])))
    at = mx.take_along_axis(scaled, tokens, axis=-1)
    cache_lp = mx.log(cache.token_probs(hidden, settings.temperature))
    mixed = mx.logaddexp(at, cache_lp + float(np.log(settings.weight)))
    return mx.put_along_axis(scaled, tokens, mixed, axis=-1)


def evaluate_with_caches(
    model: nn.Module,
    tokenizer: object,
    exchanges: Sequence[tuple[str, str]],
    caches: Sequence[TokenCache | None],
    settings: CacheSettings = DEFAULT_SETTINGS,
) -> EvalResult:
    """Token-weighted loss and next-token accuracy of each exchange's reply, scored by the
    model mixed with that exchange's cache (``None``: the model alone), as
    :func:`personal.model.evaluate.evaluate` scores without caches."""
    if len(exchanges) != len(caches):
        raise ValueError(f"{len(caches)} caches for {len(exchanges)} exchanges")
    head = _head(model)
    total_loss = total_correct = 0.0
    tokens = 0
    for (prompt, response), cache in zip(exchanges, caches, strict=True):
        ids, start = encode_interaction(tokenizer, prompt, response)
        hidden = model.model(mx.array(ids[:-1])[None])[0, start - 1 :]  # reply contexts
        targets = mx.array(ids[start:])
        logprobs = mixed_logprobs(head(hidden), hidden, cache, settings)
        picked = mx.take_along_axis(logprobs, targets[:, None], axis=1)
        loss, correct = -picked.sum(), (mx.argmax(logprobs, axis=-1) == targets).sum()
        mx.eval(loss, correct)
        total_loss += scalar(loss)
        total_correct += scalar(correct)
        tokens += len(ids) - start
    if tokens == 0:
        raise ValueError("evaluate_with_caches() got no reply tokens")
    return EvalResult(total_loss / tokens, total_correct / tokens, tokens, len(exchanges))


__all__ = [
    "DEFAULT_SETTINGS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WEIGHT",
    "CacheSettings",
    "ReplyRows",
    "TokenCache",
    "evaluate_with_caches",
    "mixed_logprobs",
    "supports_token_cache",
]
