"""DP-SGD engine: per-example gradients, per-unit clipping, padding, normalisation,
noise-free equivalence with the plain gradient, learning under noise, and LoRA-only updates."""

from __future__ import annotations

import math
import warnings

from personal.errors import ConfigError, SeededNoiseWarning
from personal.model.batching import Batch
from personal.model.fastmath import cross_entropy
from personal.model.fit import masked_ce_loss
from personal.model.lora import LoRAConfig, inject_lora
from personal.privacy.dpsgd import (
    CLIP_SAFETY,
    DPConfig,
    clipped_unit_sum,
    example_ce_loss,
    make_dp_step,
    per_example_grads,
)
from personal.privacy.noise import GaussianNoise
from personal.privacy.sampler import UnitBatch, pack_token_units

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from tiny_models import build_tiny_model, perturb_lora_b

VOCAB = 96
WIDTH = 16
RNG = np.random.default_rng(0)
SEQS = [RNG.integers(1, VOCAB, n).tolist() for n in (17, 9, 12, 17, 5)]


def _model(seed: int = 0) -> nn.Module:
    model, _ = build_tiny_model("llama", VOCAB, seed=seed)
    inject_lora(model, LoRAConfig(rank=4), seed=seed)
    return perturb_lora_b(model)


def _noise(seed: int = 0) -> GaussianNoise:
    with pytest.warns(SeededNoiseWarning):
        return GaussianNoise(seed=seed)


def _row_grads(model: nn.Module, batch: UnitBatch, row: int) -> dict[str, np.ndarray]:
    """The gradient of one row, computed alone with nn.value_and_grad (a batch of one)."""
    fn = nn.value_and_grad(model, lambda *r: example_ce_loss(model, *(a[None] for a in r)).sum())
    _, grads = fn(*(a[row] for a in batch.arrays))
    return {k: np.array(v) for k, v in tree_flatten(grads)}


def _flat(tree: dict) -> np.ndarray:
    return np.concatenate([np.array(v).reshape(-1) for _, v in sorted(tree.items())])


def _units_batch(groups: list[list[int]], expected: float = 3.0, **kw: int) -> UnitBatch:
    return pack_token_units([[SEQS[i] for i in g] for g in groups], expected, width=WIDTH, **kw)


def test_per_example_grads_equal_one_at_a_time() -> None:
    model = _model()
    batch = _units_batch([[0], [1], [2], [3]], minimum=4)
    losses, grads = per_example_grads(model, example_ce_loss, batch.arrays)
    for row in range(4):
        alone = _row_grads(model, batch, row)
        assert set(alone) == set(grads)
        for name, value in alone.items():
            scale = float(np.abs(value).max())  # float32 cancellation: tolerance per tensor
            np.testing.assert_allclose(
                np.array(grads[name][row]), value, rtol=1e-4, atol=1e-5 * scale
            )
    assert np.all(np.isfinite(np.array(losses)))


def test_units_are_summed_then_clipped_as_one() -> None:
    model = _model()
    groups = [[0], [1, 2], [3, 4]]
    batch = _units_batch(groups)
    rows = [_flat(_row_grads(model, batch, r)) for r in range(5)]
    units = [sum(rows[r] for r in g) for g in groups]
    norms = [float(np.linalg.norm(u)) for u in units]
    clip = sorted(norms)[1]  # the largest unit is clipped, the smallest is not
    expected = sum(u * min(1.0, clip * CLIP_SAFETY / n) for u, n in zip(units, norms, strict=True))
    sums, got_norms, unit_rows, _ = clipped_unit_sum(
        model, example_ce_loss, batch.arrays, batch.units, batch.valid, clip
    )
    tol = 1e-5 * float(np.abs(expected).max())  # float32 sums in another order
    np.testing.assert_allclose(_flat(sums), expected, rtol=1e-4, atol=tol)
    np.testing.assert_allclose(np.array(got_norms)[:3], norms, rtol=1e-4)
    assert np.array(unit_rows).tolist()[:4] == [1, 2, 2, 0]
    # Clipping the examples separately would give a different (wrong) answer.
    per_example = sum(r * min(1.0, clip / np.linalg.norm(r)) for r in rows)
    assert not np.allclose(per_example, expected, rtol=1e-3)


