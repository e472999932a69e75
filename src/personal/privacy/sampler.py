"""Poisson sampling of privacy units, and packing the sample into few-shaped padded batches.

The accountant analyses the *Poisson-subsampled* Gaussian mechanism, so that is what we run:
every eligible unit joins a step independently with probability ``q``, decided by a coin from
the CSPRNG of :mod:`personal.privacy.noise`. Shuffled fixed-size batches would not match the
analysis. The realised batch size is random; the gradient is divided by the *expected* size
``q · |eligible|`` (:attr:`PoissonSample.expected_size`), never by the realised one, which
would make the sum's scale depend on who was sampled.

Coins are exact: unit ``i`` is in iff its uniform 64-bit word is below ``⌊q · 2⁶⁴⌋``, an integer
comparison with no floating-point rounding, so the inclusion probability is ``q`` to within 2⁻⁶⁴.

Because batch sizes vary, :func:`pack_units` pads the rows up to a *bucket* (a power of two by
default) so the compiled DP step sees a handful of shapes; padded rows carry mask 0 and weight 0
and contribute exactly zero gradient.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, TypeVar

from personal.errors import ConfigError
from personal.privacy.noise import RandomBytes

import mlx.core as mx
import numpy as np

UnitId = TypeVar("UnitId", bound=Hashable)
_TWO_64 = 1 << 64


@dataclass(frozen=True)
class PoissonSample(Generic[UnitId]):
    """The units drawn for one step.

    Attributes:
        units: the sampled unit ids, in the order they were given.
        sample_rate: q, each unit's inclusion probability.
        num_eligible: how many units could have been drawn.
    """

    units: tuple[UnitId, ...]
    sample_rate: float
    num_eligible: int

    @property
    def expected_size(self) -> float:
        """``q · |eligible|``: what the summed gradient is divided by."""
        return self.sample_rate * self.num_eligible

    def __len__(self) -> int:
        return len(self.units)


class PoissonSampler(Generic[UnitId]):
    """Includes each eligible unit independently with probability ``sample_rate``.

    Args:
        sample_rate: q in (0, 1].
        seed: ``None`` (private) draws coins from the CSPRNG; an integer gives a reproducible
            sequence for tests and warns with :class:`~personal.errors.SeededNoiseWarning`.

    Raises:
        ConfigError: ``sample_rate`` is not in (0, 1].
    """

    def __init__(self, sample_rate: float, *, seed: int | None = None) -> None:
        if not (isinstance(sample_rate, int | float) and 0.0 < sample_rate <= 1.0):
            raise ConfigError(f"Sample rate q must be in (0, 1], got {sample_rate!r}.")
        self.sample_rate = float(sample_rate)
        # floor(q * 2^64) computed exactly in rationals: no float rounding in the coin.
        self._threshold = math.floor(Fraction(self.sample_rate) * _TWO_64)
        self.random = RandomBytes(seed, purpose="sampler")

    def coins(self, count: int) -> np.ndarray:
        """``count`` independent inclusion decisions, ``(count,)`` bool, each True w.p. q."""
        if self._threshold >= _TWO_64:  # q == 1: everyone is in, no randomness needed
            return np.ones(count, dtype=bool)
        return self.random.words(count) < np.uint64(self._threshold)

    def sample(self, eligible: Sequence[UnitId]) -> PoissonSample[UnitId]:
        """Draw one step's units from ``eligible`` (duplicates are refused).

        Raises:
            ConfigError: ``eligible`` lists a unit twice (it would be sampled at rate > q).
        """
        units = list(eligible)
        if len(set(units)) != len(units):
            raise ConfigError("Eligible units must be distinct; a repeated unit breaks rate q.")
        chosen = self.coins(len(units))
        picked = tuple(unit for unit, keep in zip(units, chosen, strict=True) if keep)
        return PoissonSample(picked, self.sample_rate, len(units))


def bucket_size(count: int, *, minimum: int = 8, multiple: int | None = None) -> int:
    """The padded row count for ``count`` real rows: few distinct values, so few compilations.

    Args:
        count: realised number of rows (examples).
        minimum: never fewer slots than this.
        multiple: round up to a multiple of this instead of to a power of two.
    """
    count = max(count, minimum, 1)
    if multiple is not None:
        if multiple < 1:
            raise ConfigError(f"Bucket multiple must be >= 1, got {multiple!r}.")
        return -(-count // multiple) * multiple
    return 1 << (count - 1).bit_length()


@dataclass(frozen=True)
class UnitBatch:
    """Rows (examples) of a Poisson sample, grouped by unit and padded to a bucket.

    Attributes:
        arrays: per-example inputs of the loss, each ``(S, ...)`` with S the slot count; a
            language model's are ``(inputs, targets, mask)``, each ``(S, T)``.
        units: ``(S,)`` int32, the unit slot (0 .. num_units - 1) of each row; 0 on padding.
        valid: ``(S,)`` float32, 1 for real rows and 0 for padding.
        num_units: units in the sample (0 is allowed: the step is then pure noise).
        num_examples: real rows.
        expected_size: q · |eligible| (in units), the normaliser of the step.
    """

    arrays: tuple[mx.array, ...]
    units: mx.array
    valid: mx.array
    num_units: int
    num_examples: int
    expected_size: float

    @property
    def slots(self) -> int:
        """Padded row count S."""
        return int(self.units.shape[0])


def pack_units(
    unit_rows: Sequence[Sequence[Sequence[np.ndarray]]],
    expected_size: float,
    *,
    slots: int | None = None,
    minimum: int = 8,
    multiple: int | None = None,
) -> UnitBatch:
    """Stack every unit's rows into a :class:`UnitBatch` padded with all-zero rows.

    Args:
        unit_rows: per sampled unit, its examples; each example is a tuple of arrays of equal
            shapes across examples (e.g. ``(inputs, targets, mask)`` each ``(T,)``).
        expected_size: ``PoissonSample.expected_size``.
        slots: force the padded row count (else :func:`bucket_size`).
        minimum: smallest bucket.
        multiple: see :func:`bucket_size`.

    Raises:
        ConfigError: rows disagree in arity or shape, or there are more rows than ``slots``.
    """
    flat = [(u, row) for u, rows in enumerate(unit_rows) for row in rows]
    if not flat:
        raise ConfigError("pack_units needs at least one example to learn the row shapes.")
    arity = len(flat[0][1])
    shapes = [np.shape(a) for a in flat[0][1]]
    if any(len(row) != arity or [np.shape(a) for a in row] != shapes for _, row in flat):
        raise ConfigError("Every example must have the same arrays with the same shapes.")
    size = slots or bucket_size(len(flat), minimum=minimum, multiple=multiple)
    if size < len(flat):
        raise ConfigError(f"{len(flat)} examples do not fit in {size} slots.")
    columns = []
    for k in range(arity):
        first = np.asarray(flat[0][1][k])
        column = np.zeros((size, *first.shape), dtype=first.dtype)  # (S, ...) zero padding
        for i, (_, row) in enumerate(flat):
            column[i] = row[k]
        columns.append(mx.array(column))
    units = np.zeros(size, dtype=np.int32)
    units[: len(flat)] = [u for u, _ in flat]
    valid = np.zeros(size, dtype=np.float32)
    valid[: len(flat)] = 1.0
    return UnitBatch(
        tuple(columns), mx.array(units), mx.array(valid), len(unit_rows), len(flat), expected_size
    )


def chunk_units(rows_per_unit: Sequence[int], max_rows: int) -> list[list[int]]:
    """Consecutive units grouped so that each group has at most ``max_rows`` rows (a unit with
    more rows is a group of its own): the chunks of one step (see
    :meth:`~personal.privacy.dpsgd.DPStep.__call__`). A unit is never split, so each chunk
    clips whole units. Returns the unit indices of each chunk."""
    if max_rows < 1:
        raise ConfigError(f"max_rows must be >= 1, got {max_rows!r}.")
    chunks: list[list[int]] = []
    rows = 0
    for index, count in enumerate(rows_per_unit):
        if not chunks or rows + count > max_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(index)
        rows += count
    return chunks


def pack_token_units(
    unit_sequences: Sequence[Sequence[Sequence[int]]],
    expected_size: float,
    *,
    loss_starts: Sequence[Sequence[int]] | None = None,
    width: int = 128,
    pad_id: int = 0,
    slots: int | None = None,
    minimum: int = 8,
    scored_only: bool = False,
) -> UnitBatch:
    """Token sequences per unit → a :class:`UnitBatch` of ``(inputs, targets, mask)``.

    Every row is padded (or truncated) to exactly ``width`` positions, so the time axis never
    changes shape; the loss mask is 1 from ``loss_starts`` (default: the second token) on.

    With ``scored_only`` the arrays are ``(inputs, positions, targets, mask)`` for
    :func:`~personal.privacy.dpsgd.scored_ce_loss`: ``inputs`` ``(S, width)`` as above, the
    others ``(S, K)`` over the scored positions only (a row's are contiguous, from its loss
    start on), with ``K`` the longest scored span rounded up to a multiple of 16 (few shapes).

    Args:
        unit_sequences: per unit, its examples' token ids (≥ 2 tokens each).
        expected_size: ``PoissonSample.expected_size``.
        loss_starts: per unit, per example, the first token index whose prediction counts.
        width: positions per row (a sequence keeps at most ``width + 1`` tokens).
        pad_id: token id written into padding (masked out).
        slots: see :func:`pack_units`.
        minimum: see :func:`pack_units`.
        scored_only: pack the scored positions apart (see above).
    """
    unit_rows: list[list[tuple[np.ndarray, ...]]] = []
    for u, sequences in enumerate(unit_sequences):
        rows: list[tuple[np.ndarray, ...]] = []
        for e, sequence in enumerate(sequences):
            tokens = list(sequence)[: width + 1]
            if len(tokens) < 2:
                raise ConfigError("Every sequence needs at least 2 tokens.")
            n = len(tokens) - 1
            inputs = np.full(width, pad_id, dtype=np.int32)
            targets = np.full(width, pad_id, dtype=np.int32)
            mask = np.zeros(width, dtype=np.float32)
            inputs[:n], targets[:n] = tokens[:-1], tokens[1:]
            # Target t is token t+1, so tokens from loss_start on are predicted at t >= start-1.
            start = max(0, (loss_starts[u][e] if loss_starts is not None else 1) - 1)
            mask[start:n] = 1.0
            rows.append((inputs, targets, mask))
        unit_rows.append(rows)
    if scored_only:
        unit_rows = _scored_rows(unit_rows, width)
    return pack_units(unit_rows, expected_size, slots=slots, minimum=minimum)


def _scored_rows(
    unit_rows: list[list[tuple[np.ndarray, ...]]], width: int
) -> list[list[tuple[np.ndarray, ...]]]:
    """``(inputs, targets, mask)`` rows → ``(inputs, positions, targets, mask)`` over the
    scored span of each row (contiguous by construction)."""
    spans = []
    for rows in unit_rows:
        for _, _, mask in rows:
            scored = np.flatnonzero(mask)
            spans.append((int(scored[0]), len(scored)) if len(scored) else (0, 0))
    longest = max(length for _, length in spans)
    k = min(width, max(16, -(-longest // 16) * 16))
    out: list[list[tuple[np.ndarray, ...]]] = []
    spans_left = iter(spans)
    for rows in unit_rows:
        packed: list[tuple[np.ndarray, ...]] = []
        for inputs, targets, mask in rows:
            start = min(next(spans_left)[0], width - k)  # keep the window inside the row
            positions = np.arange(start, start + k, dtype=np.int32)
            packed.append((inputs, positions, targets[positions], mask[positions]))
        out.append(packed)
    return out
