"""Carry a user's personalization to a new base model without spending privacy budget.

When an OS update ships a new base, the active adapter belongs to the old base's fingerprint
and must never be loaded onto the new one. :func:`distill_migration` teaches a *fresh* LoRA on
the new base to behave like the old base with its adapter:

* **prompts** are public: the public corpus, never a private record;
* **targets** are text the teacher (old base + active DP adapter) generates for them, so the
  new adapter is post-processing of a DP artifact: the migration charges nothing, and the
  ledger records it with zero charge and the reason;
* training is sequence-level distillation (Kim & Rush 2016), which only exchanges text: it works
  when the new base has another tokenizer or size. When both bases share a tokenizer, the
  student additionally matches the teacher's token distributions (logit KD, Hinton et al. 2015)
  on the same generated text, which carries more of the teacher's knowledge per example.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from personal.model.base import BaseModel
from personal.model.distill import DistillConfig, distill
from personal.model.seqkd import sequence_level_batches, teacher_generations
from personal.model.train import train

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
        token_level: whether logit distillation was added (same tokenizer on both bases).
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


def public_prompts(count: int, seed: int = 31) -> list[str]:
    """``count`` public-corpus prompts (a seed stream of their own)."""
    from simulators.public_corpus import split

    return [it.prompt for it in split(seed, count, 0, 0).train]


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
        config = DistillConfig(temperature=1.0, kd_weight=1.0, ce_weight=1.0, feature_weight=0.0)
        records = distill(teacher.model, student.model, batches, optimizer, config)
        return len(records), [r["loss"] for r in records], True
    losses = train(student.model, batches, optimizer)
    return len(losses), [float(v) for v in losses], False


def timed() -> Any:
    """A stopwatch: call the result to get the seconds since this call."""
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 3)
