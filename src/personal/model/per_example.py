"""Per-example gradients of a LoRA adapter in one batched backward pass, on any mlx-lm base.

DP-SGD needs every example's own gradient before clipping. ``mx.vmap(mx.grad(loss))`` gives
them, but it vmaps through the *base's* operations too, and MLX 0.32 cannot vmap
``QuantizedMatmul`` (4-bit bases) or ``GatherMM`` (MoE bases). Here the adapter is expanded
instead: each LoRA tensor gets a leading per-example axis, ``lora_a: (in, r) -> (S, in, r)``, all
``S`` copies equal to the shared value. Row ``s`` of the batch only ever multiplies copy ``s``,
so the gradient of the *summed* loss with respect to copy ``s`` is exactly row ``s``'s own
gradient, and one ordinary backward pass through the frozen base (quantized, MoE, tied
embeddings: whatever it is) yields all of them. The cost is that of the plain batched gradient
plus ``S`` copies of the adapter, which is small (LoRA).

How each layer kind consumes the expanded tensors:

* ``LoRALinear`` (dense or quantized base): ``(x @ A) @ B`` with ``x: (S, T, in)`` and
  ``A: (S, in, r)`` is a batched matmul, row ``s`` against copy ``s``; mlx-lm's own forward
  works unchanged.
* ``LoRASwitchLinear`` (MoE experts): the expert weights are gathered per token with
  ``gather_mm``, and the expert layer sees tokens sorted by expert, so it no longer knows each
  token's row. :func:`per_example_mode` therefore offsets the router's expert index of every
  token of row ``s`` by ``s · E`` in the module that owns the expert layers (``SwitchGLU``,
  ``SwitchMLP``, ...): the adapter is gathered from the ``(S · E, ...)`` expanded tensor at that
  offset index, and the frozen experts at the index modulo ``E``.

The requirement on the loss is the one every per-example method has: row ``s``'s loss depends
on row ``s`` only (true of decoder LMs: attention is within a row and MoE routing is per
token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from personal.errors import ConfigError

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from mlx_lm.tuner.lora import LoRASwitchLinear

#: ``loss(model, *arrays) -> (S,)``: one loss per row of the batch ``arrays`` (each ``(S, ...)``);
#: row ``s``'s loss may depend on row ``s`` only.
RowLoss = Callable[..., mx.array]

_EXPERT_TYPES = (SwitchLinear, QuantizedSwitchLinear, LoRASwitchLinear)
# Tensors a layer can take with a leading per-example axis: LoRA's, and an adapter bank's
# mixing coefficients (personal.model.bank.BankLoRALinear).
_LORA_KEYS = ("lora_a", "lora_b", "coefficients")


def per_example_grads(
    model: nn.Module, loss: RowLoss, arrays: tuple[mx.array, ...]
) -> tuple[mx.array, dict[str, mx.array]]:
    """Per-row losses ``(S,)`` and gradients ``name -> (S, *param.shape)``.

    Functional in the style of ``nn.value_and_grad``: when every trainable tensor is a LoRA
    tensor (the adapter after ``inject_lora``), the adapter is expanded to ``S`` copies and the
    summed loss is differentiated with respect to the copies in one backward pass; the model
    gets its own (shared) adapter back afterwards. Any other trainable tensor falls back to
    ``mx.vmap`` over rows of one, which works for dense modules only. Works inside
    ``mx.compile``.

    Args:
        model: the module whose trainable parameters are differentiated.
        loss: per-row losses of a batch, see :data:`RowLoss`.
        arrays: the batch, each ``(S, ...)``.
    """
    params = dict(tree_flatten(model.trainable_parameters()))
    if any(name.rpartition(".")[2] not in _LORA_KEYS for name in params):
        return _vmapped(model, loss, params, arrays)
    slots = arrays[0].shape[0]
    expanded = {name: mx.broadcast_to(v, (slots, *v.shape)) for name, v in params.items()}

    def summed(copies: dict[str, mx.array], *batch: mx.array) -> tuple[mx.array, mx.array]:
        model.update(tree_unflatten(list(copies.items())))
        losses = loss(model, *batch)  # (S,)
        return losses.sum(), losses

    try:
        with per_example_mode(model, slots):
            (_, losses), grads = mx.value_and_grad(summed)(expanded, *arrays)
    finally:
        model.update(tree_unflatten(list(params.items())))  # the shared adapter goes back
    return losses, grads


def _vmapped(
    model: nn.Module, loss: RowLoss, params: dict[str, mx.array], arrays: tuple[mx.array, ...]
) -> tuple[mx.array, dict[str, mx.array]]:
    """``vmap(value_and_grad)`` over rows of one: for trainable tensors that are not LoRA
    (MLX cannot vmap quantized or MoE base operations, so those need LoRA-only training)."""

    def row_loss(p: dict[str, mx.array], *row: mx.array) -> mx.array:
        model.update(tree_unflatten(list(p.items())))
        return loss(model, *(a[None] for a in row))[0]

    in_axes = (None,) + (0,) * len(arrays)
    try:
        losses, grads = mx.vmap(mx.value_and_grad(row_loss), in_axes=in_axes)(params, *arrays)
    finally:
        model.update(tree_unflatten(list(params.items())))  # vmap left tracers in the model
    return losses, dict(tree_flatten(grads))


@contextlib.contextmanager
def per_example_mode(model: nn.Module, slots: int) -> Iterator[None]:
    """Let the MoE expert layers of ``model`` run with a per-example expanded adapter.

    Dense LoRA layers need nothing. Every module that owns expert layers is switched, for the
    duration of the block, to a subclass that offsets the expert index of row ``s`` by
    ``s · E``; its expert layers to subclasses that read the adapter at that index and the
    frozen experts at the index modulo ``E``. Classes (not instances) are swapped, so parameter
    paths, compiled-graph inputs and ``model.update`` keep working; they are restored on exit.
    """
    swapped: list[tuple[nn.Module, type]] = []
    try:
        for _, module in model.named_modules():
            if isinstance(module, _EXPERT_TYPES):
                continue  # a LoRA expert layer owns its frozen experts: not a router's owner
            experts = [c for c in module.children().values() if isinstance(c, _EXPERT_TYPES)]
            if not experts:
                continue
            for child in experts:
                swapped.append((child, type(child)))
                child.__class__ = _expert_class(type(child))
            swapped.append((module, type(module)))
            module.__class__ = _router_owner_class(type(module))
            module.__dict__["_per_example"] = (slots, int(experts[0].num_experts))
        yield
    finally:
        for module, cls in reversed(swapped):
            module.__class__ = cls
            module.__dict__.pop("_per_example", None)


_CLASS_CACHE: dict[tuple[str, type], type] = {}


def _cached(kind: str, base: type, make: Callable[[type], type]) -> type:
    key = (kind, base)
    if key not in _CLASS_CACHE:
        _CLASS_CACHE[key] = make(base)
    return _CLASS_CACHE[key]


def _router_owner_class(base: type) -> type:
    """``base`` (e.g. ``SwitchGLU``) with every row's expert indices offset by ``row · E``."""

    def make(cls: type) -> type:
        def __call__(self: Any, x: mx.array, indices: mx.array, *args: Any, **kw: Any) -> Any:
            slots, experts = self.__dict__["_per_example"]
            if indices.shape[0] != slots:
                raise ConfigError(
                    f"{cls.__name__} routes a batch of {indices.shape[0]} rows, not the "
                    f"{slots} examples of the batch: per-example MoE gradients need the batch "
                    "axis first (mlx-lm's MoE blocks keep it)."
                )
            shape = (slots,) + (1,) * (indices.ndim - 1)
            offsets = (mx.arange(slots, dtype=mx.uint32) * experts).reshape(shape)
            return cls.__call__(self, x, indices.astype(mx.uint32) + offsets, *args, **kw)

        return type(f"PerExample{cls.__name__}", (cls,), {"__call__": __call__})

    return _cached("owner", base, make)


