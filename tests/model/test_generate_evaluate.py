"""Generation with confidence, and the evaluation helpers."""

from __future__ import annotations

import math

from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.evaluate import evaluate, per_example_loss, token_losses
from personal.model.fit import train
from personal.model.generate import generate
from personal.model.tokenizer import encode_interaction

import mlx.core as mx
import mlx.optimizers as optim
import pytest


def test_generation_reports_confidence(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    out = generate(base.model, base.tokenizer, "Call Anna", max_tokens=8)
    assert out.finish_reason in ("stop", "length")
    assert len(out.tokens) <= 8
    assert -math.inf < out.mean_logprob <= 0 and 0 < out.confidence <= 1
    assert 0 <= out.mean_entropy <= math.log(384) + 1e-4
    # Greedy decoding is deterministic.
    assert generate(base.model, base.tokenizer, "Call Anna", max_tokens=8) == out


def test_sampling_is_seeded(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    runs = [
        generate(base.model, base.tokenizer, "Hi", max_tokens=6, temperature=1.0, seed=s)
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1]


def test_trained_model_is_confident_and_says_it(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    # Full fine-tuning memorises one reply within 60 steps. Adam at 1e-2 spiked back up near
    # step 60 on some CPUs (float32 rounding differs by BLAS kernel); 3e-3 converges smoothly.
    base.model.unfreeze()
    ids, start = encode_interaction(base.tokenizer, "Call mum", "Calling mum now.")
    batch = make_batch([ids], [start])
    untrained = generate(base.model, base.tokenizer, "Call mum", max_tokens=12)
    train(base.model, [batch] * 60, optim.Adam(learning_rate=3e-3))
    trained = generate(base.model, base.tokenizer, "Call mum", max_tokens=12)
    assert trained.text == "Calling mum now."
    assert trained.finish_reason == "stop"
    assert trained.confidence > 0.9 > untrained.confidence


def test_batch_masks_prompt_and_padding():
    batch = make_batch([[1, 2, 3, 4, 5], [1, 2, 3]], [3, 1], pad_multiple=8)
    assert batch.inputs.shape == (2, 8)
    assert batch.mask.tolist()[0] == [0, 0, 1, 1, 0, 0, 0, 0]
    assert batch.mask.tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert batch.targets.tolist()[0][:4] == [2, 3, 4, 5]
    with pytest.raises(ValueError):
        make_batch([[1]])


def test_evaluate_matches_manual_cross_entropy(tiny_model_factory):
    base = load_base(tiny_model_factory("qwen3"))
    batch = make_batch([[1, 3, 40, 41, 42, 4, 50], [1, 3, 60, 4, 70, 71]], [5, 4])
    result = evaluate(base.model, [batch])
    losses = token_losses(base.model, batch)
    manual = (losses.sum() / batch.mask.sum()).item()
    assert result.tokens == 4 and result.examples == 2
    assert result.loss == pytest.approx(manual, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(manual), rel=1e-5)
    assert 0.0 <= result.accuracy <= 1.0
    per_example = per_example_loss(base.model, batch)
    assert per_example.shape == (2,)
    mx.eval(per_example)
    # A random model over 384 tokens is near-uniform: loss close to log(384).
    assert abs(result.loss - math.log(384)) < 1.0


def test_evaluate_rejects_empty():
    with pytest.raises(ValueError):
        evaluate(None, [])
