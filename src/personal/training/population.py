"""Train a public population adapter: plain (non-DP) SGD on public synthetic users' logs.

The adapter a store serves before its first round under ``training.warm_start =
"population"`` (:mod:`personal.adapters.population`). It reads public data only (interactions
of synthetic users who are never evaluated, and the public text of the pull to the base), so
it needs no noise and costs no ε: the same recipe as a DP round, minus clipping and noise::

    loss = CE(population batch) + distill_weight · KL(p_base ‖ p_θ)(public batch)

with plain SGD at the policy's learning rate, the policy's LoRA shape and its pull to the base
(``continual.public_distill_weight``), which keeps the general drift small: a warm start that
drifts from the base leaves the rounds less room under the general-loss gate.

A pure function of its inputs and ``seed`` (batches are drawn with ``random.Random(seed)``, the
adapter starts from :func:`~personal.model.lora.fresh_adapter_weights` at ``seed``).

Under a ``guard`` (:class:`~personal.training.step_guard.PublicLossGuard`, as in a DP round) an
update that raises the public check batch's loss past the limit is undone and retried at half
the rate (:class:`~personal.model.guarded_update.GuardedUpdate`): the policy's rate, measured
on the bundled bases, is far too large for some real ones (SmolLM2-135M: the public loss went
from 0.65 to 361 in one DP round at lr 0.3), and the guard finds one the base stands.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial

from personal.model.base import BaseModel
from personal.model.batching import Batch, make_batch
from personal.model.evaluate import scored_mean_loss
from personal.model.guarded_update import GuardedUpdate, StepGuard
from personal.model.lora import fresh_adapter_weights, get_adapter_weights, set_adapter_weights
from personal.model.tokenizer import encode_interaction
from personal.public import PublicExample, public_batches
from personal.training.continual import distill_to_base_loss

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

#: ``callback(step, loss, step_scale)``: step_scale is the share of the rate in use (1.0 unguarded).
Callback = Callable[[int, float, float], None]


def _encode(base: BaseModel, examples: Sequence[PublicExample]) -> list[tuple[list[int], int]]:
    return [
        encode_interaction(base.tokenizer, e.prompt, e.response, complete=e.complete)
        for e in examples
    ]


def train_population_adapter(
    base: BaseModel,
    examples: Sequence[PublicExample],
    public: Sequence[PublicExample],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int = 32,
    distill_weight: float = 0.0,
    public_batch_size: int = 32,
    max_tokens: int = 64,
    seed: int = 0,
    callback: Callback | None = None,
    guard: StepGuard | None = None,
) -> dict[str, mx.array]:
    """Train ``base``'s LoRA layers (injected, in the policy's shape) on public ``examples``.

    Args:
        base: the base model with LoRA injected; its adapter is replaced and trained in place.
        examples: the public population's interactions (never a user's data).
        public: public text for the pull to the base (``distill_weight`` > 0).
        steps: SGD steps; each draws ``batch_size`` examples uniformly with replacement.
        learning_rate: plain SGD's step size (the policy's ``training.learning_rate``).
        distill_weight: weight of KL(p_base ‖ p_θ) on a public batch per step (0: off).
        public_batch_size, max_tokens: batch of the pull; tokens kept per example.
        seed: the batches' and the initial adapter's seed.
        callback: called as ``callback(step, loss, step_scale)`` after each step
            (``step_scale``: the share of ``learning_rate`` the guard settled on so far).
        guard: checks every update on public data; a rejected one is undone and retried at
            half the rate, the smaller rate kept (see the module doc).

    Returns:
        The trained adapter, ``get_adapter_weights(base.model)``.
    """
    if not examples:
        raise ValueError("a population adapter needs at least one public example")
    model = base.model
    set_adapter_weights(model, fresh_adapter_weights(model, seed=seed))
    encoded = _encode(base, examples)
    pull: list[Batch] = []
    if distill_weight > 0 and public:
        pull = public_batches(base.tokenizer, public, batch_size=public_batch_size)

    def loss(module: nn.Module, batch: Batch, anchor: Batch | None) -> mx.array:
        value = scored_mean_loss(module, batch)
        if anchor is not None:
            value = value + distill_weight * distill_to_base_loss(module, anchor)
        return value

    loss_and_grad = nn.value_and_grad(model, loss)
    optimizer = optim.SGD(learning_rate=learning_rate)
    guarded = None if guard is None else GuardedUpdate(model, optimizer, guard)
    rng = random.Random(seed)
    model.eval()  # no dropout: the adapter's own pass and the bare-base pass must agree
    for step in range(steps):
        picked = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        batch = make_batch(
            [ids for ids, _ in picked], [start for _, start in picked], max_length=max_tokens
        )
        anchor = pull[step % len(pull)] if pull else None
        value, grads = loss_and_grad(model, batch, anchor)
        apply = partial(optimizer.update, model, grads)
        if guarded is None:
            apply()
        else:
            guarded(apply)
        mx.eval(value, model.parameters(), optimizer.state)
        if callback is not None:
            callback(step, float(value.item()), 1.0 if guarded is None else guarded.step_scale)
    return {name: mx.array(value) for name, value in get_adapter_weights(model).items()}
