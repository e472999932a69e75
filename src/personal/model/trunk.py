"""The frozen trunk of a model with LoRA on its last blocks only, computed once per input.

The shipped policies adapt the last few transformer blocks (``training.lora.num_layers = 2``).
Every block before the first adapted one, and the embedding, is frozen for the whole round: its
output for a row depends on the row's tokens only, not on the adapter. Yet each DP step runs the
whole model forward again, and on a real base that is most of a round's time (SmolLM2-135M has
30 blocks, the adapter sits in 2; docs/performance.md). Here the trunk's output ``h`` (the hidden
states entering the first adapted block) is computed once and fed back in:

* :func:`trunk_depth`: ``k``, the index of the first block holding any LoRA layer or trainable
  parameter; ``None`` when nothing can be cached (``k = 0``, trainable parameters outside the
  blocks, or a family not known to run its blocks as a plain sequence);
* :func:`trunk_hidden`: ``h`` for a batch of token ids (blocks ``0 .. k-1``; the run stops there);
* :func:`injected`: within the block, block ``k - 1`` returns the given ``h`` and blocks before it
  return their input unchanged, so ``model.model(inputs)`` costs the adapted blocks only.

Blocks are switched by swapping their class, as :mod:`personal.model.per_example` does, so
parameter paths, the block list (and its length, which some families read) and ``mx.compile``
inputs are untouched. The result is the full forward's: the same operations on the same values,
within float32 rounding (the trunk's matmuls may run on other batch shapes); a test checks
losses and per-example gradients against the full forward on every enabled family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from personal.model.head import model_type, output_head
from personal.model.lora import lora_modules, transformer_blocks

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

#: mlx-lm families whose body is ``h = embed(inputs); for block: h = block(h, mask, cache);
#: norm(h)``, with the mask a function of ``h``'s shape only and nothing else carried between
#: blocks (read in mlx-lm's sources; each is tested against the full forward in tests/model).
TRUNK_FAMILIES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe", "gemma3_text"}
)


def trunk_depth(model: nn.Module) -> int | None:
    """``k``: blocks ``0 .. k-1`` are frozen and adapter-free, so their output can be cached.

    Returns:
        ``k >= 1``; ``None`` when there is nothing to cache or caching would change the result:
        the family is not in :data:`TRUNK_FAMILIES`, its head does not split off
        (:func:`~personal.model.head.output_head`), the first block is adapted, or a trainable
        parameter lives outside the blocks (an embedding being trained, say).
    """
    if model_type(model) not in TRUNK_FAMILIES or output_head(model) is None:
        return None
    if not isinstance(getattr(model.model, "embed_tokens", None), nn.Module):
        return None
    try:
        blocks = transformer_blocks(model)
    except Exception:  # no recognisable block list: run the model whole
        return None
    adapted = {id(m) for m in lora_modules(model).values()}
    depth = None
    for index, block in enumerate(blocks):
        has_lora = any(id(m) in adapted for _, m in block.named_modules())
        if has_lora or tree_flatten(block.trainable_parameters()):
            depth = index
            break
    if not depth:  # None: nothing adapted; 0: the first block is adapted
        return None
    in_blocks = sum(len(tree_flatten(b.trainable_parameters())) for b in blocks[depth:])
    if in_blocks != len(tree_flatten(model.trainable_parameters())):
        return None
    return depth


class _TrunkDone(Exception):
    """Raised by block ``k - 1`` to stop the forward pass once the trunk's output exists."""

    def __init__(self, hidden: mx.array) -> None:
        super().__init__("trunk computed")
        self.hidden = hidden


