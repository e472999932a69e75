"""Typed wrappers for the MLX calls whose stubs are too loose for mypy.

MLX's stubs type ``mx.load`` as ``array | dict | tuple``, ``array.item()`` as
``int | float | complex``, ``mlx.utils.tree_flatten`` as ``list[tuple[str, Any]] | dict`` and
Python's ``sum`` of arrays as ``array | Literal[0]``. The call sites here always get one of
those types; these helpers say which (and check it at run time, cheaply) so that the rest of
the code type-checks without ``# type: ignore``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten


def load_arrays(path: str | Path) -> dict[str, mx.array]:
    """``mx.load`` of a file of named tensors (safetensors, GGUF, npz): ``name -> array``.

    Raises:
        ValueError: the file holds a single unnamed array (``.npy``), not named tensors.
        RuntimeError, ValueError: whatever ``mx.load`` raises for an unreadable file.
    """
    loaded = mx.load(str(path))
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds a single array, not named tensors")
    return loaded


def scalar(x: mx.array) -> float:
    """The value of a one-element real array as a Python float (``float(x.item())``).

    Raises:
        TypeError: the array is complex.
    """
    value = x.item()
    if isinstance(value, complex):
        raise TypeError(f"expected a real scalar, got the complex {value}")
    return float(value)


def flat_params(tree: object) -> list[tuple[str, mx.array]]:
    """``tree_flatten`` of a parameter tree: ``(dotted name, array)`` pairs, in tree order."""
    flat = tree_flatten(tree)
    # Without a ``destination`` argument tree_flatten always returns the list.
    return list(flat.items()) if isinstance(flat, dict) else flat


def from_buffer(data: memoryview[int] | memoryview[float]) -> mx.array:
    """``mx.array(data)``: a copy of a typed memoryview's items (MLX reads the buffer protocol)."""
    return mx.array(data)  # type: ignore[arg-type]  # the stub lists DLPack, not buffers


def array_sum(arrays: Iterable[mx.array]) -> mx.array:
    """``sum(arrays)`` typed as an array.

    The same graph as the built-in: it starts from the Python int ``0``, a weak scalar in MLX
    (the result keeps the arrays' dtype). Empty ``arrays`` give a 0-d ``int32`` zero.
    """
    total = sum(arrays)
    return total if isinstance(total, mx.array) else mx.array(total)