def test_each_unit_contribution_has_norm_at_most_c() -> None:
    model = _model()
    batch = _units_batch([[0], [1, 2], [3, 4]])
    clip = 1e-3  # far below every unit's norm: all are clipped
    for unit in range(3):
        only = batch.valid * (batch.units == unit).astype(mx.float32)
        sums, norms, _, _ = clipped_unit_sum(
            model, example_ce_loss, batch.arrays, batch.units, only, clip
        )
        assert float(np.array(norms)[unit]) > clip
        assert np.linalg.norm(_flat(sums)) <= clip * (1 + 1e-6)


def test_padded_and_invalid_rows_contribute_exactly_zero() -> None:
    model = _model()
    small = _units_batch([[0], [1, 2]], minimum=4)
    padded = _units_batch([[0], [1, 2]], minimum=16)
    _, grads = per_example_grads(model, example_ce_loss, padded.arrays)
    for value in grads.values():
        assert not np.any(np.array(value[3:]))  # mask-0 rows: gradient exactly zero
    args = (model, example_ce_loss)
    a, _, _, _ = clipped_unit_sum(*args, small.arrays, small.units, small.valid, 0.5)
    b, _, _, _ = clipped_unit_sum(*args, padded.arrays, padded.units, padded.valid, 0.5)
    # Equal up to float32 rounding: the BLAS kernels sum 4 and 16 rows in different orders (up
    # to ~1e-7 apart on some CPUs), far below the size of one row's gradient entries.
    np.testing.assert_allclose(_flat(a), _flat(b), rtol=1e-5, atol=1e-6)
    # A real-looking row (mask 1) marked invalid is excluded by its weight, not by its mask.
    full = _units_batch([[0], [1, 2], [3]], minimum=4)
    dropped = full.valid * mx.array([1.0, 1.0, 1.0, 0.0])
    c, _, rows, _ = clipped_unit_sum(*args, full.arrays, full.units, dropped, 0.5)
    np.testing.assert_allclose(_flat(c), _flat(a), rtol=1e-6, atol=1e-9)
    assert np.array(rows).tolist()[:3] == [1, 2, 0]


def test_nan_on_padding_and_nonfinite_units_cannot_poison_the_sum() -> None:
    model = _model()
    base = _units_batch([[0], [1, 2], [3]], minimum=8)  # rows 4..7 are padding

    def naive_loss(m: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
        logits = m(inputs).astype(mx.float32)
        losses = cross_entropy(logits, targets)  # the same loss as example_ce_loss's
        return (losses * mask).sum(axis=-1) / mask.sum(axis=-1)  # NaN on all-zero masks

    args = (base.arrays, base.units, base.valid, 0.5)
    good, _, _, _ = clipped_unit_sum(model, example_ce_loss, *args)
    naive, _, _, _ = clipped_unit_sum(model, naive_loss, *args)
    np.testing.assert_allclose(_flat(naive), _flat(good), rtol=1e-5, atol=1e-8)

    # Unit 1 (rows 1 and 2) has an infinite gradient: it is dropped, the others stay.
    flag = mx.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])

    def exploding(m: nn.Module, i: mx.array, t: mx.array, k: mx.array, f: mx.array) -> mx.array:
        value = example_ce_loss(m, i, t, k)
        return value * (1.0 + f * 3e38)  # the flagged row's squared norm overflows

    sums, norms, _, _ = clipped_unit_sum(model, exploding, (*base.arrays, flag), *args[1:])
    without = base.valid * mx.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    expected, _, _, _ = clipped_unit_sum(
        model, example_ce_loss, base.arrays, base.units, without, 0.5
    )
    assert np.isnan(np.array(norms)[1]) and np.all(np.isfinite(_flat(sums)))
    np.testing.assert_allclose(_flat(sums), _flat(expected), rtol=1e-5, atol=1e-8)


