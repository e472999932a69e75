"""Depth pruning: block influence, which blocks go, a loadable student, and recovery by logit
distillation that brings the student back towards its teacher."""

from __future__ import annotations

from personal.errors import ConfigError, ModelNotFound
from personal.model.base import load_base, save_base
from personal.model.batching import make_batch
from personal.model.prune import block_influence, blocks_to_drop, build_pruned_student, drop_blocks

import mlx.core as mx
import mlx_lm.models.llama as llama
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import build_tiny_model, tiny_config

VOCAB = 96


def _batches(seed: int, count: int = 3):
    rng = np.random.default_rng(seed)
    return [
        make_batch([rng.integers(5, VOCAB, 20).tolist() for _ in range(4)], [3] * 4)
        for _ in range(count)
    ]


def _kl(teacher, student, batches) -> float:
    """Mean KL(teacher || student) over the masked positions."""
    total, count = 0.0, 0.0
    for batch in batches:
        p = mx.softmax(teacher(batch.inputs).astype(mx.float32), axis=-1)
        log_q = student(batch.inputs).astype(mx.float32)
        log_q = log_q - mx.logsumexp(log_q, axis=-1, keepdims=True)
        kl = (p * (mx.log(mx.maximum(p, 1e-30)) - log_q)).sum(-1)  # (B, T)
        total += (kl * batch.mask).sum().item()
        count += batch.mask.sum().item()
    return total / count


def test_block_influence_is_one_minus_cosine_per_block() -> None:
    model, _ = build_tiny_model("llama", VOCAB, seed=4)
    influence = block_influence(model, _batches(0))
    assert len(influence) == len(model.model.layers)
    assert all(0.0 <= x <= 2.0 for x in influence)


@given(st.lists(st.floats(0, 1), min_size=3, max_size=30), st.data())
def test_blocks_to_drop_are_the_least_influential_inner_ones(influence, data) -> None:
    count = data.draw(st.integers(1, len(influence) - 2))
    dropped = blocks_to_drop(influence, count)
    assert len(dropped) == count == len(set(dropped)) and dropped == sorted(dropped)
    assert 0 not in dropped and len(influence) - 1 not in dropped
    kept = [i for i in range(1, len(influence) - 1) if i not in dropped]
    assert all(influence[d] <= influence[k] for d in dropped for k in kept)
    with pytest.raises(ConfigError):
        blocks_to_drop(influence, len(influence) - 1)


def test_drop_blocks_leaves_the_teacher_untouched() -> None:
    model, config = build_tiny_model("llama", VOCAB, seed=4)
    tokens = mx.array([[1, 7, 9, 30]])
    before = model(tokens)
    student, new_config = drop_blocks(model, config, [1])
    assert len(student.model.layers) == 1 and new_config["num_hidden_layers"] == 1
    assert len(model.model.layers) == 2
    assert mx.array_equal(model(tokens), before).item()
    with pytest.raises(ConfigError):
        drop_blocks(model, config, [5])


def test_build_pruned_student_recovers_and_loads(tmp_path, tiny_tokenizer_dir) -> None:
    """Four blocks, two dropped; recovery on the training text lowers the loss gap to the
    teacher there, and the directory loads as a base of its own (a new fingerprint)."""
    config = {**tiny_config("llama", 384), "num_hidden_layers": 4}
    mx.random.seed(4)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    for block in model.model.layers:  # random blocks barely turn the stream: make them count
        block.self_attn.o_proj.weight = 8 * block.self_attn.o_proj.weight
        block.mlp.down_proj.weight = 8 * block.mlp.down_proj.weight
    mx.eval(model.parameters())
    teacher = load_base(save_base(model, config, tiny_tokenizer_dir, tmp_path / "teacher"))
    train = _batches(1, 4)
    out, report = build_pruned_student(
        teacher, train, train, tmp_path / "student", drop=2, epochs=6, learning_rate=1e-3
    )
    student = load_base(out)
    assert len(student.model.model.layers) == 2 and report.dropped == sorted(report.dropped)
    assert student.fingerprint != teacher.fingerprint
    assert student.provenance["teacher_fingerprint"] == teacher.fingerprint
    pruned, _ = drop_blocks(teacher.model, config, report.dropped)
    assert _kl(teacher.model, student.model, train) < 0.8 * _kl(teacher.model, pruned, train)
    with pytest.raises(ConfigError, match="exists"):
        build_pruned_student(teacher, train, train, out, drop=1)


def test_an_unbuilt_v2_says_how_to_build_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PERSONAL_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelNotFound, match="make real-v2"):
        load_base("smollm2-135m-instruct-v2")
