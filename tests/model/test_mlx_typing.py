"""The typed MLX wrappers return what the untyped calls return, and refuse the other cases."""

from pathlib import Path

from personal.model.mlx_typing import array_sum, flat_params, from_buffer, load_arrays, scalar

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten


def test_load_arrays_reads_named_tensors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    mx.save_safetensors(str(path), {"a": mx.arange(3), "b.c": mx.ones((2, 2))})
    loaded = load_arrays(path)
    assert sorted(loaded) == ["a", "b.c"]
    assert loaded["a"].tolist() == [0, 1, 2]


def test_load_arrays_refuses_a_single_array(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    mx.save(str(path), mx.arange(3))
    with pytest.raises(ValueError, match="single array"):
        load_arrays(path)


def test_scalar_is_item_as_a_float() -> None:
    assert scalar(mx.array(2.5)) == 2.5
    assert scalar(mx.array(7, dtype=mx.int32)) == 7.0
    assert scalar(mx.array([True]).sum()) == 1.0
    assert isinstance(scalar(mx.array(3)), float)
    with pytest.raises(TypeError, match="complex"):
        scalar(mx.array(1 + 2j))


def test_flat_params_is_tree_flatten() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    flat = flat_params(model.parameters())
    assert [name for name, _ in flat] == [name for name, _ in tree_flatten(model.parameters())]
    assert all(isinstance(value, mx.array) for _, value in flat)


def test_from_buffer_copies_a_typed_memoryview() -> None:
    data = bytearray(range(8))
    view = memoryview(data).cast("H")
    expected = list(view)
    array = from_buffer(view)
    assert array.dtype == mx.uint16
    assert array.tolist() == expected
    data[0] = 255  # a copy: the array does not see later writes
    assert array.tolist() == expected


def test_array_sum_matches_sum() -> None:
    parts = [mx.array([1.0, 2.0], dtype=mx.bfloat16), mx.array([0.5, 0.25], dtype=mx.bfloat16)]
    total = array_sum(parts)
    assert total.dtype == mx.bfloat16
    assert mx.array_equal(total, sum(parts))
    empty = array_sum([])
    assert isinstance(empty, mx.array)
    assert empty.item() == 0
