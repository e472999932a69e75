"""Distillation losses, config and the token-level training loop, on tiny inline models."""

from __future__ import annotations

import math

from personal.errors import ConfigError, TokenizerMismatch
from personal.model.batching import make_batch
from personal.model.distill import (
    DistillConfig,
    attention_transfer_loss,
    distill,
    even_layer_map,
    feature_matching_loss,
    logit_kd_loss,
    make_projections,
)
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama

VOCAB = 128


def make_llama(hidden: int, layers: int, heads: int, kv_heads: int, *, seed: int) -> nn.Module:
    mx.random.seed(seed)
    args = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
    }
    model = llama.Model(llama.ModelArgs.from_dict(args))
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    """A 4-block, width-64 teacher made confident (a random init is nearly uniform)."""
    model = make_llama(64, 4, 4, 2, seed=1)
    model.lm_head.weight = model.lm_head.weight * 8
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module")
def batches() -> list:
    rng = np.random.default_rng(0)
    return [make_batch(rng.integers(5, VOCAB, (8, 17)).tolist()) for _ in range(4)]


def flat(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(module.parameters())}


def rand(*shape: int, seed: int = 0) -> mx.array:
    return mx.random.normal(shape, key=mx.random.key(seed))


# --- logit KD ---------------------------------------------------------------------------------


def test_logit_kd_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    t, s, mask = rand(2, 5, 11, seed=1), rand(2, 5, 11, seed=2), mx.ones((2, 5))
    assert logit_kd_loss(t, t, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # A constant shift of the logits is the same distribution.
    assert logit_kd_loss(t + 3.0, t, mask, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert logit_kd_loss(s, t, mask, 2.0).item() > 0.1


def test_logit_kd_gradient_is_the_closed_form_and_descends() -> None:
    t, s = rand(2, 4, 7, seed=1), rand(2, 4, 7, seed=2)
    mask = mx.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=mx.float32)
    T = 3.0
    grad = mx.grad(lambda x: logit_kd_loss(x, t, mask, T))(s)
    # d/ds T²·KL = T·(softmax(s/T) − softmax(t/T)) per counted token, / number of tokens.
    want = T * (mx.softmax(s / T, axis=-1) - mx.softmax(t / T, axis=-1))
    want = want * mask[..., None] / mask.sum()
    np.testing.assert_allclose(np.array(grad), np.array(want), atol=1e-6)
    before = logit_kd_loss(s, t, mask, T).item()
    assert logit_kd_loss(s - 0.5 * grad / mx.abs(grad).max(), t, mask, T).item() < before


def test_logit_kd_temperature_scaling() -> None:
    t, s, mask = rand(3, 6, 9, seed=3), rand(3, 6, 9, seed=4), mx.ones((3, 6))
    # T² · KL at temperature T is T² times the plain KL of the logits divided by T.
    plain = logit_kd_loss(s / 4.0, t / 4.0, mask, 1.0).item()
    assert logit_kd_loss(s, t, mask, 4.0).item() == pytest.approx(16 * plain, rel=1e-4)
    # High-temperature limit (Hinton et al.): T²·KL -> mean over tokens of the variance of
    # (s - t) across the vocabulary, halved: matching logits up to a constant.
    diff = np.array(s - t)
    limit = (diff.var(axis=-1) / 2).mean()
    assert logit_kd_loss(s, t, mask, 200.0).item() == pytest.approx(limit, rel=0.02)


def test_vocabulary_mismatch_is_a_tokenizer_error() -> None:
    with pytest.raises(TokenizerMismatch, match="sequence_level_distill"):
        logit_kd_loss(rand(1, 2, 5), rand(1, 2, 6), mx.ones((1, 2)))


def test_losses_ignore_masked_positions() -> None:
    mask = mx.array([[1, 1, 0, 0]], dtype=mx.float32)
    noise = mx.concatenate([mx.zeros((1, 2, 8)), rand(1, 2, 8, seed=9)], axis=1)
    t, s = rand(1, 4, 8, seed=1), rand(1, 4, 8, seed=2)
    assert logit_kd_loss(s + noise, t, mask).item() == pytest.approx(
        logit_kd_loss(s, t, mask).item()
    )
    assert feature_matching_loss(s + noise, t, mask).item() == pytest.approx(
        feature_matching_loss(s, t, mask).item()
    )
    attn_t = mx.softmax(rand(1, 2, 4, 4, seed=3), axis=-1)
    attn_s = mx.softmax(rand(1, 2, 4, 4, seed=4), axis=-1)
    other = mx.concatenate([attn_s[:, :, :2], attn_t[:, :, 2:]], axis=2)
    assert attention_transfer_loss(other, attn_t, mask).item() == pytest.approx(
        attention_transfer_loss(attn_s, attn_t, mask).item()
    )
    # An empty mask is a zero loss, never NaN.
    assert logit_kd_loss(s, t, mx.zeros((1, 4))).item() == 0.0


# --- features and attention ----------------------------------------------------------------


def test_feature_matching_with_and_without_projection() -> None:
    mask = mx.ones((2, 5))
    teacher_h, student_h = rand(2, 5, 16, seed=1), rand(2, 5, 8, seed=2)
    assert feature_matching_loss(teacher_h, teacher_h, mask).item() == 0.0
    assert feature_matching_loss(teacher_h * 1.5, teacher_h, mask).item() > 0.1
    # Normalised matching compares directions only.
    assert feature_matching_loss(teacher_h * 3, teacher_h, mask, normalize=True).item() < 1e-6
    with pytest.raises(ConfigError, match="projection"):
        feature_matching_loss(student_h, teacher_h, mask)
    projection = nn.Linear(8, 16)
    loss_and_grad = nn.value_and_grad(
        projection, lambda: feature_matching_loss(student_h, teacher_h, mask, projection)
    )
    losses = []
    opt = optim.Adam(learning_rate=0.05)
    for _ in range(30):
        value, grads = loss_and_grad()
        opt.update(projection, grads)
        mx.eval(projection.parameters(), opt.state)
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0]


