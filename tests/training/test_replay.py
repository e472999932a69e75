"""Replay buffer: reservoir uniformity (offers, erasures, samples), capacity bound, erasure,
sealed persistence, and CSPRNG randomness by default."""

from __future__ import annotations

import sqlite3
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from personal.errors import ConfigError, SeededNoiseWarning, TamperDetected
from personal.privacy.noise import RandomBytes
from personal.store import RawKey, Store
from personal.training import replay as replay_module
from personal.training.replay import ReplayBuffer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

KEY = RawKey(bytes(range(32)))
# chi-square critical values at p = 0.001 (scipy.stats.chi2.ppf(0.999, df)).
CHI2_999 = {49: 85.35, 59: 98.32, 19: 43.82}


def _seeded(seed: int = 0) -> RandomBytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return RandomBytes(seed, purpose="replay")


def _chi2(counts: Counter, units: list, expected: float) -> float:
    return sum((counts[u] - expected) ** 2 / expected for u in units)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.create(tmp_path / "store", KEY) as opened:
        yield opened


def test_reservoir_is_uniform_over_offered_units() -> None:
    rng, trials, capacity, units = _seeded(1), 2000, 10, list(range(50))
    counts: Counter = Counter()
    for _ in range(trials):
        buffer = ReplayBuffer(capacity, random=rng)
        for start in range(0, len(units), 7):  # several rounds of arrivals
            buffer.offer(units[start : start + 7])
        assert len(buffer) == capacity
        counts.update(buffer.units())
    expected = trials * capacity / len(units)
    # Sampling without replacement has less variance than the chi-square assumes: conservative.
    assert _chi2(counts, units, expected) < CHI2_999[49]
    # Early and late arrivals alike (Algorithm R's classic failure is favouring one end).
    early = sum(counts[u] for u in units[:10]) / (10 * trials)
    late = sum(counts[u] for u in units[-10:]) / (10 * trials)
    assert abs(early - 0.2) < 0.02 and abs(late - 0.2) < 0.02


def test_uniform_after_erasures_random_pairing() -> None:
    rng, trials, capacity = _seeded(2), 2000, 10
    first, erased, later = list(range(50)), list(range(0, 50, 5)), list(range(50, 70))
    alive = [u for u in first + later if u not in erased]  # 60 units
    counts: Counter = Counter()
    for _ in range(trials):
        buffer = ReplayBuffer(capacity, random=rng)
        buffer.offer(first)
        buffer.remove(erased)
        assert not set(erased) & set(buffer.units())
        buffer.offer(later)
        assert len(buffer) == capacity
        counts.update(buffer.units())
    assert not set(erased) & set(counts)
    assert _chi2(counts, alive, trials * capacity / len(alive)) < CHI2_999[59]


def test_sample_is_uniform_without_replacement() -> None:
    buffer = ReplayBuffer(20, random=_seeded(3))
    buffer.offer([f"u{i}" for i in range(20)])
    counts: Counter = Counter()
    for _ in range(2000):
        picked = buffer.sample(5)
        assert len(picked) == len(set(picked)) == 5
        counts.update(picked)
    held = buffer.units()
    assert _chi2(counts, held, 2000 * 5 / 20) < CHI2_999[19]
    assert sorted(buffer.sample(100), key=str) == sorted(held, key=str)  # at most len(buffer)
    assert buffer.sample(0) == []
    with pytest.raises(ConfigError):
        buffer.sample(-1)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(0, 6),
    ops=st.lists(
        st.tuples(st.sampled_from(["offer", "remove", "sample"]), st.lists(st.integers(0, 15))),
        max_size=25,
    ),
)
def test_capacity_bound_and_only_live_units(capacity: int, ops: list) -> None:
    buffer = ReplayBuffer(capacity, random=_seeded(4))
    alive: set[int] = set()
    ever: set[int] = set()
    for op, units in ops:
        if op == "offer":
            buffer.offer(units)
            alive |= set(units)
            ever |= set(units)
        elif op == "remove":
            buffer.remove(units)
            alive -= set(units)
        else:
            picked = buffer.sample(len(units))
            assert len(picked) == len(set(picked)) == min(len(units), len(buffer))
            assert set(picked) <= set(buffer.units())
        held = buffer.units()
        assert len(held) == len(set(held)) == len(buffer) <= capacity
        assert set(held) <= alive  # offered, and not removed since
        if len(ever) <= capacity:  # nothing was ever dropped: everything alive is held
            assert set(held) == alive


