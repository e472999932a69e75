"""Poisson sampling from the CSPRNG, seeded test mode, buckets and padded unit batches."""

from __future__ import annotations

import math
import warnings

from personal.errors import ConfigError, SeededNoiseWarning
from personal.privacy.sampler import (
    PoissonSampler,
    bucket_size,
    pack_token_units,
    pack_units,
)

import numpy as np
import pytest


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def _seeded(q: float, seed: int) -> PoissonSampler:
    with pytest.warns(SeededNoiseWarning):
        return PoissonSampler(q, seed=seed)


@pytest.mark.parametrize("q", [0.01, 0.1, 0.5, 0.9])
def test_inclusion_frequency_matches_q(q: float) -> None:
    n = 50_000
    sample = PoissonSampler(q).sample(range(n))
    assert _binomial_ok(len(sample), n, q)
    assert sample.expected_size == pytest.approx(q * n)
    assert sample.num_eligible == n and sample.sample_rate == q


def test_each_unit_is_included_at_rate_q() -> None:
    """Per unit over repeated draws, not just in aggregate: no unit is favoured."""
    q, draws, n = 0.3, 400, 40
    sampler = PoissonSampler(q)
    counts = np.zeros(n, dtype=int)
    for _ in range(draws):
        for unit in sampler.sample(range(n)).units:
            counts[unit] += 1
    # 6-sigma per unit: a false failure has probability < 1e-7 over the 40 units.
    assert all(_binomial_ok(int(c), draws, q) for c in counts)


def test_inclusions_are_independent() -> None:
    """Joint inclusion of neighbouring units has rate q², and the count is not underdispersed
    (a shuffled fixed-size batch would give variance 0 across draws)."""
    q, draws, n = 0.5, 4000, 8
    coins = np.array([PoissonSampler(q).coins(n) for _ in range(draws)])  # (draws, n)
    for i in range(n - 1):
        both = int((coins[:, i] & coins[:, i + 1]).sum())
        assert _binomial_ok(both, draws, q * q)
    sizes = coins.sum(axis=1)
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.15)


def test_threshold_is_exact_integer_comparison() -> None:
    assert PoissonSampler(0.5)._threshold == 1 << 63
    assert PoissonSampler(0.25)._threshold == 1 << 62
    assert PoissonSampler(1.0).sample(["a", "b", "c"]).units == ("a", "b", "c")


def test_seeded_mode_warns_and_is_reproducible() -> None:
    a, b = _seeded(0.3, 7), _seeded(0.3, 7)
    first = [a.sample(range(200)).units for _ in range(3)]
    assert first == [b.sample(range(200)).units for _ in range(3)]
    assert first[0] != first[1]  # successive draws differ
    assert _seeded(0.3, 8).sample(range(200)).units != first[0]


def test_csprng_mode_is_not_reproducible_and_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeededNoiseWarning)
        a, b = PoissonSampler(0.5), PoissonSampler(0.5)
        assert a.sample(range(256)).units != b.sample(range(256)).units
        assert not a.random.seeded and "os.urandom" in a.random.describe()


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, float("nan"), "0.5"])
def test_invalid_rate_raises(q: object) -> None:
    with pytest.raises(ConfigError):
        PoissonSampler(q)  # type: ignore[arg-type]


def test_duplicate_units_are_refused() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        PoissonSampler(0.5).sample(["a", "b", "a"])


def test_bucket_sizes_are_few() -> None:
    assert [bucket_size(n) for n in (0, 1, 8, 9, 16, 17, 33)] == [8, 8, 8, 16, 16, 32, 64]
    assert bucket_size(3, minimum=1) == 4
    assert bucket_size(17, multiple=8) == 24
    assert len({bucket_size(n) for n in range(1, 65)}) == 4


def test_pack_units_pads_with_zero_weight_rows() -> None:
    row = lambda v: (np.full(4, v, dtype=np.int32),)  # noqa: E731
    batch = pack_units([[row(1), row(2)], [row(3)]], expected_size=2.5, minimum=4)
    assert batch.slots == 4 and batch.num_units == 2 and batch.num_examples == 3
    assert np.array(batch.units).tolist() == [0, 0, 1, 0]
    assert np.array(batch.valid).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert np.array(batch.arrays[0])[3].tolist() == [0, 0, 0, 0]
    assert batch.expected_size == 2.5
    with pytest.raises(ConfigError, match="fit"):
        pack_units([[row(1), row(2)]], 1.0, slots=1)
    with pytest.raises(ConfigError, match="same"):
        pack_units([[row(1), (np.zeros(3),)]], 1.0)


def test_pack_token_units_fixed_width_and_loss_mask() -> None:
    batch = pack_token_units(
        [[[5, 6, 7, 8]], [[9, 10, 11, 12, 13, 14], [1, 2]]],
        expected_size=2.0,
        loss_starts=[[2], [1, 1]],
        width=8,
    )
    inputs, targets, mask = (np.array(a) for a in batch.arrays)
    assert inputs.shape == targets.shape == mask.shape == (8, 8)
    assert inputs[0, :3].tolist() == [5, 6, 7] and targets[0, :3].tolist() == [6, 7, 8]
    assert mask[0].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]  # predicting tokens 2.. (7, 8)
    assert mask[1].sum() == 5 and mask[2].sum() == 1 and mask[3:].sum() == 0
    assert np.array(batch.units)[:3].tolist() == [0, 1, 1]
    truncated = pack_token_units([[list(range(1, 30))]], 1.0, width=8)
    assert np.array(truncated.arrays[1])[0, -1] == 9
    with pytest.raises(ConfigError, match="2 tokens"):
        pack_token_units([[[1]]], 1.0)
