"""Quantile clipping (Andrew et al. 2021): the noise split, the C update, and the DP step's two
releases (gradient sum and unclipped count) drawn from the one noise module."""

from __future__ import annotations

import math
import warnings

from personal.errors import ConfigError, SeededNoiseWarning
from personal.privacy.dpsgd import DPConfig, make_dp_step
from personal.privacy.noise import GaussianNoise
from personal.privacy.quantile import (
    MAX_CLIP,
    MIN_CLIP,
    QuantileClipping,
    gradient_noise_multiplier,
)
from personal.privacy.sampler import UnitBatch, pack_units

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

DIM = 4


class Linear(nn.Module):
    """One trainable vector ``w``; a row ``x`` has loss ``x · w``, so its gradient is ``x``:
    every unit's gradient norm is known by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.w = mx.zeros((DIM,))


def _loss(model: nn.Module, x: mx.array) -> mx.array:
    return x @ model.w  # (S,)


def _batch(norms: list[float], expected: float | None = None) -> UnitBatch:
    """One unit per norm, its single row ``norm · e_0``."""
    rows = [[(np.eye(DIM, dtype=np.float32)[0] * n,)] for n in norms]
    return pack_units(rows, float(expected or len(norms)))


def _seeded(seed: int = 0) -> GaussianNoise:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return GaussianNoise(seed=seed)


class Silent(GaussianNoise):
    """Noise of std → 0: every draw is 0, so the releases are the exact values (tests only)."""

    def sample(self, size: int, std: float) -> np.ndarray:
        return np.zeros(size, dtype=np.float64)


class Spy(GaussianNoise):
    """A seeded source that records the (size, std) of every draw."""

    def __init__(self, seed: int = 0) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            super().__init__(seed=seed)
        self.draws: list[tuple[int, float]] = []

    def sample(self, size: int, std: float) -> np.ndarray:
        self.draws.append((size, std))
        return super().sample(size, std)


def _step(config: DPConfig, noise: GaussianNoise):
    return make_dp_step(Linear(), optim.SGD(learning_rate=0.0), config, loss=_loss, noise=noise)


# --- the noise split ----------------------------------------------------------------------------


def test_sigma_delta_formula() -> None:
    # σ = 1, σ_b = 1: σ_Δ = (1 − 1/4)^(−½) = 2/√3
    assert gradient_noise_multiplier(1.0, 1.0) == pytest.approx(2 / math.sqrt(3))
    # the paper's σ_b = B/20 at B = 64 under the default σ = 1.6: a 5 % noisier gradient
    assert gradient_noise_multiplier(1.6, 3.2) == pytest.approx(1.6525, abs=1e-4)


@settings(max_examples=200, deadline=None)
@given(
    sigma=st.floats(0.1, 100.0),
    ratio=st.floats(0.5, 1e4, exclude_min=True),
    clip=st.floats(1e-3, 1e3),
)
def test_the_joint_release_is_the_gaussian_mechanism_at_sigma(sigma, ratio, clip) -> None:
    """Rescale the count so its noise std is σ_Δ·C: the pair's L2 sensitivity is
    C·sqrt(1 + σ_Δ²/(4σ_b²)), and noise std / sensitivity is exactly σ."""
    count_std = ratio * sigma
    delta = gradient_noise_multiplier(sigma, count_std)
    assert delta > sigma
    scale = delta * clip / count_std  # the count coordinate's rescaling
    sensitivity = math.hypot(clip, scale * 0.5)  # C for the sum, ½ per unit for the count
    assert delta * clip / sensitivity == pytest.approx(sigma, rel=1e-9)


@pytest.mark.parametrize("count_std", [0.8, 0.5, 0.0, -1.0, math.nan])
def test_a_count_noise_at_or_below_half_sigma_is_refused(count_std) -> None:
    with pytest.raises(ConfigError, match="clip_count_noise") as info:
        gradient_noise_multiplier(1.6, count_std)
    assert "noise_multiplier" in str(info.value) and 'clip = "fixed"' in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"target_quantile": 0.0}, {"target_quantile": 1.0}, {"learning_rate": 0.0},
     {"learning_rate": 1.5}, {"count_noise": 0.0}, {"count_noise": True}],
)  # fmt: skip
def test_parameters_out_of_range_are_refused(kwargs) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        QuantileClipping(**kwargs)


def test_the_update_is_geometric_and_bounded() -> None:
    q = QuantileClipping(target_quantile=0.5, learning_rate=0.2)
    # b̃ = +B/2: every unit unclipped -> the estimate is 1 -> C shrinks by exp(-0.1)
    assert q.next_clip(1.0, 5.0, 10.0) == pytest.approx(math.exp(-0.1))
    assert q.next_clip(1.0, -5.0, 10.0) == pytest.approx(math.exp(0.1))  # all clipped: grows
    assert q.next_clip(1.0, 0.0, 10.0) == pytest.approx(1.0)  # at the target: stays
    assert q.next_clip(MIN_CLIP, 1e9, 1.0) == MIN_CLIP
    assert q.next_clip(MAX_CLIP, -1e9, 1.0) == MAX_CLIP


# --- the DP step --------------------------------------------------------------------------------


NORMS = [float(n) for n in range(1, 12)]  # median 6


def test_c_converges_to_the_median_without_noise() -> None:
    step = _step(DPConfig(1.0, 0.5, quantile=QuantileClipping(count_noise=0.2)), Silent())
    seen = []
    for _ in range(200):
        seen.append(step(_batch(NORMS)).clip_norm)
    assert seen[0] == 0.5 and seen[1] == pytest.approx(0.5 * math.exp(0.1))  # all clipped
    assert step.clip_norm == pytest.approx(6.0, rel=0.02)
    assert all(5.9 < c < 6.1 for c in seen[-50:])


@pytest.mark.parametrize("quantile, expected", [(0.25, 3.5), (0.75, 8.5)])
def test_c_converges_to_other_quantiles(quantile, expected) -> None:
    clipping = QuantileClipping(target_quantile=quantile, count_noise=0.2)
    step = _step(DPConfig(1.0, 0.5, quantile=clipping), Silent())
    for _ in range(300):
        step(_batch(NORMS))
    # the share of norms <= C crosses γ between two norms: C settles between them
    assert expected - 0.6 < step.clip_norm < expected + 0.6


def test_c_converges_near_the_median_with_seeded_noise() -> None:
    norms = [float(n) for n in np.linspace(0.1, 2.0, 64)]  # median 1.05
    step = _step(DPConfig(1.6, 10.0, quantile=QuantileClipping()), _seeded(3))
    late = []
    for t in range(300):
        step(_batch(norms))  # σ_b = 64 / 20 = 3.2 > 0.8
        if t >= 200:
            late.append(step.clip_norm)
    assert 0.8 < float(np.median(late)) < 1.3


def test_the_count_is_drawn_by_the_noise_module_with_std_sigma_b() -> None:
    clipping = QuantileClipping(count_noise=0.25)
    sigma, clip, norms = 1.0, 4.5, NORMS  # 4 units of the 11 unclipped
    spy = Spy(seed=7)
    step = _step(DPConfig(sigma, clip, quantile=clipping), spy)
    report = step(_batch(norms))
    sigma_b = 0.25 * len(norms)
    delta = gradient_noise_multiplier(sigma, sigma_b)
    assert spy.draws == [(DIM, pytest.approx(delta * clip)), (1, pytest.approx(sigma_b))]
    assert report.noise_std == pytest.approx(delta * clip)
    # the same count released by an identical seeded source: the step adds nothing else
    twin = _seeded(7)
    twin.sample(DIM, delta * clip)
    exact = 4 * 0.5 - 7 * 0.5  # Σ (1[‖g‖ ≤ C] − ½)
    assert report.noisy_count == pytest.approx(twin.privatize_count(exact, sigma_b, bound=8.0))
    unclipped = report.noisy_count / len(norms) + 0.5
    assert step.clip_norm == pytest.approx(clip * math.exp(-0.2 * (unclipped - 0.5)))


def test_the_gradient_noise_std_is_sigma_delta_times_the_current_c() -> None:
    clipping = QuantileClipping(count_noise=0.5)
    spy = Spy(seed=1)
    step = _step(DPConfig(2.0, 1.0, quantile=clipping), spy)
    for _ in range(5):
        c = step.clip_norm
        report = step(_batch(NORMS))
        delta = gradient_noise_multiplier(2.0, 0.5 * len(NORMS))
        assert report.clip_norm == c and report.noise_std == pytest.approx(delta * c)
        assert spy.draws[-2] == (DIM, pytest.approx(delta * c))
    assert step.clip_norm != 1.0


def test_a_fixed_step_draws_one_release_at_sigma_c() -> None:
    spy = Spy(seed=1)
    step = _step(DPConfig(2.0, 1.5), spy)
    report = step(_batch(NORMS))
    assert spy.draws == [(DIM, 3.0)] and report.noise_std == 3.0
    assert report.noisy_count is None and step.clip_norm == 1.5  # C never moves


def test_an_empty_step_releases_a_pure_noise_count_too() -> None:
    spy = Spy(seed=2)
    step = _step(DPConfig(1.0, 1.0, quantile=QuantileClipping(count_noise=0.5)), spy)
    report = step.empty(10.0)
    assert [size for size, _ in spy.draws] == [DIM, 1]
    assert spy.draws[1][1] == pytest.approx(5.0) and report.noisy_count is not None
    assert step.clip_norm != 1.0  # moved by the noise alone (public)


def test_a_step_whose_sigma_cannot_be_split_fails_before_any_release() -> None:
    spy = Spy()
    step = _step(DPConfig(1.6, 1.0, quantile=QuantileClipping()), spy)
    with pytest.raises(ConfigError, match="clip_count_noise"):
        step(_batch([1.0, 2.0]))  # σ_b = 2/20 = 0.1 < 0.8
    with pytest.raises(ConfigError, match="clip_count_noise"):
        step.empty(2.0)
    assert spy.draws == []


def test_quantile_clipping_needs_noise() -> None:
    with pytest.raises(ConfigError, match="needs noise"):
        DPConfig(0.0, 1.0, quantile=QuantileClipping())
