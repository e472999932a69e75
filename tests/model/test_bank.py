"""The adapter bank: mixtures are LoRA adapters, only coefficients train, per-example grads."""

from __future__ import annotations

from personal.errors import AdapterMismatch
from personal.model.bank import AdapterBank, bank_training, trained_parameters
from personal.model.lora import (
    LoRAConfig,
    get_adapter_weights,
    inject_lora,
    remove_lora,
    set_adapter_weights,
)
from personal.model.per_example import per_example_grads
from personal.privacy.dpsgd import example_ce_loss

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from tests.tiny_models import build_tiny_model

VOCAB = 64
SHAPE = {"targets": ("self_attn.o_proj", "mlp.down_proj"), "num_layers": 1}


def _member(model: nn.Module, seed: int, rank: int) -> dict[str, mx.array]:
    """A random adapter in the shape (B non-zero, so it changes the model)."""
    inject_lora(model, LoRAConfig(rank=rank, **SHAPE), seed=seed)
    key = mx.random.key(seed + 100)
    weights = {}
    for name, value in get_adapter_weights(model).items():
        key, sub = mx.random.split(key)
        weights[name] = mx.random.normal(value.shape, key=sub) * 0.05
    remove_lora(model)
    return weights


def _setup(members: int = 3, rank: int = 1) -> tuple[nn.Module, AdapterBank]:
    model, _ = build_tiny_model("llama", VOCAB, seed=0)
    bank = AdapterBank.from_members([_member(model, s, rank) for s in range(members)])
    inject_lora(model, LoRAConfig(rank=members * rank, **SHAPE))
    return model, bank


def _batch(rows: int = 3, width: int = 6) -> tuple[mx.array, mx.array, mx.array]:
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(1, VOCAB, (rows, width + 1)), dtype=mx.int32)
    return tokens[:, :-1], tokens[:, 1:], mx.ones((rows, width))


def test_a_mixture_is_the_sum_of_its_members() -> None:
    model, bank = _setup(members=3)
    inputs, _, _ = _batch()
    coefficients = {p: mx.array([0.5, -1.0, 2.0]) for p in bank.paths}
    set_adapter_weights(model, bank.adapter(coefficients))
    mixed = model(inputs)
    # The same update from the members' own LoRA factors: sum_k c_k B_k A_k, per layer.
    modules = dict(model.named_modules())
    for p in bank.paths:
        a, b = bank.a[p], bank.b[p]
        delta = sum(c * (a[:, k : k + 1] @ b[k : k + 1]) for k, c in enumerate([0.5, -1.0, 2.0]))
        np.testing.assert_allclose(
            np.array(modules[p].lora_a @ modules[p].lora_b), np.array(delta), atol=1e-6
        )
    with bank_training(model, bank):
        np.testing.assert_allclose(np.array(model(inputs)), np.array(mixed), atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=3, max_size=3), st.integers(1, 2))
def test_coefficients_round_trip_through_the_adapter(values: list[float], rank: int) -> None:
    model, bank = _setup(members=3, rank=rank)
    coefficients = {p: mx.array(values) for p in bank.paths}
    back = bank.coefficients_of(bank.adapter(coefficients))
    assert back is not None
    for p in bank.paths:
        np.testing.assert_allclose(np.array(back[p]), values, atol=1e-5)
    stored = AdapterBank.from_weights(bank.weights(), members=3)
    assert stored.paths == bank.paths and stored.rank == rank
    assert bank.coefficients_of(get_adapter_weights(model)) is None  # a fresh adapter: not in span


def test_only_coefficients_train_and_the_model_is_lora_again_after() -> None:
    model, bank = _setup(members=3)
    inputs, targets, mask = _batch()
    with bank_training(model, bank) as start:
        assert all(float(mx.abs(c).max()) == 0 for c in start.values())  # not in span: zero
        names = [n for n, _ in tree_flatten(model.trainable_parameters())]
        assert names and all(n.endswith(".coefficients") for n in names)
        assert trained_parameters(bank) == len(names) * 3

        def loss(m: nn.Module) -> mx.array:
            return example_ce_loss(m, inputs, targets, mask).mean()

        grads = dict(tree_flatten(nn.value_and_grad(model, loss)(model)[1]))
        for name, g in grads.items():
            assert g.shape == (3,) and float(mx.abs(g).sum()) > 0, name
        for path in bank.paths:
            dict(model.named_modules())[path]["coefficients"] = mx.array([1.0, 0.0, -0.5])
        trained_out = model(inputs)
    names = {n for n, _ in tree_flatten(model.trainable_parameters())}
    assert names and all(n.rpartition(".")[2] in ("lora_a", "lora_b") for n in names)
    np.testing.assert_allclose(np.array(model(inputs)), np.array(trained_out), atol=1e-5)
    # ... and the next round starts where this one stopped.
    with bank_training(model, bank) as start:
        for path in bank.paths:
            np.testing.assert_allclose(np.array(start[path]), [1.0, 0.0, -0.5], atol=1e-5)


def test_per_example_gradients_of_coefficients_are_each_rows_own() -> None:
    model, bank = _setup(members=3)
    inputs, targets, mask = _batch(rows=3)
    with bank_training(model, bank):
        for path in bank.paths:
            dict(model.named_modules())[path]["coefficients"] = mx.array([0.3, -0.2, 0.1])
        _, grads = per_example_grads(model, example_ce_loss, (inputs, targets, mask))
        for row in range(3):
            one = (inputs[row : row + 1], targets[row : row + 1], mask[row : row + 1])

            def loss(m: nn.Module, *a: mx.array) -> mx.array:
                return example_ce_loss(m, *a).sum()

            alone = dict(tree_flatten(nn.value_and_grad(model, loss)(model, *one)[1]))
            for name, value in alone.items():
                np.testing.assert_allclose(
                    np.array(grads[name][row]), np.array(value), rtol=1e-4, atol=1e-6
                )


def test_a_model_of_the_wrong_rank_or_shape_is_a_named_error() -> None:
    model, bank = _setup(members=3)
    remove_lora(model)
    inject_lora(model, LoRAConfig(rank=2, **SHAPE))
    with (
        pytest.raises(AdapterMismatch, match=r"training\.lora\.rank = 3"),
        bank_training(model, bank),
    ):
        pass
    remove_lora(model)
    inject_lora(model, LoRAConfig(rank=3, targets=("self_attn.q_proj",), num_layers=1))
    with pytest.raises(AdapterMismatch, match="not a dense LoRA layer"), bank_training(model, bank):
        pass
