"""Carry a user's personalization to a new base model without spending privacy budget.

When an OS update ships a new base, the active adapter belongs to the old base's fingerprint
and must never be loaded onto the new one. :func:`distill_migration` teaches a *fresh* LoRA on
the new base to behave like the old base with its adapter:

* **prompts** are public: the migration prompts of the store's public data
  (:mod:`personal.public`; by default the bundled generic prompts), never a private record;
* **targets** are text the teacher (old base + active DP adapter) generates for them, so the
  new adapter is post-processing of a DP artifact: the migration charges nothing, and the
  ledger records it with zero charge and the reason;
* when both bases share a tokenizer, the student learns only the **personalization**, not the
  old base: its target distribution is the new base's own, shifted by what the adapter changed
  on the old base, ``log p* = log p_new + (log p_old+adapter - log p_old)`` (renormalised),
  matched with KL on the generated replies. Plain distillation from the old base + adapter
  would also pull the new base towards the old base's general behaviour (a worse model: the
  update exists because the new base is better), which the general-loss gate then refuses;
* otherwise training is sequence-level distillation (Kim & Rush 2016) on the generated text,
  which only exchanges text and so works across tokenizers and sizes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from personal.model.base import BaseModel
from personal.model.batching import Batch
from personal.model.distill import logit_kd_loss
from personal.model.fit import train
from personal.model.head import output_head, scored_logits, scored_positions
from personal.model.lora import lora_off
from personal.model.seqkd import sequence_level_batches, teacher_generations
from personal.model.trunk import TrunkCache

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

STRATEGIES = ("distill", "retrain", "both", "drop")


@dataclass
class MigrationReport:
    """What a base-model migration did (public and DP values only).

    Attributes:
        strategy: ``distill``, ``retrain``, ``both`` or ``drop``.
        old_fingerprint, new_fingerprint: the two bases.
        old_version: the adapter that was active on the old base (the teacher), or None.
        new_version: the migrated adapter activated on the new base, or None (serving the bare
            new base).
        prompts, steps: public prompts distilled on and student steps taken.
        distill_loss: the student's loss on the teacher's text, first and last step.
        token_level: whether residual logit distillation was used (same tokenizer on both
            bases); otherwise sequence-level distillation on the generated text.
        charged: whether any private data was read (only ``retrain`` / ``both`` do).
        gates: the gate decision on the new base.
        retrain: the DP round report of a retrain, if any.
        seconds: wall time.
    """

    strategy: str
    old_fingerprint: str
    new_fingerprint: str
    old_version: int | None = None
    new_version: int | None = None
    prompts: int = 0
    steps: int = 0
    distill_loss: list[float] = field(default_factory=list)
    token_level: bool = False
    charged: bool = False
    gates: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def same_tokenizer(a: BaseModel, b: BaseModel) -> bool:
    """Whether both bases tokenize identically (same vocabulary, same ids)."""
    va, vb = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
    return bool(va == vb)


def distill_migration(
    teacher: BaseModel,
    student: BaseModel,
    prompts: Sequence[str],
    *,
    steps: int,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    max_tokens: int = 48,
    seed: int = 0,
) -> tuple[int, list[float], bool]:
    """Teach ``student``'s trainable LoRA to answer ``prompts`` like ``teacher`` does.

    Args:
        teacher: the old base with its active adapter (left unchanged).
        student: the new base with a fresh LoRA injected (its adapter is trained in place).
        prompts: public prompts only.
        steps: student steps (epochs over the generated pairs are repeated as needed).
        learning_rate, batch_size, max_tokens, seed: the recipe.

    Returns:
        ``(steps, losses, token_level)``.
    """
    pairs = teacher_generations(
        teacher.model, teacher.tokenizer, prompts, max_tokens=max_tokens, seed=seed
    )
    pairs = [(p, r) for p, r in pairs if r.strip()] or pairs
    epochs = max(1, -(-steps * batch_size // max(len(pairs), 1)))
    batches = sequence_level_batches(
        pairs, student.tokenizer, batch_size=batch_size, epochs=epochs, seed=seed
    )[:steps]
    optimizer = optim.Adam(learning_rate=learning_rate)
    if same_tokenizer(teacher, student):
        losses = residual_distill(teacher.model, student.model, batches, optimizer)
        return len(losses), losses, True
    losses = train(student.model, batches, optimizer)
    return len(losses), [float(v) for v in losses], False


def _logits(model: nn.Module, inputs: mx.array, positions: mx.array | None) -> mx.array:
    """Logits at ``positions`` (every position when ``None``)."""
    return model(inputs) if positions is None else scored_logits(model, inputs, positions)


def _log_probs(model: nn.Module, inputs: mx.array, positions: mx.array | None) -> mx.array:
    """Log-probabilities at ``positions`` (every position when ``None``), float32."""
    return nn.log_softmax(_logits(model, inputs, positions).astype(mx.float32), axis=-1)


def residual_target(
    teacher: nn.Module, student: nn.Module, inputs: mx.array, positions: mx.array | None = None
) -> mx.array:
    """``log p_new + (log p_old+adapter - log p_old)``: the new base shifted by the adapter.

    Unnormalised log-probabilities (``logit_kd_loss`` normalises them). With a zero adapter the
    target is the new base itself, so a migration can never make the new base worse than the
    adapter made the old one. ``positions`` ``(B, K)``: only there (both models' heads must
    split off, :func:`~personal.model.head.scored_logits`); ``None``: every position.
    """
    shifted = _log_probs(teacher, inputs, positions)
    with lora_off(teacher):
        old = _log_probs(teacher, inputs, positions)
    with lora_off(student):
        new = _log_probs(student, inputs, positions)
    return mx.stop_gradient(new + shifted - old)


def residual_distill(
    teacher: nn.Module, student: nn.Module, batches: Sequence[Batch], optimizer: optim.Optimizer
) -> list[float]:
    """Train ``student``'s LoRA towards :func:`residual_target` on ``batches``' masked tokens.

    Where both models allow it, the targets and the student's logits are computed at the
    replies' (masked) positions only, and each model's frozen trunk once per distinct row
    (:class:`~personal.model.trunk.TrunkCache`: four forward passes a step share two trunks);
    the loss is the same KL over the same tokens.
    """

    def loss(
        model: nn.Module, inputs: mx.array, positions: mx.array | None, mask: mx.array,
        target: mx.array,
    ) -> mx.array:  # fmt: skip
        return logit_kd_loss(_logits(model, inputs, positions), target, mask, 1.0)

    loss_and_grad = nn.value_and_grad(student, loss)
    teacher.eval()
    student.eval()  # no dropout: the bare-base pass and the trained pass must agree
    split = output_head(teacher) is not None and output_head(student) is not None
    losses = []
    with contextlib.ExitStack() as stack:
        models = [teacher] if teacher is student else [teacher, student]
        for model in models:
            trunk = TrunkCache.for_model(model)
            if trunk is not None:
                stack.enter_context(trunk.attached())
        for batch in batches:
            scored = scored_positions(batch.mask) if split else None
            positions, mask = scored if scored is not None else (None, batch.mask)
            target = residual_target(teacher, student, batch.inputs, positions)
            mx.eval(target)
            value, grads = loss_and_grad(student, batch.inputs, positions, mask, target)
            optimizer.update(student, grads)
            mx.eval(value, student.parameters(), optimizer.state)
            losses.append(float(value.item()))
    return losses


def timed() -> Any:
    """A stopwatch: call the result to get the seconds since this call."""
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 3)