def _delta_after_step(expected: float, clip: float = 1e6) -> tuple[np.ndarray, dict]:
    model = _model()
    before = _flat(dict(tree_flatten(model.trainable_parameters())))
    batch = pack_token_units([[SEQS[i][:12]] for i in (0, 2, 3)], expected, width=WIDTH)
    step = make_dp_step(model, optim.SGD(learning_rate=1.0), DPConfig(0.0, clip))
    report = step(batch)
    after = _flat(dict(tree_flatten(model.trainable_parameters())))
    return after - before, {"report": report, "batch": batch, "model": model}


def test_no_noise_huge_clip_equals_plain_gradient() -> None:
    delta, info = _delta_after_step(expected=3.0)
    model, batch = _model(), info["batch"]
    # Same rows as one plain batch: equal token counts, so the token mean is the row mean.
    plain = Batch(*(a[:3] for a in batch.arrays))
    _, grads = nn.value_and_grad(model, masked_ce_loss)(model, plain)
    # float32 rounding of two different reduction orders: up to ~4e-7 on some CPUs.
    np.testing.assert_allclose(delta, -_flat(dict(tree_flatten(grads))), rtol=1e-3, atol=1e-6)
    assert info["report"].clipped_fraction == 0.0 and info["report"].num_units == 3


def test_normalised_by_expected_not_realised_size() -> None:
    delta3, _ = _delta_after_step(expected=3.0)
    delta12, info12 = _delta_after_step(expected=12.0)
    assert info12["report"].num_examples == 3 and info12["report"].expected_size == 12.0
    # Deltas are differences of O(1) parameters: compare at float32 resolution of those.
    tol = 1e-5 * float(np.abs(delta3).max())
    np.testing.assert_allclose(delta12 * 4.0, delta3, rtol=1e-4, atol=tol)
    with pytest.raises(ConfigError, match="Expected batch size"):
        make_dp_step(_model(), optim.SGD(learning_rate=1.0), DPConfig(0.0, 1.0))(
            pack_token_units([[SEQS[0]]], 0.0, width=WIDTH)
        )


def test_only_lora_parameters_change_and_steps_are_reproducible() -> None:
    def run() -> tuple[dict, dict]:
        model = _model()
        base = {k: np.array(v) for k, v in tree_flatten(model.parameters()) if "lora" not in k}
        step = make_dp_step(
            model, optim.Adam(learning_rate=1e-2), DPConfig(1.0, 1.0), noise=_noise(4)
        )
        step(_units_batch([[0], [1, 2]]))
        step.empty(2.0)  # a sample with no unit still releases (pure) noise
        return base, dict(tree_flatten(model.parameters()))

    base, params = run()
    for name, value in base.items():
        np.testing.assert_array_equal(np.array(params[name]), value)  # bit-identical
    fresh = dict(tree_flatten(_model().parameters()))
    assert all(
        not np.array_equal(np.array(params[k]), np.array(fresh[k])) for k in params if "lora" in k
    )
    _, again = run()
    for name in params:
        np.testing.assert_array_equal(np.array(params[name]), np.array(again[name]))


def test_prefetched_noise_changes_no_value() -> None:
    """Drawing the noise on a background thread while the gradients are computed gives the
    same parameters, bit for bit, as drawing it after them (seeded noise, empty steps too)."""

    def run(prefetch: bool) -> np.ndarray:
        model = _model()
        step = make_dp_step(
            model, optim.Adam(learning_rate=1e-2), DPConfig(0.8, 1.0), noise=_noise(6)
        )
        step.prefetch_noise = prefetch
        for groups in ([[0], [1, 2]], [[3]], [[4], [0]]):
            step(_units_batch(groups))
        step.empty(2.0)
        return _flat(dict(tree_flatten(model.trainable_parameters())))

    np.testing.assert_array_equal(run(True), run(False))


def test_compiled_and_eager_steps_agree() -> None:
    results = []
    for compile in (True, False):
        model = _model()
        step = make_dp_step(
            model,
            optim.Adam(learning_rate=1e-2),
            DPConfig(0.5, 1.0),
            noise=_noise(2),
            compile=compile,
        )
        for _ in range(2):
            report = step(_units_batch([[0], [1, 2], [4]]))
        results.append((_flat(dict(tree_flatten(model.trainable_parameters()))), report))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
    assert results[0][1].loss == pytest.approx(results[1][1].loss, rel=1e-4)


