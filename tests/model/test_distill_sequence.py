"""Sequence-level distillation: a student with another tokenizer learns the teacher's replies."""

from __future__ import annotations

from personal.errors import ConfigError
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.fit import train
from personal.model.generate import generate
from personal.model.seqkd import (
    sequence_level_batches,
    sequence_level_distill,
    teacher_generations,
)
from personal.model.tokenizer import encode_interaction, train_bpe_tokenizer

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx_lm.models import qwen3
from mlx_lm.utils import load_tokenizer
from tiny_models import tiny_config

# What the teacher is taught to answer (so its replies are real text, not random bytes).
TEACHER_DATA = {
    "Remind Anna about the dentist.": "Sure, I will remind Anna at 9.",
    "Text the team about the flight.": "Texting the team now.",
    "What's the weather in Zürich?": "Sunny in Zürich tomorrow.",
    "Play some jazz.": "Playing Nina Simone.",
}
PROMPTS = list(TEACHER_DATA)
# Other words than the teacher's tokenizer saw, so the two vocabularies split text differently.
_STUDENT_TEXTS = [
    f"{a} {b} {c}."
    for a in ("Please", "Could you", "Kindly", "Now")
    for b in ("water", "open", "close", "check", "order", "book")
    for c in ("the plants", "the window", "my calendar", "a taxi", "dinner", "tickets")
]


@pytest.fixture(scope="module")
def student_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    out = train_bpe_tokenizer(_STUDENT_TEXTS, 300, tmp_path_factory.mktemp("student-tok"))
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def teacher(tiny_model_factory):
    base = load_base(tiny_model_factory("llama", seed=3))
    encoded = [encode_interaction(base.tokenizer, p, r) for p, r in TEACHER_DATA.items()]
    batch = make_batch([ids for ids, _ in encoded], [start for _, start in encoded])
    train(base.model, [batch] * 80, optim.Adam(learning_rate=3e-3), compile=False)
    return base


def make_student(vocab: int):
    config = {
        **tiny_config("qwen3", vocab),
        "hidden_size": 48,
        "num_attention_heads": 3,
        "num_key_value_heads": 1,
    }
    mx.random.seed(7)
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    return model


def test_teacher_generations_are_text_and_reproducible(teacher) -> None:
    first = teacher_generations(teacher.model, teacher.tokenizer, PROMPTS[:2], max_tokens=6)
    again = teacher_generations(teacher.model, teacher.tokenizer, PROMPTS[:2], max_tokens=6)
    assert first == again
    assert [p for p, _ in first] == PROMPTS[:2]
    assert all(isinstance(reply, str) for _, reply in first)
    # greedy prompts run as one batch: the replies one prompt at a time gives
    one_by_one = [
        generate(teacher.model, teacher.tokenizer, p, max_tokens=6).text for p in PROMPTS[:2]
    ]
    assert [reply for _, reply in first] == one_by_one


def test_batches_mask_the_reply_in_student_tokens(student_tokenizer) -> None:
    pairs = [("Open the window.", "Done, window open."), ("Book a taxi.", "Taxi booked.")]
    batches = sequence_level_batches(pairs, student_tokenizer, batch_size=2, epochs=3, seed=1)
    assert len(batches) == 3
    # Reply tokens plus <|eos|> count; prompt tokens never do.
    counted = sum(
        len(ids) - start
        for ids, start in (encode_interaction(student_tokenizer, p, r) for p, r in pairs)
    )
    assert all(b.num_tokens == counted for b in batches)
    with pytest.raises(ConfigError):
        sequence_level_batches(pairs, student_tokenizer, batch_size=0)


def test_student_with_another_tokenizer_learns_teacher_replies(teacher, student_tokenizer) -> None:
    assert len(student_tokenizer.vocab) != teacher.vocab_size
    student = make_student(300)
    result = sequence_level_distill(
        teacher.model,
        teacher.tokenizer,
        student,
        student_tokenizer,
        PROMPTS,
        optim.Adam(learning_rate=3e-3),
        epochs=40,
        batch_size=4,
        max_tokens=32,
    )
    assert len(result.pairs) == 4 and len(result.losses) == 40
    # The same text is a different token sequence for the two tokenizers.
    prompt, reply = result.pairs[0]
    assert reply == TEACHER_DATA[prompt]
    student_ids = encode_interaction(student_tokenizer, prompt, reply)[0]
    assert student_ids != encode_interaction(teacher.tokenizer, prompt, reply)[0]
    assert np.mean(result.losses[-3:]) < 0.2 * np.mean(result.losses[:3])
    # Greedy decoding with the student's own tokenizer gives the teacher's text back.
    copied = generate(student, student_tokenizer, PROMPTS[0], max_tokens=30)
    assert copied.text == reply
    assert copied.finish_reason == "stop"
