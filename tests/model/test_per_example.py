"""Per-example LoRA gradients by expanded parameters, on dense, 4-bit and MoE bases: equal to a
loop over single examples, clipped per unit exactly as a loop would, and a full DP step runs
where ``mx.vmap`` cannot (``QuantizedMatmul`` and ``GatherMM`` have no vmap in MLX 0.32)."""

from __future__ import annotations

import functools

from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora
from personal.model.per_example import per_example_grads, per_example_mode
from personal.privacy.dpsgd import (
    CLIP_SAFETY,
    DPConfig,
    clipped_unit_sum,
    example_ce_loss,
    make_dp_step,
)
from personal.privacy.sampler import pack_token_units

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from tiny_models import build_tiny_model, perturb_lora_b

VOCAB = 96
WIDTH = 24
# (architecture, 4-bit): dense, quantized dense, MoE (dense and 4-bit experts), shared experts.
KINDS = [
    ("llama", False),
    ("llama", True),
    ("qwen3", True),
    ("mixtral", False),
    ("mixtral", True),
    ("qwen2_moe", False),
    ("qwen3_moe", True),
]


@functools.cache
def _model(arch: str, quantize: bool) -> nn.Module:
    model, _ = build_tiny_model(arch, VOCAB, seed=1, quantize=quantize)
    inject_lora(model, LoRAConfig(rank=2))
    return perturb_lora_b(model)


def _alone(model: nn.Module, arrays: tuple[mx.array, ...], row: int) -> dict[str, np.ndarray]:
    """Row ``row``'s gradient, computed on a batch of one with plain ``nn.value_and_grad``."""

    def loss(*one: mx.array) -> mx.array:
        return example_ce_loss(model, *(a[None] for a in one)).sum()

    _, grads = nn.value_and_grad(model, loss)(*(a[row] for a in arrays))
    return {k: np.array(v) for k, v in tree_flatten(grads)}


def _flat(tree: dict) -> np.ndarray:
    return np.concatenate([np.array(v).reshape(-1) for _, v in sorted(tree.items())])


def _sequences(rng: np.random.Generator, lengths: list[int]) -> list[list[int]]:
    return [rng.integers(1, VOCAB, n).tolist() for n in lengths]


@pytest.mark.parametrize(("arch", "quantize"), KINDS)
def test_per_example_grads_equal_a_loop_over_single_examples(arch: str, quantize: bool) -> None:
    model = _model(arch, quantize)
    rng = np.random.default_rng(0)
    batch = pack_token_units([[s] for s in _sequences(rng, [20, 7, 13, 24])], 2.0, width=WIDTH)
    losses, grads = per_example_grads(model, example_ce_loss, batch.arrays)
    assert set(grads) == set(get_adapter_weights(model))
    for row in range(batch.num_examples):
        alone = _alone(model, batch.arrays, row)
        for name, value in alone.items():
            scale = float(np.abs(value).max()) + 1e-12
            np.testing.assert_allclose(np.array(grads[name][row]), value, atol=1e-5 * scale)
    assert np.all(np.isfinite(np.array(losses)))


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(KINDS),
    lengths=st.lists(st.integers(2, WIDTH + 6), min_size=1, max_size=6),
    owners=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    clip=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**16),
)
def test_clipped_unit_sums_equal_the_loop(
    kind: tuple[str, bool], lengths: list[int], owners: list[int], clip: float, seed: int
) -> None:
    """Rows grouped into units at random: the (uncompiled) clipped sum equals summing each
    unit's single-example gradients, clipping the unit to C, and summing the units."""
    model = _model(*kind)
    rng = np.random.default_rng(seed)
    sequences = _sequences(rng, lengths)
    groups: dict[int, list[list[int]]] = {}
    for seq, owner in zip(sequences, owners, strict=False):
        groups.setdefault(owner, []).append(seq)
    units = list(groups.values())
    batch = pack_token_units(units, float(len(units)), width=WIDTH)
    sums, norms, _, _ = clipped_unit_sum(
        model, example_ce_loss, batch.arrays, batch.units, batch.valid, clip
    )
    expected = np.zeros_like(_flat(sums))
    row = 0
    for u, examples in enumerate(units):
        total = sum(_flat(_alone(model, batch.arrays, row + i)) for i in range(len(examples)))
        row += len(examples)
        norm = float(np.linalg.norm(total))
        np.testing.assert_allclose(float(np.array(norms)[u]), norm, rtol=1e-4, atol=1e-6)
        expected += total * min(1.0, clip * CLIP_SAFETY / max(norm, 1e-30))
    atol = 1e-5 * max(float(np.abs(expected).max()), 1e-6)
    np.testing.assert_allclose(_flat(sums), expected, rtol=1e-4, atol=atol)


@pytest.mark.parametrize(("arch", "quantize"), [("llama", True), ("mixtral", True)])
def test_a_compiled_dp_step_runs_on_quantized_and_moe_bases(arch: str, quantize: bool) -> None:
    model, _ = build_tiny_model(arch, VOCAB, seed=2, quantize=quantize)
    inject_lora(model, LoRAConfig(rank=2))
    before = _flat(get_adapter_weights(model))
    step = make_dp_step(model, optim.SGD(learning_rate=0.1), DPConfig(0.0, 1.0))
    rng = np.random.default_rng(1)
    report = step(pack_token_units([[s] for s in _sequences(rng, [10, 12])], 2.0, width=WIDTH))
    after = _flat(get_adapter_weights(model))
    assert report.num_units == 2 and np.isfinite(report.loss)
    assert np.any(after != before) and np.all(np.isfinite(after))


def test_expert_classes_are_restored_even_when_the_loss_raises() -> None:
    model = _model("mixtral", False)
    classes = {name: type(m) for name, m in model.named_modules()}

    def broken(*_: mx.array) -> mx.array:
        raise RuntimeError("boom")

    arrays = pack_token_units([[[1, 2, 3]]], 1.0, width=WIDTH).arrays
    with pytest.raises(RuntimeError):
        per_example_grads(model, broken, arrays)
    assert {name: type(m) for name, m in model.named_modules()} == classes
    with per_example_mode(model, 1):
        assert any(type(m).__name__.startswith("PerExample") for _, m in model.named_modules())
    assert {name: type(m) for name, m in model.named_modules()} == classes
    # The shared adapter is back in the model, not the expanded copies.
    assert all(v.ndim <= 3 for v in get_adapter_weights(model).values())


def test_trainable_tensors_other_than_lora_fall_back_to_vmap_on_dense_bases() -> None:
    model, _ = build_tiny_model("llama", VOCAB, seed=3)
    inject_lora(model, LoRAConfig(rank=2))
    model.model.norm.unfreeze()
    rng = np.random.default_rng(2)
    batch = pack_token_units([[s] for s in _sequences(rng, [9, 14])], 2.0, width=WIDTH)
    _, grads = per_example_grads(model, example_ce_loss, batch.arrays)
    assert "model.norm.weight" in grads
    for row in range(2):
        for name, value in _alone(model, batch.arrays, row).items():
            scale = float(np.abs(value).max()) + 1e-12
            np.testing.assert_allclose(np.array(grads[name][row]), value, atol=1e-5 * scale)
