"""The frozen trunk computed once: the adapted blocks run from cached hidden states and give the
full forward's losses and per-example gradients, on every family it is enabled for."""

from __future__ import annotations

from personal.model.per_example import per_example_grads
from personal.model.trunk import TrunkCache, injected, trunk_depth, trunk_hidden
from personal.privacy.dpsgd import scored_ce_loss, trunk_ce_loss
from personal.privacy.sampler import pack_token_units

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from tiny_models import tiny_lora_model

VOCAB = 96
WIDTH = 24
LAYERS = 4
KINDS = [
    ("llama", False),
    ("llama", True),
    ("qwen2", False),
    ("qwen3", False),
    ("gemma3", False),
    ("mixtral", True),
    ("qwen2_moe", False),
    ("qwen3_moe", False),
]


def _model(arch: str, quantize: bool = False, adapted: int | None = 2, seed: int = 3) -> nn.Module:
    return tiny_lora_model(
        arch, VOCAB, quantize=quantize, seed=seed, layers=LAYERS, adapted=adapted
    )


def _batch(seed: int, lengths: list[int], starts: list[int]):
    rng = np.random.default_rng(seed)
    units = [[rng.integers(1, VOCAB, n).tolist()] for n in lengths]
    loss_starts = [[min(s, n - 1)] for n, s in zip(lengths, starts, strict=False)]
    return pack_token_units(units, 2.0, loss_starts=loss_starts, width=WIDTH, scored_only=True)


@pytest.mark.parametrize(("arch", "quantize"), KINDS)
def test_adapted_blocks_from_the_cached_trunk_equal_the_full_model(arch: str, quantize: bool):
    model = _model(arch, quantize)
    depth = trunk_depth(model)
    assert depth == LAYERS - 2
    batch = _batch(0, [20, 9, 24, 13], [12, 3, 16, 5])
    inputs = batch.arrays[0]
    hidden = TrunkCache(model, depth).hidden(inputs)
    with injected(model, depth, hidden):
        served = model.model(inputs)
    np.testing.assert_allclose(
        np.array(served), np.array(model.model(inputs)), rtol=1e-4, atol=5e-5
    )
    full_losses, full_grads = per_example_grads(model, scored_ce_loss, batch.arrays)
    arrays = (inputs, hidden, *batch.arrays[1:])
    losses, grads = per_example_grads(model, trunk_ce_loss(depth), arrays)
    np.testing.assert_allclose(np.array(losses), np.array(full_losses), rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys()
    for name, value in full_grads.items():
        scale = float(np.abs(np.array(value)).max()) + 1e-12
        np.testing.assert_allclose(np.array(grads[name]), np.array(value), atol=5e-5 * scale)
    # the blocks went back to their own classes
    assert "Trunk" not in "".join(type(b).__name__ for b in model.model.layers)


def test_a_compiled_loss_from_the_trunk_matches_the_eager_one() -> None:
    model = _model("llama")
    depth = trunk_depth(model)
    batch = _batch(1, [18, 24, 7], [9, 20, 2])
    arrays = (batch.arrays[0], trunk_hidden(model, batch.arrays[0], depth), *batch.arrays[1:])
    loss = trunk_ce_loss(depth)
    compiled = mx.compile(lambda *a: loss(model, *a), inputs=[model.state])
    np.testing.assert_allclose(
        np.array(compiled(*arrays)), np.array(scored_ce_loss(model, *batch.arrays)), atol=1e-5
    )


@settings(max_examples=15, deadline=None)
@given(
    picks=st.lists(st.integers(0, 5), min_size=1, max_size=8),
    second=st.lists(st.integers(0, 5), min_size=1, max_size=8),
)
def test_the_cache_computes_each_distinct_row_once(picks: list[int], second: list[int]) -> None:
    model = _model("qwen2", seed=5)
    depth = trunk_depth(model)
    rows = np.random.default_rng(2).integers(1, VOCAB, (6, WIDTH)).astype(np.int32)
    cache = TrunkCache(model, depth)
    for pick in (picks, second):
        inputs = mx.array(rows[pick])
        np.testing.assert_allclose(
            np.array(cache.hidden(inputs)), np.array(trunk_hidden(model, inputs, depth)), atol=1e-5
        )
    assert cache.computed == len(set(picks) | set(second))
    assert cache.reused == len(set(second) & set(picks))


def test_a_full_cache_still_serves_every_row() -> None:
    model = _model("llama")
    depth = trunk_depth(model)
    inputs = mx.array(np.random.default_rng(3).integers(1, VOCAB, (3, WIDTH)).astype(np.int32))
    cache = TrunkCache(model, depth, max_bytes=0)
    for _ in range(2):
        np.testing.assert_allclose(
            np.array(cache.hidden(inputs)), np.array(trunk_hidden(model, inputs, depth)), atol=1e-6
        )
    assert cache.computed == 6 and cache.reused == 0


def test_nothing_is_cached_where_it_would_not_be_exact() -> None:
    assert trunk_depth(_model("llama", adapted=None)) is None  # the first block is adapted
    model = _model("llama")
    model.model.embed_tokens.unfreeze()  # a trained embedding changes the trunk
    assert trunk_depth(model) is None

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(2, 2)

    assert trunk_depth(Custom()) is None


@pytest.mark.parametrize(
    ("arch", "quantize"), [("llama", False), ("gemma3", False), ("mixtral", True)]
)
def test_an_attached_cache_serves_every_eager_forward(arch: str, quantize: bool) -> None:
    """Under ``attached()`` the model, its bare base and its gradients are those of the full
    forward, and each distinct row's trunk runs once; the classes come back afterwards."""
    from personal.model.lora import lora_off

    model = _model(arch, quantize)
    rows = mx.array(np.random.default_rng(4).integers(1, VOCAB, (3, WIDTH)).astype(np.int32))

    def loss(m: nn.Module, inputs: mx.array) -> mx.array:
        return m(inputs).astype(mx.float32).square().mean()

    expected = model(rows)
    with lora_off(model):
        bare = model(rows)
    _, grads = nn.value_and_grad(model, loss)(model, rows)
    cache = TrunkCache.for_model(model)
    classes = [type(m) for m in (model.model.embed_tokens, *model.model.layers)]
    with cache.attached():
        served = model(rows)
        with lora_off(model):
            served_bare = model(rows)
        _, served_grads = nn.value_and_grad(model, loss)(model, rows)
        # a graph that brings its own trunk (the DP step) works inside the block too
        batch = _batch(5, [20, 9], [12, 3])
        inside = per_example_grads(
            model, trunk_ce_loss(cache.depth),
            (batch.arrays[0], cache.hidden(batch.arrays[0]), *batch.arrays[1:]),
        )[0]  # fmt: skip
    assert classes == [type(m) for m in (model.model.embed_tokens, *model.model.layers)]
    for got, want in ((served, expected), (served_bare, bare)):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=5e-5)
    flat, served_flat = dict(tree_flatten(grads)), dict(tree_flatten(served_grads))
    for name, value in flat.items():
        scale = float(np.abs(np.array(value)).max()) + 1e-12
        np.testing.assert_allclose(np.array(served_flat[name]), np.array(value), atol=5e-5 * scale)
    np.testing.assert_allclose(
        np.array(inside), np.array(scored_ce_loss(model, *batch.arrays)), rtol=1e-5, atol=1e-6
    )
    assert cache.computed == 3 + 2 + 1  # the rows, the batch's, its padding row
    assert cache.reused >= 2
    with pytest.raises(RuntimeError, match="already attached"), cache.attached(), cache.attached():
        pass
