"""THE one place where privacy randomness is drawn: Gaussian noise, and the sampler's coins.

Nothing else in `personal` may draw randomness that a privacy guarantee depends on. A reviewer
checks this module, :class:`RandomBytes` and :meth:`GaussianNoise.privatize` in particular.

**Randomness.** Every call of :class:`RandomBytes` takes a fresh 256-bit key from the operating
system's CSPRNG (``os.urandom``) and expands it with AES-256 in counter mode (from
``cryptography``/OpenSSL: a standard PRG, the core of NIST SP 800-90A's CTR_DRBG). Nothing is
kept between calls, so a forked process cannot replay another's stream and no key outlives the
step it served. numpy's generators (PCG64, Philox, MT19937) and MLX's Threefry are *not*
cryptographically secure and are never used here. AES-CTR gives ~3 GB/s where ``os.urandom``
alone gives ~0.15 GB/s; the ~20 MB a step needs would otherwise cost more than the noise maths.

**Floating-point attacks.** Mironov (2012, "On significance of the least significant bits for
differential privacy") showed that textbook floating-point Laplace samplers leave holes: some
doubles can be produced for one input and never for a neighbouring one, so a single release can
reveal the input with certainty. Jin, McMurtry, Rubinstein and Ohrimenko (2022, IEEE S&P, "Are
we there yet? Timing and floating-point attacks on differential privacy systems",
arXiv:2112.05307) carried the attack over to the Gaussian samplers in real libraries (Box-Muller,
polar, ziggurat; Opacus among the victims) and added timing attacks on samplers whose running
time depends on the value they return. Our defence, in :meth:`GaussianNoise.privatize`,
combines three published measures:

1. *Snapping* (Mironov 2012's remedy, carried to the Gaussian): the release is
   ``Λ · round((x + z) / Λ)`` on a power-of-two grid ``Λ ≈ 2⁻²⁰·std`` computed in float64.
   Each grid bin spans ≥ 2¹⁷ doubles whenever ``|x| ≤ 2¹⁴·std`` (checked against a public
   bound, never the data) and ~2³¹ in the noise's bulk, so every grid point is reachable from
   every input: the release has no exactly-impossible values, only bin probabilities. With
   ~10⁶ grid points per standard deviation, snapping adds variance Λ²/12 ≈ 10⁻¹³·std².
   Rounding after the noise is added is post-processing of the Gaussian mechanism, so the
   clip norm and the accountant need no adjustment.
2. *Sum of several draws* (Holohan & Braghin 2021, "Secure random sampling in differential
   privacy", arXiv:2107.10138, §5.1; Opacus's ``secure_mode`` does the same): each noise value
   is ``(z₁ + z₂ + z₃ + z₄) / 2`` of four independent Box-Muller normals built from 52-bit
   uniforms, which smooths the sampler's residual irregularities below the grid.
3. *CSPRNG input with no data-dependent control flow*: the noise is drawn before it meets the
   data, in fixed-size vectorised code, so its timing says nothing about the data (the timing
   channel of Jin et al. targets data-dependent rejection loops).

**Speed.** A draw for SmolLM2's 2.4 M LoRA parameters is ~10 M uniforms and ~15 M float64
``log``/``sqrt``/``cos``/``sin`` evaluations: about 0.2 s on one core in numpy, as much as the
rest of the DP step's extra cost. Where :mod:`personal.kernels` is built (Linux), the transform
from words to summed normals runs in one vectorised C++ pass instead
(``kernels/noise_transform.cpp``: the same formula on the same exact uniforms, with glibc's
SIMD ``log``/``cos``/``sin``, libmvec, documented to ≤ 4 ulp, so its values agree with numpy's
to ~1e-15 relative, not bit for bit; tested), about 15x faster; the keystream stays
OpenSSL's. Elsewhere numpy runs it. The draw is split into chunks computed on all cores (the
same keystream words and the same additions whatever the chunking: bit-identical values), and
:meth:`GaussianNoise.prefetch` lets a DP step start it on a background thread before the
gradients are computed (opt-in), since it depends on nothing private. Neither changes the
distribution, the key handling (one fresh key per draw) or the snapping.

**Residual risk, stated plainly.** This is not an exact sampler. The probability of each grid
bin deviates from the ideal Gaussian's by an amount we argue is far below 2⁻³⁰ relative but have
not proven; an attacker would need an astronomically large number of releases to see it. An exact
alternative is the discrete Gaussian of Canonne, Kamath and Steinke (2020) sampled in rational
arithmetic; in pure Python that is an estimated 10 s or more per step for 6·10⁵ parameters
(not measured), which is why it is not used.

**Seeded mode** (``seed=...``) keys AES from SHA-256 of the seed: reproducible, *not private*,
for tests only; it warns with :class:`~personal.errors.SeededNoiseWarning` on creation.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from personal import kernels
from personal.errors import ConfigError, SeededNoiseWarning

import mlx.core as mx
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# Independent normals summed per noise value (Holohan & Braghin's 2n with n = 2, as Opacus).
DRAWS = 4
# Snapping grid: the largest power of two <= std · 2^-GRID_BITS.
GRID_BITS = 20
# Largest public bound on |values| / std for which a grid bin still spans >= 2^17 doubles.
MAX_BOUND_RATIO = 2.0**14
_TWO_PI = 2.0 * math.pi
# Noise values per chunk of a draw (~12 MB of temporaries each); any size gives the same values.
NOISE_CHUNK = 1 << 17
#: Threads that draw noise (default: every core; the step waits for the noise anyway).
NOISE_THREADS_ENV = "PERSONAL_NOISE_THREADS"


def noise_threads() -> int:
    """Threads a draw uses: ``PERSONAL_NOISE_THREADS``, else the number of cores."""
    try:
        return max(1, int(os.environ.get(NOISE_THREADS_ENV, "0")) or os.cpu_count() or 1)
    except ValueError:
        return os.cpu_count() or 1


class RandomBytes:
    """Cryptographically secure random bytes, or a labelled deterministic stream for tests.

    Args:
        seed: ``None`` (the default, and the only private choice) draws a fresh key from
            ``os.urandom`` on every call. An integer makes the stream reproducible and emits
            :class:`~personal.errors.SeededNoiseWarning`: tests only.
        purpose: a label mixed into the seeded key, so that a sampler and a noise source given
            the same seed still draw unrelated streams.
    """

    def __init__(self, seed: int | None = None, *, purpose: str = "noise") -> None:
        self.seed = seed
        self._purpose = purpose
        self._calls = 0
        if seed is not None:
            warnings.warn(
                f"Seeded {purpose} randomness (seed={seed}) is reproducible and therefore "
                "NOT differentially private; use it in tests only.",
                SeededNoiseWarning,
                stacklevel=3,
            )

    @property
    def seeded(self) -> bool:
        """Whether this stream is the deterministic test stream."""
        return self.seed is not None

    def _key(self) -> bytes:
        if self.seed is None:
            return os.urandom(32)  # 256-bit key from the kernel CSPRNG, fresh every call
        self._calls += 1
        material = f"personal/{self._purpose}/{self.seed}/{self._calls}".encode()
        return hashlib.sha256(material).digest()

    def words(self, count: int) -> np.ndarray:
        """``count`` independent uniform 64-bit words, shape ``(count,)`` uint64."""
        # A fresh key, so the all-zero counter block is never reused under one key.
        return keystream_words(self._key(), 0, count)

    def stream_key(self) -> bytes:
        """The key of one draw, for :func:`keystream_words` at several offsets (a draw split
        across threads reads disjoint parts of one keystream: the same words as
        :meth:`words`). Fresh from ``os.urandom`` on every call; seeded: the next test key."""
        return self._key()

    def describe(self) -> str:
        """One line for audit reports."""
        if self.seeded:
            return f"SEEDED AES-256-CTR stream (seed={self.seed}): tests only, not private"
        return "AES-256-CTR keyed with 256 fresh bits from os.urandom on every draw"


def keystream_words(key: bytes, start: int, count: int) -> np.ndarray:
    """Words ``start .. start + count`` of the AES-256-CTR keystream under ``key``.

    The keystream starts at counter block 0 (what :meth:`RandomBytes.words` reads from 0), and
    word ``w`` is bytes ``8w .. 8w + 8`` of it, so any range can be produced on its own by
    starting the counter at block ``start // 2``: the ranges of one key never share a word.
    """
    first, skip = divmod(start, 2)
    blocks = (skip + count + 1) // 2
    # CTR is a stream mode: the keystream XOR zeros is the keystream; finalize() adds nothing.
    # OpenSSL increments the whole 16-byte counter block as one big-endian integer.
    counter = first.to_bytes(16, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    # update_into writes into a buffer we own: ~6x faster than update() for a chunk's 1 MB
    # (0.14 vs 0.86 ms here), which allocates and fills a new bytes object on every call.
    # cryptography wants the output buffer a block longer than the input.
    size = 16 * blocks
    out = np.empty(size + 16, dtype=np.uint8)
    written = encryptor.update_into(bytes(size), out.data)
    words = out[:written].view("<u8")[skip : skip + count]
    return words.astype(np.uint64, copy=False)


def uniform_open(words: np.ndarray) -> np.ndarray:
    """Uniform doubles in the open interval (0, 1) from 64-bit words: ``(k + ½)·2⁻⁵²``.

    ``k`` is the word's 52 high bits, so ``k + ½`` needs 53 bits and every step is exact: each
    of the 2⁵² values is equally likely, 0 and 1 never occur (``log`` stays finite), and the
    grid is symmetric about ½. The smallest value 2⁻⁵³ caps a Box-Muller radius at 8.57.
    """
    u = (words >> np.uint64(12)).astype(np.float64)
    u += 0.5
    u *= 2.0**-52
    return u


def standard_normal(words: np.ndarray) -> np.ndarray:
    """Box-Muller: two uniforms per pair of independent N(0, 1) values.

    Box-Muller rather than the polar method or a ziggurat: no rejection loop (fixed work per
    value) and only four vectorised transcendental passes, ~10 ns per pair in numpy.

    Args:
        words: ``(2m,)`` uint64 random words.

    Returns:
        ``(2m,)`` float64 normals.
    """
    u = uniform_open(words)
    m = u.size // 2
    radius = np.log(u[:m])  # in place below: (m,)
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = u[m:]
    angle *= _TWO_PI
    out = np.empty(2 * m, dtype=np.float64)
    np.cos(angle, out=out[:m])
    np.sin(angle, out=out[m:])
    out[:m] *= radius
    out[m:] *= radius
    return out


def transform_description() -> str:
    """Which code maps the random words to normals in this process (for the audit report)."""
    if kernels.status().available:
        return "float64 C++ with glibc libmvec SIMD log/cos/sin (personal.kernels)"
    return "float64 numpy"


def snapping_grid(std: float) -> float:
    """The power-of-two grid Λ of the release: largest power of two ≤ ``std · 2^-GRID_BITS``."""
    return math.ldexp(1.0, math.floor(math.log2(std)) - GRID_BITS)


class GaussianNoise:
    """Gaussian noise with the floating-point defences described in the module docstring.

    Args:
        seed: ``None`` for CSPRNG noise (private); an integer for reproducible test noise,
            which warns with :class:`~personal.errors.SeededNoiseWarning`.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.random = RandomBytes(seed, purpose="noise")
        self._prefetched: tuple[int, Future[np.ndarray]] | None = None

    def prefetch(self, size: int) -> None:
        """Start drawing the next ``size``-value draw on a background thread.

        The noise does not depend on the data, so a DP step may start it before computing the
        gradients (``DPStep.prefetch_noise``, off by default: no measurable gain on 2 cores)
        and the draw runs while MLX works (whose evaluation releases the GIL). The
        next :meth:`sample` of exactly ``size`` values uses it, once; any other draw ignores
        it. The key is taken now, so a seeded source draws the same values as without it when
        the prefetched draw is the next one made. A prefetch not used is discarded by the next.
        """
        if size <= 0:
            return
        if self._prefetched is not None:
            self._prefetched[1].cancel()
        key = self.random.stream_key()  # taken here, in the caller's order of draws
        pool = ThreadPoolExecutor(max_workers=1)
        self._prefetched = (size, pool.submit(self._summed_normals, size, key))
        pool.shutdown(wait=False)

    @property
    def seeded(self) -> bool:
        """Whether this source is the deterministic test source."""
        return self.random.seeded

    def sample(self, size: int, std: float) -> np.ndarray:
        """``size`` iid N(0, std²) values as float64 (not snapped; see :meth:`privatize`)."""
        if std < 0 or not math.isfinite(std):
            raise ConfigError(f"Noise std must be finite and >= 0, got {std!r}.")
        if size == 0 or std == 0:
            return np.zeros(size, dtype=np.float64)
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] == size:
            summed = prefetched[1].result()
        else:
            if prefetched is not None:
                self._prefetched = prefetched  # for the draw of its own size, later
            summed = self._summed_normals(size)
        # The sum of DRAWS iid N(0, 1) has variance DRAWS: rescale to std.
        return summed * (std / math.sqrt(DRAWS))

    def _summed_normals(self, size: int, key: bytes | None = None) -> np.ndarray:
        """``size`` sums of DRAWS iid N(0, 1) from one key, computed in chunks on threads.

        One draw reads ``DRAWS · size`` keystream words (two uniforms per Box-Muller pair).
        Value ``j`` sums the normals built from words ``j, size + j, 2·size + j, 3·size + j``
        (radii from the first half of the words, angles from the second), so a chunk of values
        needs four disjoint word ranges, which :func:`keystream_words` produces on its own. The
        result is the same whatever the chunking and the thread count: one fresh key per draw,
        one keystream, every word used once. numpy releases the GIL in its loops, so the chunks
        run in parallel (the draw 1.87× faster on 2 cores, docs/performance.md). ``key``: the draw's
        key when the caller took it already (:meth:`prefetch`); else a fresh one now.
        """
        key = self.random.stream_key() if key is None else key
        out = np.empty(size, dtype=np.float64)
        bounds = [(a, min(a + NOISE_CHUNK, size)) for a in range(0, size, NOISE_CHUNK)]

        def fill(span: tuple[int, int]) -> None:
            a, b = span
            n = b - a
            words = np.concatenate([keystream_words(key, k * size + a, n) for k in range(DRAWS)])
            if kernels.box_muller_sums(words.reshape(DRAWS, n), out[a:b]):
                return  # the same sums in one vectorised C++ pass (module docstring, Speed)
            # standard_normal pairs word i with word 2n + i: row 0 is r_a·cos θ_a, row 1
            # r_b·cos θ_b, row 2 r_a·sin θ_a, row 3 r_b·sin θ_b, as in one unchunked draw.
            np.sum(standard_normal(words).reshape(DRAWS, n), axis=0, out=out[a:b])

        threads = min(len(bounds), noise_threads())
        if threads <= 1:
            for span in bounds:
                fill(span)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(fill, bounds))
        return out

    def privatize(
        self, values: np.ndarray, std: float, *, bound: float | None = None
    ) -> np.ndarray:
        """Release ``values + N(0, std²)`` snapped to the grid Λ, as float32.

        ``std == 0`` returns the values unchanged (no privacy; for tests of the engine).

        Args:
            values: the exact-sensitivity query, e.g. the sum of clipped gradients, any shape.
            std: the noise standard deviation σ·C.
            bound: a *public* bound on ``max |values|`` (e.g. slots · C). It must be derived
                from the configuration, never from the data, because the check can raise.

        Raises:
            ConfigError: ``bound > 2¹⁴ · std``: the noise is too small for snapping to hide the
                floating-point structure (raise σ, or lower the batch size).
        """
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if std == 0:
            return flat.astype(np.float32).reshape(np.shape(values))
        if bound is not None and bound > MAX_BOUND_RATIO * std:
            raise ConfigError(
                f"Values bounded by {bound:g} are too large for noise std {std:g} "
                f"(limit {MAX_BOUND_RATIO:g}·std): raise the noise multiplier."
            )
        grid = snapping_grid(std)
        noisy = flat + self.sample(flat.size, std)
        # Λ is a power of two: dividing and multiplying by it are exact, so the only rounding
        # is the documented one onto the grid.
        snapped = np.rint(noisy / grid) * grid
        return snapped.astype(np.float32).reshape(np.shape(values))

    def privatize_count(self, value: float, std: float, *, bound: float) -> float:
        """:meth:`privatize` one count (e.g. quantile clipping's unclipped-unit count), as a
        float: the same sampler, snapping and public-bound check as every other release."""
        return float(self.privatize(np.array([value], dtype=np.float64), std, bound=bound)[0])

    def privatize_tree(
        self, values: Mapping[str, mx.array], std: float, *, bound: float | None = None
    ) -> dict[str, mx.array]:
        """:meth:`privatize` a flat ``name -> array`` dict in one draw; float32 MLX arrays back."""
        names = list(values)
        host = [np.asarray(values[name], dtype=np.float64).reshape(-1) for name in names]
        joined = np.concatenate(host) if host else np.zeros(0)
        released = self.privatize(joined, std, bound=bound)
        out: dict[str, mx.array] = {}
        offset = 0
        for name, part in zip(names, host, strict=True):
            chunk = released[offset : offset + part.size].reshape(values[name].shape)
            out[name] = mx.array(chunk)
            offset += part.size
        return out

    def describe(self) -> dict[str, object]:
        """What the audit report states about the noise."""
        return {
            "distribution": "gaussian",
            "sampler": f"sum of {DRAWS} Box-Muller normals / {math.sqrt(DRAWS):g}",
            "transform": transform_description(),
            "snapping_grid": f"largest power of two <= std * 2^-{GRID_BITS}",
            "randomness": self.random.describe(),
            "seeded": self.seeded,
        }
