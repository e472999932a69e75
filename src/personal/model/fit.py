"""Plain (non-private) fitting loops: LoRA fine-tuning, teacher pre-training, distillation.

In ``personal.model`` (not ``personal.training``) because distillation in ``model/`` and
``adapters/`` uses it, and layers only import the layers below them (README, Architecture).

DP training is the round (:mod:`personal.training.runner`) over the DP step of
:mod:`personal.privacy.dpsgd`; this module is for public data only (building the base models,
distillation, the demo's non-private baseline). Loops are plain functions with injectable
pieces (``loss=``, ``callback=``) in mlx-lm's style, with an explicit ``mx.eval`` at every step
boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from personal.model.batching import Batch
from personal.model.fastmath import cross_entropy
from personal.model.mlx_typing import scalar

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

LossFn = Callable[[nn.Module, Batch], mx.array]
Callback = Callable[[int, float], None]


def masked_ce_loss(model: nn.Module, batch: Batch) -> mx.array:
    """Token-weighted mean cross-entropy over the batch mask (a scalar)."""
    logits = model(batch.inputs).astype(mx.float32)  # (B, T, V)
    losses = cross_entropy(logits, batch.targets)  # (B, T)
    return (losses * batch.mask).sum() / mx.maximum(batch.mask.sum(), 1.0)


def make_train_step(
    model: nn.Module,
    optimizer: optim.Optimizer,
    loss: LossFn = masked_ce_loss,
    *,
    compile: bool = True,
    max_grad_norm: float | None = None,
) -> Callable[[Batch], mx.array]:
    """One optimiser step on the model's trainable parameters; returns the loss (lazy).

    With ``compile`` the step is traced once per input shape (batches are padded to a few
    shapes, see :func:`~personal.model.batching.make_batch`).
    """
    loss_and_grad = nn.value_and_grad(model, loss)

    def step(inputs: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
        value, grads = loss_and_grad(model, Batch(inputs, targets, mask))
        if max_grad_norm is not None:
            grads, _ = optim.clip_grad_norm(grads, max_grad_norm)
        optimizer.update(model, grads)
        return value

    if compile:
        state = [model.state, optimizer.state, mx.random.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)

    def run(batch: Batch) -> mx.array:
        return step(batch.inputs, batch.targets, batch.mask)

    return run


def train(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: optim.Optimizer,
    *,
    loss: LossFn = masked_ce_loss,
    callback: Callback | None = None,
    compile: bool = True,
    max_grad_norm: float | None = None,
) -> list[float]:
    """Train on every batch once; returns the loss of each step.

    Args:
        model: trains its *trainable* parameters (freeze the rest first, e.g. inject_lora).
        batches: an iterable of :class:`~personal.model.batching.Batch`.
        optimizer: an ``mlx.optimizers`` optimiser.
        loss: ``loss(model, batch) -> scalar``.
        callback: called as ``callback(step, loss)`` after each step.
        compile: compile the step function.
        max_grad_norm: clip the global gradient norm.
    """
    model.train()
    step_fn = make_train_step(model, optimizer, loss, compile=compile, max_grad_norm=max_grad_norm)
    losses = []
    for index, batch in enumerate(batches):
        value = step_fn(batch)
        mx.eval(value, model.parameters(), optimizer.state)
        losses.append(scalar(value))
        if callback is not None:
            callback(index, losses[-1])
    model.eval()
    return losses
