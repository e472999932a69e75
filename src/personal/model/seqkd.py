"""Sequence-level distillation (Kim & Rush 2016): the student learns the teacher's replies as text.

Only text passes from teacher to student, so this works when the tokenizers (or vocabularies)
differ, where token-level distillation (:func:`personal.model.distill.distill`) cannot. Used by
adapter migration when a new base brings a new tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from personal.errors import ConfigError
from personal.model.batching import Batch, make_batch
from personal.model.fit import train
from personal.model.generate import generate, greedy_replies
from personal.model.tokenizer import PAD_ID, encode_interaction

import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np


@dataclass(frozen=True)
class SequenceDistillResult:
    """What :func:`sequence_level_distill` did.

    Attributes:
        pairs: ``(prompt, teacher reply)`` texts the student was trained on.
        losses: the student's masked cross-entropy on the replies, per step.
    """

    pairs: list[tuple[str, str]]
    losses: list[float]


def teacher_generations(
    teacher: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """The teacher's reply to every prompt, as text (so any student tokenizer can read it).

    Args:
        teacher: an mlx-lm model (e.g. an old base with its adapter active).
        tokenizer: the teacher's tokenizer.
        prompts: user prompts (wrapped in the teacher's chat template).
        max_tokens: longest reply; longer ones are cut (and then taught as if complete).
        temperature: 0 takes the teacher's greedy reply, an approximation of its mode
            (:func:`~personal.model.generate.greedy_replies`, batched: ~10x faster).
        seed: prompt ``i`` samples with ``seed + i``, so results do not depend on order.
    """
    teacher.eval()
    if temperature == 0:  # greedy: many prompts at a time (mlx-lm's BatchGenerator)
        replies = greedy_replies(teacher, tokenizer, prompts, max_tokens=max_tokens)
        return [(prompt, text) for prompt, (text, _) in zip(prompts, replies, strict=True)]
    pairs = []
    for i, prompt in enumerate(prompts):
        reply = generate(
            teacher,
            tokenizer,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed + i,
        )
        pairs.append((prompt, reply.text))
    return pairs


def sequence_level_batches(
    pairs: Sequence[tuple[str, str]],
    tokenizer: Any,
    *,
    batch_size: int = 8,
    epochs: int = 1,
    seed: int = 0,
    max_length: int | None = None,
) -> list[Batch]:
    """Tokenize ``(prompt, reply)`` pairs with the *student's* tokenizer into reply-only batches.

    Every epoch visits each pair once in a fresh seeded order; the loss mask covers the reply
    and the closing end-of-sequence token.
    """
    if batch_size < 1 or epochs < 1:
        raise ConfigError(f"batch_size and epochs must be >= 1, got {batch_size}, {epochs}.")
    encoded = [encode_interaction(tokenizer, prompt, reply) for prompt, reply in pairs]
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(epochs):
        order = rng.permutation(len(encoded))
        for start in range(0, len(order), batch_size):
            chunk = [encoded[i] for i in order[start : start + batch_size]]
            ids, starts = [c[0] for c in chunk], [c[1] for c in chunk]
            batches.append(make_batch(ids, starts, pad_id=PAD_ID, max_length=max_length))
    return batches


def sequence_level_distill(
    teacher: nn.Module,
    teacher_tokenizer: Any,
    student: nn.Module,
    student_tokenizer: Any,
    prompts: Sequence[str],
    optimizer: optim.Optimizer,
    *,
    epochs: int = 1,
    batch_size: int = 8,
    max_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    max_length: int | None = None,
    callback: Callable[[int, float], None] | None = None,
    compile: bool = False,
) -> SequenceDistillResult:
    """Train the student on the teacher's replies (works across tokenizers and sizes).

    The teacher generates a reply to each prompt; the text is re-tokenized with the student's
    tokenizer and the student trains its trainable parameters with cross-entropy on the reply
    tokens. The teacher's replies are post-processing of the teacher: when the teacher is a DP
    adapter and the prompts are public, this spends no privacy budget.

    Args:
        teacher: the teacher model; ``teacher_tokenizer`` its tokenizer.
        student: the student model; ``student_tokenizer`` its tokenizer (in the product's chat
            format, see :func:`~personal.model.tokenizer.encode_interaction`).
        prompts: the prompts to distil on (public or synthetic).
        optimizer: an ``mlx.optimizers`` optimiser for the student.
        epochs: passes over the generated pairs.
        batch_size: pairs per step.
        max_tokens: longest teacher reply.
        temperature: teacher sampling temperature (0: greedy).
        seed: seeds sampling and the batch order.
        max_length: truncate student sequences to this many tokens.
        callback: ``callback(step, loss)`` after each step.
        compile: compile the training step.
    """
    pairs = teacher_generations(
        teacher,
        teacher_tokenizer,
        prompts,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
    )
    batches = sequence_level_batches(
        pairs,
        student_tokenizer,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        max_length=max_length,
    )
    losses = train(student, batches, optimizer, callback=callback, compile=compile)
    return SequenceDistillResult(pairs, losses)
