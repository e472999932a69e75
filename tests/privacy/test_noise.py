"""Gaussian noise: statistics, snapping, the CSPRNG byte source and the seeded test mode."""

from __future__ import annotations

import math
import warnings

from personal import kernels
from personal.errors import ConfigError, SeededNoiseWarning
from personal.privacy import noise as noise_module
from personal.privacy.noise import (
    DRAWS,
    GRID_BITS,
    NOISE_THREADS_ENV,
    GaussianNoise,
    RandomBytes,
    keystream_words,
    snapping_grid,
    standard_normal,
    uniform_open,
)

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

N = 200_000


def _seeded(seed: int = 0) -> GaussianNoise:
    with pytest.warns(SeededNoiseWarning):
        return GaussianNoise(seed=seed)


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


@pytest.mark.parametrize("std", [0.01, 1.0, 37.5])
def test_mean_and_variance(std: float) -> None:
    z = GaussianNoise().sample(N, std)
    # Mean: 6 standard errors. Variance: its standard error is std²·sqrt(2/N).
    assert abs(z.mean()) < 6 * std / math.sqrt(N)
    assert abs(z.var() / std**2 - 1.0) < 6 * math.sqrt(2.0 / N)


def test_distribution_is_gaussian() -> None:
    """Kolmogorov-Smirnov against N(0, 1) on a subsample, and the 4th moment."""
    z = _seeded(1).sample(N, 1.0)
    sub = np.sort(z[:20_000])
    ecdf = np.arange(1, sub.size + 1) / sub.size
    assert np.max(np.abs(ecdf - _normal_cdf(sub))) < 1.95 / math.sqrt(sub.size)  # alpha 0.001
    assert abs(np.mean(z**4) - 3.0) < 0.1


def test_box_muller_and_uniforms() -> None:
    words = np.array([0, 2**64 - 1, 2**63], dtype=np.uint64)
    u = uniform_open(words)
    assert u.tolist() == [2.0**-53, 1.0 - 2.0**-53, 0.5 + 2.0**-53]
    assert np.all((u > 0) & (u < 1))
    z = standard_normal(RandomBytes().words(2 * N))
    assert z.shape == (2 * N,) and np.max(np.abs(z)) <= math.sqrt(-2 * math.log(2.0**-53))
    assert abs(np.corrcoef(z[:N], z[N:])[0, 1]) < 6 / math.sqrt(N)  # cos and sin halves


def test_privatize_snaps_to_power_of_two_grid() -> None:
    std = 3.0
    grid = snapping_grid(std)
    assert grid == 2.0 ** (1 - GRID_BITS)  # 2^1 <= 3 < 2^2
    assert math.log2(grid).is_integer() and std * 2.0**-21 < grid <= std * 2.0**-GRID_BITS
    values = np.linspace(-2, 2, 1000).astype(np.float32)
    released = GaussianNoise().privatize(values, std)
    assert released.dtype == np.float32 and released.shape == values.shape
    out = released.astype(np.float64)
    small = np.abs(out) < 2.0**23 * grid  # there float32 holds every grid point exactly
    np.testing.assert_array_equal(np.rint(out[small] / grid) * grid, out[small])
    assert abs(np.std(out - values) / std - 1.0) < 0.15


def test_zero_std_is_identity_and_bound_is_checked() -> None:
    values = np.array([[0.5, -1.25]], dtype=np.float32)
    noise = GaussianNoise()
    np.testing.assert_array_equal(noise.privatize(values, 0.0), values)
    with pytest.raises(ConfigError, match="noise multiplier"):
        noise.privatize(values, 1e-3, bound=100.0)
    with pytest.raises(ConfigError):
        noise.sample(3, -1.0)


def test_privatize_tree_keeps_names_and_shapes() -> None:
    tree = {"a.lora_a": mx.zeros((3, 2)), "b.lora_b": mx.ones((4,))}
    out = GaussianNoise().privatize_tree(tree, 0.5)
    assert list(out) == list(tree)
    assert [v.shape for v in out.values()] == [(3, 2), (4,)]
    assert all(v.dtype == mx.float32 for v in out.values())
    exact = GaussianNoise().privatize_tree(tree, 0.0)
    assert np.array(exact["b.lora_b"]).tolist() == [1.0] * 4


def test_seeded_mode_warns_and_is_reproducible() -> None:
    a, b = _seeded(3), _seeded(3)
    first = a.sample(1000, 1.0)
    np.testing.assert_array_equal(first, b.sample(1000, 1.0))
    assert not np.array_equal(first, a.sample(1000, 1.0))  # next call, next key
    assert a.seeded and a.describe()["seeded"] is True
    assert "SEEDED" in a.describe()["randomness"]


def test_seeded_streams_differ_by_purpose() -> None:
    with pytest.warns(SeededNoiseWarning):
        noise_words = RandomBytes(5, purpose="noise").words(8)
    with pytest.warns(SeededNoiseWarning):
        sampler_words = RandomBytes(5, purpose="sampler").words(8)
    assert not np.array_equal(noise_words, sampler_words)