def _stop(base: type) -> Any:
    def call(self: Any, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        raise _TrunkDone(base.__call__(self, x, *args, **kwargs))

    return call


def _skip(base: type) -> Any:
    def call(self: Any, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        return x

    return call


def _inject(base: type) -> Any:
    def call(self: Any, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["_trunk_hidden"]

    return call


def _record(base: type) -> Any:
    """The embedding, noting the token ids it embeds for :func:`_cached`."""

    def call(self: Any, x: mx.array) -> Any:
        self.__dict__["_trunk_tokens"] = x
        return base.__call__(self, x)

    return call


def _cached(base: type) -> Any:
    """Block ``k - 1`` under :meth:`TrunkCache.attached`: the cache's trunk output of the
    tokens the embedding just saw (eager code only: the tokens are read on the host)."""

    def call(self: Any, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        cache, embedding = self.__dict__["_trunk_source"]
        return cache.hidden(embedding.__dict__["_trunk_tokens"])

    return call


#: What a :class:`TrunkCache` keeps at most by default: SmolLM2-135M's trunk output is 147 KB a
#: row of 64 tokens, so a round of 150 units × 4 examples and its public batches fit.
DEFAULT_MAX_BYTES = 512 << 20

_KINDS = {"stop": _stop, "skip": _skip, "inject": _inject, "record": _record, "cached": _cached}
_CLASSES: dict[tuple[str, type], type] = {}


def _switched(kind: str, base: type) -> type:
    key = (kind, base)
    if key not in _CLASSES:
        call = _KINDS[kind](base)
        _CLASSES[key] = type(f"Trunk{kind.title()}{base.__name__}", (base,), {"__call__": call})
    return _CLASSES[key]


@contextlib.contextmanager
def _swapped(blocks: list[nn.Module], kinds: list[str]) -> Iterator[None]:
    originals = [type(b) for b in blocks]
    try:
        for block, kind, cls in zip(blocks, kinds, originals, strict=True):
            block.__class__ = _switched(kind, cls)
        yield
    finally:
        for block, cls in zip(blocks, originals, strict=True):
            block.__class__ = cls


def trunk_hidden(model: nn.Module, inputs: mx.array, depth: int) -> mx.array:
    """The hidden states entering block ``depth`` for token ids ``inputs`` ``(S, T)``:
    ``(S, T, D)``, without gradient (the trunk is frozen). Blocks from ``depth`` on don't run."""
    blocks = transformer_blocks(model)[:depth]
    try:
        with _swapped(blocks[-1:], ["stop"]):
            model.model(inputs)
    except _TrunkDone as done:
        return mx.stop_gradient(done.hidden)
    raise RuntimeError(f"the model's body never reached its block {depth - 1}")  # pragma: no cover


@contextlib.contextmanager
def injected(model: nn.Module, depth: int, hidden: mx.array) -> Iterator[None]:
    """Within the block, ``model.model(inputs)`` starts from ``hidden`` at block ``depth``:
    the blocks before it don't compute (``inputs`` still sets the shapes the body reads)."""
    blocks = transformer_blocks(model)[:depth]
    with _swapped(blocks, ["skip"] * (depth - 1) + ["inject"]):
        blocks[-1].__dict__["_trunk_hidden"] = hidden
        try:
            yield
        finally:
            blocks[-1].__dict__.pop("_trunk_hidden", None)


class TrunkCache:
    """The trunk's output of every row a round has seen, keyed by the row's token ids.

    A round's steps draw the same units again and again (every unit, every step, when the
    sampling rate is 1, as on a phone's store), so each row's trunk runs once per round. Rows
    are cached up to ``max_bytes``; past it, new rows are computed and not kept. Keep one cache
    per round: the trunk is frozen within a round, not across an adapter swap or a new base.
    """

    def __init__(self, model: nn.Module, depth: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.model, self.depth, self.max_bytes = model, depth, max_bytes
        self._rows: dict[bytes, mx.array] = {}
        self._bytes = 0
        #: rows whose trunk was computed, and rows served from the cache
        self.computed = self.reused = 0
        self._attached: list[tuple[nn.Module, type]] = []  # (module, its own class)

    @classmethod
    def for_model(cls, model: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES) -> TrunkCache | None:
        """A cache for ``model``'s trunk, or ``None`` where :func:`trunk_depth` finds none."""
        depth = trunk_depth(model)
        return None if depth is None else cls(model, depth, max_bytes)

    @contextlib.contextmanager
    def attached(self) -> Iterator[TrunkCache]:
        """Within the block, every forward of ``model``'s body (``model(inputs)``,
        ``model.model(inputs)``, with or without LoRA, under ``nn.value_and_grad`` too) takes
        the trunk's output from the cache: a round's public checks and gates read the same
        rows again and again. Eager code only (the token ids are read on the host); a graph
        compiled inside the block must bring its own trunk (:func:`injected`)."""
        if self._attached:
            raise RuntimeError("this TrunkCache is already attached")
        embedding = self.model.model.embed_tokens
        if type(embedding).__name__.startswith("Trunk"):  # another cache holds this model
            raise RuntimeError("this model is already attached to a TrunkCache")
        blocks = transformer_blocks(self.model)[: self.depth]
        modules = [embedding, *blocks]
        self._attached = [(m, type(m)) for m in modules]
        kinds = ["record", *(["skip"] * (self.depth - 1)), "cached"]
        try:
            with _swapped(modules, kinds):
                blocks[-1].__dict__["_trunk_source"] = (self, embedding)
                yield self
        finally:
            blocks[-1].__dict__.pop("_trunk_source", None)
            embedding.__dict__.pop("_trunk_tokens", None)
            self._attached = []

    @contextlib.contextmanager
    def _detached(self) -> Iterator[None]:
        """The modules' own classes for the block (to compute the trunk itself)."""
        current = [(m, type(m)) for m, _ in self._attached]
        try:
            for module, own in self._attached:
                module.__class__ = own
            yield
        finally:
            for module, cls in current:
                module.__class__ = cls

    def hidden(self, inputs: mx.array) -> mx.array:
        """``(S, T, D)``: :func:`trunk_hidden` of ``inputs`` ``(S, T)``, each distinct row's
        computed once over the cache's life."""
        rows = np.asarray(inputs)
        keys = [row.tobytes() for row in rows]  # rows of one batch share a width
        new = list(dict.fromkeys(k for k in keys if k not in self._rows))
        fresh: dict[bytes, mx.array] = {}
        if new:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            with self._detached():
                computed = trunk_hidden(
                    self.model, mx.array(rows[[first[k] for k in new]]), self.depth
                )
            mx.eval(computed)
            for i, key in enumerate(new):
                fresh[key] = computed[i]
                if self._bytes + computed[i].nbytes <= self.max_bytes:
                    self._rows[key] = fresh[key]
                    self._bytes += computed[i].nbytes
        self.computed += len(new)
        self.reused += len(set(keys)) - len(new)
        return mx.stack([fresh[k] if k in fresh else self._rows[k] for k in keys])


__all__ = ["TRUNK_FAMILIES", "TrunkCache", "injected", "trunk_depth", "trunk_hidden"]