def test_noisy_dp_steps_learn_a_memorisable_task() -> None:
    """16 units holding two sequences: σ = 0.5 noise on the sum, yet the loss falls."""
    model = _model()
    step = make_dp_step(model, optim.Adam(learning_rate=2e-2), DPConfig(0.5, 1.0), noise=_noise(7))
    batch = pack_token_units([[SEQS[i % 2]] for i in range(16)], 16.0, width=WIDTH)
    losses = [step(batch).loss for _ in range(30)]
    assert np.mean(losses[-3:]) < losses[0] - 0.5, losses


@pytest.mark.parametrize(
    ("sigma", "clip"), [(-1.0, 1.0), (1.0, 0.0), (math.inf, 1.0), (1.0, math.nan), ("1", 1.0)]
)
def test_invalid_config_raises(sigma: object, clip: object) -> None:
    with pytest.raises(ConfigError):
        DPConfig(sigma, clip)  # type: ignore[arg-type]


def test_config_and_frozen_model_errors() -> None:
    assert DPConfig(1.5, 2.0).noise_std == 3.0
    model, _ = build_tiny_model("llama", VOCAB)
    model.freeze()
    with pytest.raises(ConfigError, match="trainable"):
        make_dp_step(model, optim.SGD(learning_rate=0.1), DPConfig(1.0, 1.0))


def test_default_noise_is_csprng() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeededNoiseWarning)
        step = make_dp_step(_model(), optim.SGD(learning_rate=0.1), DPConfig(1.0, 1.0))
    assert not step.noise.seeded


@settings(max_examples=12, deadline=None)
@given(
    groups=st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=3), min_size=1, max_size=5),
    max_rows=st.integers(1, 6),
    quantile=st.booleans(),
)
def test_a_step_in_chunks_of_whole_units_is_the_same_step(groups, max_rows, quantile) -> None:
    """The sample split into chunks (chunk_units) releases the same noised sum: the same
    parameters, clipped share, loss and (quantile clipping) released count and next C."""
    from personal.privacy.quantile import QuantileClipping
    from personal.privacy.sampler import chunk_units

    chunks = chunk_units([len(g) for g in groups], max_rows)
    assert [i for chunk in chunks for i in chunk] == list(range(len(groups)))
    assert all(sum(len(groups[i]) for i in c) <= max_rows or len(c) == 1 for c in chunks)
    config = DPConfig(1.2, 0.3, quantile=QuantileClipping(count_noise=0.2) if quantile else None)

    def run(chunked: bool):
        model = _model(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            step = make_dp_step(
                model, optim.SGD(learning_rate=0.5), config, noise=GaussianNoise(seed=9)
            )
        batch = (
            [_units_batch([groups[i] for i in chunk], 4.0) for chunk in chunks]
            if chunked
            else _units_batch(groups, 4.0)
        )
        report = step(batch)
        return _flat(dict(tree_flatten(model.trainable_parameters()))), report, step.clip_norm

    (whole, whole_report, whole_c), (parts, parts_report, parts_c) = run(False), run(True)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)
    assert parts_report.num_units == whole_report.num_units == len(groups)
    assert parts_report.num_examples == whole_report.num_examples
    assert parts_report.clipped_fraction == whole_report.clipped_fraction
    assert parts_report.loss == pytest.approx(whole_report.loss, rel=1e-5)
    assert parts_report.noisy_count == whole_report.noisy_count
    assert parts_c == pytest.approx(whole_c)


def test_chunks_must_share_the_expected_size() -> None:
    step = make_dp_step(_model(), optim.SGD(learning_rate=0.1), DPConfig(0.0, 1.0))
    with pytest.raises(ConfigError, match="expected size"):
        step([_units_batch([[0]], 2.0), _units_batch([[1]], 3.0)])
    with pytest.raises(ConfigError, match="at least one chunk"):
        step([])
    from personal.privacy.sampler import chunk_units

    with pytest.raises(ConfigError, match="max_rows"):
        chunk_units([1, 2], 0)
    assert chunk_units([5, 1, 1, 3], 2) == [[0], [1, 2], [3]]