def test_attention_transfer_zero_when_equal_and_handles_head_counts() -> None:
    causal = mx.tril(mx.ones((6, 6))) > 0
    teacher_attn = mx.softmax(mx.where(causal, rand(2, 4, 6, 6, seed=1), -mx.inf), axis=-1)
    student_attn = mx.softmax(mx.where(causal, rand(2, 4, 6, 6, seed=2), -mx.inf), axis=-1)
    mask = mx.ones((2, 6))
    assert attention_transfer_loss(teacher_attn, teacher_attn, mask).item() == pytest.approx(0.0)
    assert attention_transfer_loss(student_attn, teacher_attn, mask).item() > 0.05
    # Two student heads against four teacher heads: head-averaged maps are compared.
    two_heads = teacher_attn.reshape(2, 2, 2, 6, 6).mean(axis=2)
    assert attention_transfer_loss(two_heads, teacher_attn, mask).item() == pytest.approx(
        0.0, abs=1e-6
    )

    # Exact zeros above the diagonal give finite gradients, and a step against the gradient of
    # the student's scores moves its attention toward the teacher's.
    def loss(scores: mx.array) -> mx.array:
        probs = mx.softmax(mx.where(causal, scores, -mx.inf), axis=-1)
        return attention_transfer_loss(probs, teacher_attn, mask)

    scores = rand(2, 4, 6, 6, seed=2)
    value, grad = mx.value_and_grad(loss)(scores)
    assert bool(mx.all(mx.isfinite(grad)).item())
    assert loss(scores - 5.0 * grad).item() < value.item()


# --- config ------------------------------------------------------------------------------------