def test_erasure_removes_units(store: Store) -> None:
    buffer = ReplayBuffer.open(store, 8, random=_seeded(5))
    buffer.offer(["a", "b", "c", 4])
    assert buffer.remove(["b", 4, "never-offered"]) == 2
    assert sorted(map(str, buffer.units())) == ["a", "c"]
    assert "b" not in buffer and "a" in buffer
    buffer.save()
    assert "b" not in ReplayBuffer.open(store, 8, random=_seeded(6)).units()


def test_persistence_round_trip_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.create(path, KEY) as store:
        buffer = ReplayBuffer.open(store, 5, random=_seeded(7))
        assert len(buffer) == 0
        buffer.offer([f"s{i}" for i in range(12)] + [12, 13])
        buffer.remove(["s1", "s2"])
        buffer.save()
        saved = (buffer.units(), buffer.seen, buffer.population, buffer._gone_in, buffer._gone_out)
    with Store.open(path, KEY) as store:
        again = ReplayBuffer.open(store, 5, random=_seeded(8))
        state = (again.units(), again.seen, again.population, again._gone_in, again._gone_out)
        assert state == saved
        assert all(isinstance(u, int) for u in again.units() if not str(u).startswith("s"))
        # A smaller capacity evicts down to it, a larger one leaves room for new arrivals.
        smaller = ReplayBuffer.open(store, 3, random=_seeded(9))
        assert len(smaller) == 3 and set(smaller.units()) <= set(saved[0])
        larger = ReplayBuffer.open(store, 8, random=_seeded(10))
        assert larger.units() == saved[0]
        larger.offer(["new1", "new2", "new3"])
        assert len(larger) <= 8 and "new1" in larger


def test_sealed_at_rest(tmp_path: Path) -> None:
    path = tmp_path / "store"
    ids = [f"ZZsecret-unit-{i:03d}" for i in range(30)]
    with Store.create(path, KEY) as store:
        buffer = ReplayBuffer.open(store, 30, random=_seeded(11))
        buffer.offer(ids)
        buffer.save()
        store.checkpoint()
    raw = b"".join(p.read_bytes() for p in path.iterdir() if p.name.startswith("store.db"))
    assert b"ZZsecret-unit" not in raw
    conn = sqlite3.connect(path / "store.db")
    try:
        (blob,) = conn.execute(f"SELECT sealed FROM {replay_module.TABLE}").fetchone()
        assert b"ZZsecret" not in blob
        flipped = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
        conn.execute(f"UPDATE {replay_module.TABLE} SET sealed = ?", [flipped])
        conn.commit()
    finally:
        conn.close()
    with Store.open(path, KEY) as store, pytest.raises(TamperDetected):
        ReplayBuffer.open(store, 30)


def test_csprng_by_default_and_seeded_warns() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", SeededNoiseWarning)
        buffer = ReplayBuffer(4)  # no warning: the CSPRNG
    assert not buffer.random.seeded
    assert "os.urandom" in buffer.random.describe()
    with pytest.warns(SeededNoiseWarning):
        RandomBytes(0, purpose="replay")
    picks = {tuple(_draw(ReplayBuffer(4))) for _ in range(5)}
    assert len(picks) > 1  # fresh randomness each time


def _draw(buffer: ReplayBuffer) -> list[int]:
    buffer.offer(range(40))
    return sorted(buffer.units())


def test_same_seed_same_buffer_and_bad_input() -> None:
    a, b = ReplayBuffer(5, random=_seeded(12)), ReplayBuffer(5, random=_seeded(12))
    a.offer(range(100))
    b.offer(range(100))
    assert a.units() == b.units()
    a.offer([a.units()[0]])  # already held: skipped, not duplicated
    assert len(set(a.units())) == 5 and a.seen == 100
    with pytest.raises(ConfigError):
        ReplayBuffer(-1)
    with pytest.raises(ConfigError):
        ReplayBuffer(True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        a.offer([1.5])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        ReplayBuffer(3).save()  # no store
