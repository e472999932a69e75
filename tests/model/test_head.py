"""Logits at scored positions only: the split head gives the full forward's logits there, and
the DP loss built on it has the same per-example gradients as the full-width loss, on every
family it is enabled for (dense, 4-bit, MoE, tied embeddings)."""

from __future__ import annotations

import functools

from personal.model.head import SPLIT_FAMILIES, output_head, scored_logits
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora
from personal.model.per_example import per_example_grads
from personal.privacy.dpsgd import (
    DPConfig,
    example_ce_loss,
    make_dp_step,
    scored_ce_loss,
)
from personal.privacy.sampler import pack_token_units

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_tiny_model, tiny_lora_model

VOCAB = 96
WIDTH = 32
KINDS = [
    ("llama", False, False),
    ("llama", False, True),  # tied embeddings: the head is embed_tokens.as_linear
    ("llama", True, True),  # 4-bit tied: QuantizedEmbedding.as_linear
    ("qwen3", True, False),
    ("gemma3", False, False),
    ("mixtral", True, False),
    ("qwen2_moe", False, False),
]


@functools.cache
def _model(arch: str, quantize: bool, tied: bool) -> nn.Module:
    return tiny_lora_model(arch, VOCAB, quantize=quantize, tied=tied, seed=4)


def _units(rng: np.random.Generator, lengths: list[int], starts: list[int]):
    sequences = [rng.integers(1, VOCAB, n).tolist() for n in lengths]
    return [[s] for s in sequences], [
        [min(st_, len(s) - 1)] for s, st_ in zip(sequences, starts, strict=False)
    ]


@pytest.mark.parametrize(("arch", "quantize", "tied"), KINDS)
def test_scored_gradients_equal_the_full_width_loss(arch: str, quantize: bool, tied: bool) -> None:
    model = _model(arch, quantize, tied)
    assert output_head(model) is not None
    units, starts = _units(np.random.default_rng(0), [30, 9, 17, 33], [20, 3, 16, 22])
    full = pack_token_units(units, 2.0, loss_starts=starts, width=WIDTH)
    compact = pack_token_units(units, 2.0, loss_starts=starts, width=WIDTH, scored_only=True)
    assert compact.arrays[1].shape[1] < WIDTH  # fewer positions reach the vocabulary
    inputs, positions = compact.arrays[0], compact.arrays[1]
    gathered = mx.take_along_axis(model(inputs), positions[..., None], axis=1)
    np.testing.assert_allclose(
        np.array(scored_logits(model, inputs, positions)), np.array(gathered), atol=1e-4
    )
    full_losses, full_grads = per_example_grads(model, example_ce_loss, full.arrays)
    losses, grads = per_example_grads(model, scored_ce_loss, compact.arrays)
    np.testing.assert_allclose(np.array(losses), np.array(full_losses), rtol=1e-5, atol=1e-6)
    for name, value in full_grads.items():
        scale = float(np.abs(np.array(value)).max()) + 1e-12
        np.testing.assert_allclose(np.array(grads[name]), np.array(value), atol=1e-5 * scale)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(2, WIDTH + 8), min_size=1, max_size=5),
    starts=st.lists(st.integers(0, WIDTH + 8), min_size=5, max_size=5),
)
def test_the_scored_window_keeps_every_scored_target(lengths: list[int], starts: list[int]) -> None:
    units, loss_starts = _units(np.random.default_rng(1), lengths, starts)
    full = pack_token_units(units, 1.0, loss_starts=loss_starts, width=WIDTH)
    compact = pack_token_units(units, 1.0, loss_starts=loss_starts, width=WIDTH, scored_only=True)
    _, targets, mask = (np.array(a) for a in full.arrays)
    inputs, positions, c_targets, c_mask = (np.array(a) for a in compact.arrays)
    assert np.array_equal(inputs, np.array(full.arrays[0]))
    assert positions.shape[1] % 16 == 0 or positions.shape[1] == WIDTH
    assert positions.min() >= 0 and positions.max() < WIDTH
    for row in range(full.slots):
        scored = np.flatnonzero(mask[row])
        assert sorted(positions[row][c_mask[row] > 0].tolist()) == scored.tolist()
        assert np.array_equal(c_targets[row][c_mask[row] > 0], targets[row][scored])


def test_unknown_families_keep_full_logits() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Linear(2, 2)

    assert output_head(Custom()) is None
    with pytest.raises(ValueError, match="separable"):
        scored_logits(Custom(), mx.zeros((1, 2), dtype=mx.int32), mx.zeros((1, 1), mx.int32))
    assert "llama" in SPLIT_FAMILIES


def test_a_compiled_dp_step_on_scored_positions_moves_the_adapter() -> None:
    model, _ = build_tiny_model("mixtral", VOCAB, seed=5, quantize=True)
    inject_lora(model, LoRAConfig(rank=2))
    before = np.concatenate([np.array(v).ravel() for v in get_adapter_weights(model).values()])
    step = make_dp_step(
        model, optim.SGD(learning_rate=0.1), DPConfig(0.0, 1.0), loss=scored_ce_loss
    )
    units, starts = _units(np.random.default_rng(2), [12, 20], [6, 10])
    report = step(pack_token_units(units, 2.0, loss_starts=starts, width=WIDTH, scored_only=True))
    after = np.concatenate([np.array(v).ravel() for v in get_adapter_weights(model).values()])
    assert report.num_units == 2 and np.isfinite(report.loss)
    assert np.any(after != before) and np.all(np.isfinite(after))
