"""Generation with confidence, and the evaluation helpers."""

from __future__ import annotations

import math

from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.distill import logit_kd_loss
from personal.model.evaluate import evaluate, per_example_loss, scored_mean_loss, token_losses
from personal.model.fit import masked_ce_loss, train
from personal.model.generate import generate
from personal.model.head import output_head
from personal.model.lora import lora_off
from personal.model.tokenizer import encode_interaction
from personal.training.continual import distill_to_base_loss

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten
from tiny_models import tiny_lora_model


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


def _full_reference(model, batch) -> tuple[float, float, list[float]]:
    """Loss, accuracy and per-example loss from every position's logits (the definition)."""
    logits = model(batch.inputs).astype(mx.float32)
    losses = nn.losses.cross_entropy(logits, batch.targets, reduction="none") * batch.mask
    correct = (mx.argmax(logits, axis=-1) == batch.targets).astype(mx.float32) * batch.mask
    tokens = batch.mask.sum()
    rows = losses.sum(axis=1) / mx.maximum(batch.mask.sum(axis=1), 1.0)
    return (losses.sum() / tokens).item(), (correct.sum() / tokens).item(), rows.tolist()


@pytest.mark.parametrize(
    ("arch", "quantize", "tied"),
    [("llama", False, False), ("llama", True, True), ("qwen3", False, False),
     ("mixtral", True, False), ("gemma3", False, False)],
)  # fmt: skip
def test_scored_only_evaluation_equals_every_position_logits(arch, quantize, tied):
    """evaluate() and per_example_loss() project to the vocabulary at scored positions only
    (when the head splits off): the same loss, accuracy and per-row losses as full logits,
    with rows of different lengths, starts and one row with nothing scored."""
    model = tiny_lora_model(arch, 96, quantize=quantize, tied=tied, seed=3)
    model.eval()
    assert output_head(model) is not None  # the scored path is the one under test
    rows = [[1, 5, 9, 20, 21, 22, 23, 2], [1, 7, 30, 31, 2], [1, 4, 4, 4, 4, 4, 2], [1, 8, 2]]
    batch = make_batch(rows, [3, 2, 6, 3])  # the last row scores nothing
    loss, accuracy, per_row = _full_reference(model, batch)
    result = evaluate(model, [batch])
    assert result.loss == pytest.approx(loss, rel=1e-5)
    assert result.accuracy == pytest.approx(accuracy, abs=1e-6)
    ours = per_example_loss(model, batch).tolist()
    assert ours == pytest.approx(per_row, rel=1e-5, abs=1e-6)
    assert ours[-1] == 0.0


@pytest.mark.parametrize(("arch", "quantize"), [("llama", False), ("mixtral", True)])
def test_scored_losses_and_their_gradients_equal_the_full_width_ones(arch, quantize):
    """scored_mean_loss (public replay, the population's loss) and distill_to_base_loss (the
    pull to the base) at scored positions only: values and LoRA gradients as with every
    position's logits."""

    def full_distill(model, batch):
        with lora_off(model):
            base_logits = mx.stop_gradient(model(batch.inputs))
        return logit_kd_loss(model(batch.inputs), base_logits, batch.mask)

    model = tiny_lora_model(arch, 96, quantize=quantize, seed=5)
    model.eval()
    batch = make_batch([[1, 5, 9, 20, 21, 22, 2], [1, 7, 30, 31, 2], [1, 4, 8, 2]], [3, 2, 2])
    for ours, reference in (
        (scored_mean_loss, masked_ce_loss),
        (distill_to_base_loss, full_distill),
    ):
        value, grads = nn.value_and_grad(model, ours)(model, batch)
        want, want_grads = nn.value_and_grad(model, reference)(model, batch)
        assert value.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
        got, expected = dict(tree_flatten(grads)), dict(tree_flatten(want_grads))
        for name, g in got.items():
            assert mx.allclose(g, expected[name], rtol=1e-4, atol=1e-6).item(), name
