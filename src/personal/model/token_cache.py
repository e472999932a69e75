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

from collections.abc import Sequence
from dataclasses import dataclass, field

from personal.errors import ConfigError
from personal.model.batching import make_batch
from personal.model.evaluate import EvalResult
from personal.model.head import output_head
from personal.model.mlx_typing import scalar
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
    """

    keys: mx.array
    values: mx.array
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def build(
        cls, model: nn.Module, tokenizer: object, exchanges: Sequence[tuple[str, str]]
    ) -> TokenCache | None:
        """Run ``exchanges`` through ``model`` (in the base's chat format) and keep the context
        and next token at every reply position (the end-of-turn token included).

        Returns ``None`` for no exchanges. Raises :class:`~personal.errors.ConfigError` when
        the model's head cannot be split off (:func:`supports_token_cache`).
        """
        _head(model)
        if not exchanges:
            return None
        encoded = [encode_interaction(tokenizer, p, r) for p, r in exchanges]
        batch = make_batch([ids for ids, _ in encoded], [start for _, start in encoded])
        hidden = model.model(batch.inputs)  # (B, T, D)
        rows, cols = np.nonzero(np.array(batch.mask) > 0)
        keys = hidden[mx.array(rows), mx.array(cols)].astype(mx.float32)
        values = batch.targets[mx.array(rows), mx.array(cols)]
        keys, values = _unit(keys), values.astype(mx.int32)
        mx.eval(keys, values)
        return cls(keys, values, tuple(exchanges))

    def probs(self, hidden: mx.array, vocab: int, temperature: float) -> mx.array:
        """The cache's next-token distribution for each context of ``hidden`` (``(N, D)``):
        ``(N, vocab)``, each row summing to 1 over the cached tokens."""
        weights = mx.softmax(temperature * (_unit(hidden.astype(mx.float32)) @ self.keys.T), -1)
        rows = mx.arange(weights.shape[0])[:, None]
        return mx.zeros((weights.shape[0], vocab)).at[rows, self.values[None, :]].add(weights)


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
    cache_p = cache.probs(hidden, logits.shape[-1], settings.temperature)
    return mx.logaddexp(
        model_lp + float(np.log1p(-settings.weight)),
        mx.log(cache_p) + float(np.log(settings.weight)),
    )


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
    "TokenCache",
    "evaluate_with_caches",
    "mixed_logprobs",
    "supports_token_cache",
]