def _expert_class(base: type) -> type:
    """An expert layer class that takes row-offset indices (see :func:`per_example_mode`)."""
    if issubclass(base, LoRASwitchLinear):
        return _cached(
            "lora",
            base,
            lambda cls: type("PerExampleLoRASwitch", (cls,), {"__call__": _lora_expert_call}),
        )

    def make(cls: type) -> type:
        def __call__(
            self: Any, x: mx.array, indices: mx.array, sorted_indices: bool = False
        ) -> Any:
            # Frozen experts are shared by all rows: undo the offset. The residues are no longer
            # sorted, so the sortedness hint is dropped (correct, if a little slower).
            return cls.__call__(self, x, indices % self.num_experts)

        return type(f"PerExample{cls.__name__}", (cls,), {"__call__": __call__})

    return _cached("frozen", base, make)


def _lora_expert_call(
    self: LoRASwitchLinear, x: mx.array, indices: mx.array, sorted_indices: bool = False
) -> mx.array:
    """LoRA on expert layers with an expanded adapter ``lora_a: (S, E, r, in)``."""
    experts = self.num_experts
    y = self.linear(x, indices % experts)  # the frozen experts, shared by every row
    a = self.lora_a.reshape(-1, *self.lora_a.shape[-2:])  # (S·E, r, in)
    b = self.lora_b.reshape(-1, *self.lora_b.shape[-2:])  # (S·E, out, r)
    z = mx.gather_mm(
        self.dropout(x), a.swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices
    )
    z = mx.gather_mm(z, b.swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices)
    return y + (self.scale * z).astype(x.dtype)


__all__ = ["RowLoss", "per_example_grads", "per_example_mode"]