def test_even_layer_map() -> None:
    assert even_layer_map(2, 6) == ((0, 2), (1, 5))
    assert even_layer_map(3, 3) == ((0, 0), (1, 1), (2, 2))
    assert even_layer_map(4, 2) == ((0, 0), (1, 0), (2, 1), (3, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0.0},
        {"temperature": math.inf},
        {"kd_weight": 0.0},
        {"kd_weight": -1.0},
        {"projection": "sometimes"},
        {"max_grad_norm": 0.0},
        {"feature_layers": ()},
        {"feature_layers": ((0, -1),)},
        {"attention_layers": ((0,),)},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        DistillConfig(**kwargs)


def test_config_layer_maps_are_checked_against_the_models(teacher: nn.Module) -> None:
    student = make_llama(32, 2, 2, 1, seed=0)
    config = DistillConfig(feature_weight=1.0, attention_weight=1.0, attention_layers=[[1, 3]])
    assert config.attention_layers == ((1, 3),)
    assert config.layer_maps(student, teacher) == (((0, 1), (1, 3)), ((1, 3),))
    # Terms that are off get no pairs; logits alone need no block structure at all.
    assert DistillConfig(feature_weight=1.0).layer_maps(student, teacher)[1] == ()
    assert DistillConfig().layer_maps(student, object()) == ((), ())
    with pytest.raises(ConfigError, match="out of range"):
        DistillConfig(feature_weight=1.0, feature_layers=((2, 0),)).layer_maps(student, teacher)


# --- the loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "config"),
    [
        ("kd", DistillConfig(temperature=2.0)),
        ("feature", DistillConfig(kd_weight=0.0, feature_weight=1.0)),
        ("attention", DistillConfig(kd_weight=0.0, attention_weight=1.0)),
    ],
)
def test_student_distillation_loss_falls(
    teacher: nn.Module, batches: list, component: str, config: DistillConfig
) -> None:
    # Narrower (32 vs 64), shallower (2 vs 4 blocks) and with fewer heads (2 vs 4).
    student = make_llama(32, 2, 2, 1, seed=0)
    teacher_before = flat(teacher)
    records = distill(teacher, student, batches * 8, optim.Adam(learning_rate=1e-2), config)
    assert len(records) == 32
    values = [r[component] for r in records]
    assert np.mean(values[-4:]) < 0.7 * np.mean(values[:4])
    others = {"kd", "feature", "attention"} - {component}
    assert all(r[name] == 0.0 for r in records for name in others)
    assert all(r["loss"] == pytest.approx(r[component]) for r in records)
    assert all(np.array_equal(v, teacher_before[k]) for k, v in flat(teacher).items())


@pytest.mark.parametrize(
    "config",
    [
        DistillConfig(ce_weight=0.5),
        DistillConfig(ce_weight=0.5, feature_weight=1.0, attention_weight=1.0),
    ],
    ids=["logits", "all-terms"],
)
@pytest.mark.slow  # MLX's CPU backend JIT-compiles C++ kernels: 30-70 s on a cold cache
def test_compiled_step_matches_eager(
    teacher: nn.Module, batches: list, config: DistillConfig
) -> None:
    runs = []
    for compile in (False, True):
        student = make_llama(32, 2, 2, 1, seed=0)
        opt = optim.Adam(learning_rate=1e-2)
        runs.append(distill(teacher, student, batches[:3], opt, config, compile=compile))
    for eager, compiled in zip(*runs, strict=True):
        for key in ("loss", "kd", "ce", "feature", "attention"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-6)


def test_lora_only_student_changes_only_lora_and_projections(
    teacher: nn.Module, batches: list
) -> None:
    student = make_llama(64, 2, 4, 2, seed=2)
    inject_lora(student, LoRAConfig(rank=4, scale=4.0), seed=0)
    config = DistillConfig(
        ce_weight=0.1, feature_weight=1.0, projection="always", attention_weight=1.0
    )
    projections = make_projections(student, teacher, config, seed=0)
    assert len(projections.layers) == 2  # square, identity-initialised
    np.testing.assert_array_equal(np.array(projections.layers[0].weight), np.eye(64))
    base_before = {k: v for k, v in flat(student).items() if "lora" not in k}
    proj_before = flat(projections)
    records = distill(
        teacher,
        student,
        batches * 3,
        optim.Adam(learning_rate=1e-2),
        config,
        projections=projections,
    )
    after = flat(student)
    assert all(np.array_equal(after[k], v) for k, v in base_before.items())
    assert all(
        np.abs(np.array(v)).max() > 0
        for k, v in get_adapter_weights(student).items()
        if k.endswith("lora_b")
    )
    assert any(not np.array_equal(v, proj_before[k]) for k, v in flat(projections).items())
    assert records[-1]["kd"] < records[0]["kd"]


def test_projections_must_fit_the_config(teacher: nn.Module, batches: list) -> None:
    student = make_llama(32, 2, 2, 1, seed=0)
    projections = make_projections(student, teacher, DistillConfig())
    with pytest.raises(ConfigError, match="another config"):
        distill(
            teacher,
            student,
            batches[:1],
            optim.SGD(learning_rate=0.1),
            DistillConfig(feature_weight=1.0),
            projections=projections,
        )