def test_csprng_mode_is_fresh_and_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeededNoiseWarning)
        a, b = GaussianNoise(), GaussianNoise()
        assert not np.array_equal(a.sample(64, 1.0), b.sample(64, 1.0))
        assert not np.array_equal(a.sample(64, 1.0), a.sample(64, 1.0))
        assert "os.urandom" in a.describe()["randomness"]
    words = RandomBytes().words(N)
    bits = np.unpackbits(words.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 6 * 0.5 / math.sqrt(bits.size)


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 300), count=st.integers(0, 300))
def test_keystream_words_at_any_offset_are_that_slice_of_the_stream(start: int, count: int) -> None:
    key = bytes(range(32))
    whole = keystream_words(key, 0, 700)
    np.testing.assert_array_equal(keystream_words(key, start, count), whole[start : start + count])


def test_counter_carries_across_the_low_64_bits() -> None:
    """OpenSSL increments the whole 128-bit counter block: a range that starts just below
    2^64 blocks continues into the next one as one stream would."""
    key = bytes(32)
    below = 2 * (2**64 - 1)  # word index of block 2^64 - 1
    np.testing.assert_array_equal(
        keystream_words(key, below, 4)[2:], keystream_words(key, below + 2, 2)
    )


def _unchunked(seed: int, size: int, std: float) -> np.ndarray:
    """The draw as one unchunked pass over one key's stream (the reference)."""
    with pytest.warns(SeededNoiseWarning):
        words = RandomBytes(seed, purpose="noise").words(DRAWS * size)
    return standard_normal(words).reshape(DRAWS, size).sum(axis=0) * (std / math.sqrt(DRAWS))


def _one_pass(seed: int, size: int, std: float) -> np.ndarray:
    """The sampler's own draw in one chunk on one thread (whichever transform is in use)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(noise_module, "NOISE_CHUNK", size + 1)
        patch.setenv(NOISE_THREADS_ENV, "1")
        return _seeded(seed).sample(size, std)


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 70),
    chunk=st.integers(1, 16),
    threads=st.sampled_from(["1", "3"]),
    vector=st.booleans(),
)
def test_chunked_threaded_draw_is_the_unchunked_stream(
    size: int, chunk: int, threads: str, vector: bool
) -> None:
    """Splitting a draw into chunks on threads changes no value: same key, same words, same
    order of additions, for any chunk size, size and thread count, with the C++ transform
    (every value through the same 8-lane block) and with numpy's."""
    with kernels.use(vector):
        reference = _one_pass(11, size, 2.5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(noise_module, "NOISE_CHUNK", chunk)
            patch.setenv(NOISE_THREADS_ENV, threads)
            drawn = _seeded(11).sample(size, 2.5)
    np.testing.assert_array_equal(drawn, reference)


def test_numpy_transform_is_the_documented_stream() -> None:
    """Without the kernels a draw is exactly standard_normal over the key's stream, summed."""
    size = 2 * noise_module.NOISE_CHUNK + 3
    with kernels.use(False):
        np.testing.assert_array_equal(_seeded(4).sample(size, 1.0), _unchunked(4, size, 1.0))


@pytest.mark.skipif(not kernels.status().available, reason="personal.kernels not built")
def test_vector_transform_agrees_with_numpy() -> None:
    """The C++ transform computes numpy's values within libmvec's few ulp (values of a sum
    of four normals are at most ~17 in size, so 1e-12 absolute is ~1e4 ulp of headroom),
    across chunk boundaries and a padded last block."""
    size = 2 * noise_module.NOISE_CHUNK + 3
    vector = _seeded(4).sample(size, 1.0)
    np.testing.assert_allclose(vector, _unchunked(4, size, 1.0), rtol=0, atol=1e-12)
    assert noise_module.transform_description().startswith("float64 C++")


def test_noise_threads_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NOISE_THREADS_ENV, "3")
    assert noise_module.noise_threads() == 3
    monkeypatch.setenv(NOISE_THREADS_ENV, "lots")
    assert noise_module.noise_threads() >= 1
    monkeypatch.delenv(NOISE_THREADS_ENV)
    assert noise_module.noise_threads() >= 1


def test_prefetched_draw_is_the_next_draw_of_its_size() -> None:
    plain, early = _seeded(8), _seeded(8)
    expected = plain.sample(50, 3.0)
    early.prefetch(50)
    np.testing.assert_array_equal(early.sample(50, 3.0), expected)
    # used once: the next draw is a new one
    assert not np.array_equal(early.sample(50, 3.0), expected)


def test_a_draw_of_another_size_leaves_the_prefetch_alone() -> None:
    source = _seeded(9)
    source.prefetch(40)
    other = source.sample(3, 1.0)  # the quantile count's draw, say
    assert other.shape == (3,)
    reference = _seeded(9)
    first = reference.sample(40, 1.0)  # the prefetch took the first key
    np.testing.assert_array_equal(source.sample(40, 1.0), first)


def test_prefetch_of_nothing_is_a_no_op() -> None:
    source = GaussianNoise()
    source.prefetch(0)
    assert source.sample(5, 1.0).shape == (5,)


def test_a_prefetch_takes_its_key_when_asked_not_when_its_thread_runs() -> None:
    """A draw made right after prefetch() (before the thread may have started) gets the next
    key, not the prefetch's: the seeded order of keys is the order of the calls."""
    reference = _seeded(12)
    first, second = reference.sample(30, 1.0), reference.sample(4, 1.0)
    source = _seeded(12)
    source.prefetch(30)
    np.testing.assert_array_equal(source.sample(4, 1.0), second)
    np.testing.assert_array_equal(source.sample(30, 1.0), first)
