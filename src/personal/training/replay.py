"""The replay buffer: which past private units a round may replay, chosen without their data.

The buffer remembers *unit ids* only. The records stay in the encrypted interaction log; a round
that replays a unit reads them from there, like any other training data.

**Selection must not depend on the data.** Which units the buffer keeps and which it hands to a
round are decided by a CSPRNG (:class:`~personal.privacy.noise.RandomBytes`) and by the order
in which unit ids arrive and are erased -- never by their content, loss, gradient norm or
anything computed from their records. A loss-based choice ("replay what the model forgets
most") would make the set of trained units a function of the private data, a release that no
DP step accounts for: an observer of the adapter could learn, say, which interactions the model
found surprising. Such a choice is only allowed if it is itself a DP mechanism charged to every
unit it reads, and this module offers none.

**Reservoir sampling** (Vitter 1985, "Random sampling with a reservoir", Algorithm R): while
fewer than ``capacity`` units have arrived, each is kept; afterwards the n-th unit replaces a
uniformly chosen slot with probability ``capacity / n``. At any time the buffer is a uniform
random subset of the units offered so far. **Erasure** uses *random pairing* (Gemulla, Lehner
and Haas 2006, "A dip in the reservoir: maintaining sample synopses of evolving datasets"): an
erased unit leaves the buffer at once, and the next arrivals are paired with the erasures so
that the buffer stays a uniform sample of the units offered and not erased. Memory is
``O(capacity)``; a round costs ``O(units offered + capacity)`` (the save writes one sealed
snapshot of the buffer).

**Charging: the caller's contract.** The buffer charges nothing; it only proposes units.
:meth:`ReplayBuffer.sample` picks ``k`` units uniformly (CSPRNG, data-independent), so a round
may condition on that choice. The round that replays them must then, before reading any of
their records, charge *each selected unit* its replay mechanism in the privacy ledger (a
:class:`~personal.privacy.filter.Charge` with ``purpose="replay"``, the Poisson rate and σ the
round uses over that replay set, and its step count), and drop the units the ledger refuses.
Units not selected are not read and are not charged. No privacy amplification is claimed for
the reservoir or for ``sample``: only the round's own Poisson sampling counts.

Units must be offered once each (when they first become training data); a unit offered again
while it is in the buffer is skipped, but one offered again after it left the buffer gets a new
chance. Every unit erased from the log must be passed to :meth:`ReplayBuffer.remove`.

**Persistence**: one row of the ``replay_buffer`` table, sealed with AES-256-GCM like every
other row of the store: a JSON snapshot of the slots, the capacity and the counters. Nothing
about the buffer is in cleartext.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from personal.errors import ConfigError, StoreCorrupt
from personal.privacy.noise import RandomBytes
from personal.store.core import Store
from personal.store.crypto import Sealed
from personal.store.db import Migrations

UnitId = str | int

TABLE = "replay_buffer"
ROW = "snapshot"
FORMAT = 1
MAX_CAPACITY = 10_000_000
_TWO_64 = 1 << 64
migrations = Migrations("replay")


@migrations(1)
def _create(db: Any) -> None:
    db.execute(
        f"CREATE TABLE {TABLE} (name TEXT PRIMARY KEY, key_epoch INTEGER NOT NULL, "
        "sealed BLOB NOT NULL)"
    )


class UniformDraws:
    """Unbiased integers from a :class:`RandomBytes` stream, drawn in batches of 64-bit words.

    ``below(n)`` is uniform on ``0 .. n-1`` by rejection: a word ``w`` is accepted when
    ``w < n · floor(2⁶⁴ / n)`` and mapped to ``w mod n`` (no modulo bias; a rejection has
    probability below ``n / 2⁶⁴``).
    """

    def __init__(self, random: RandomBytes, batch: int = 64) -> None:
        self.random = random
        self.batch = max(1, batch)
        self._words: list[int] = []

    def below(self, n: int) -> int:
        """A uniform integer in ``[0, n)``; ``n`` must be >= 1."""
        if n < 1:
            raise ConfigError(f"Cannot draw an integer below {n}.")
        limit = _TWO_64 - _TWO_64 % n
        while True:
            if not self._words:
                self._words = [int(w) for w in self.random.words(self.batch)]
            word = self._words.pop()
            if word < limit:
                return word % n


class ReplayBuffer:
    """A bounded, uniformly random set of past private unit ids, sealed in the store.

    Build it with :meth:`open` (it loads the saved buffer, if any); call :meth:`offer` with the
    units that arrive in a round, :meth:`sample` for the units to replay, :meth:`remove` on
    erasure, and :meth:`save` to persist. See the module docstring for what the caller must
    charge.

    Args:
        capacity: the most units kept (the policy's ``continual.buffer_capacity``).
        random: the randomness; ``None`` (the default, and the only private choice) uses the
            CSPRNG of :class:`RandomBytes`. Pass ``RandomBytes(seed, purpose="replay")`` in
            tests only.
        store: where :meth:`save` writes; ``None`` for a buffer that is never persisted.
    """

    def __init__(
        self,
        capacity: int,
        *,
        random: RandomBytes | None = None,
        store: Store | None = None,
    ) -> None:
        _check_capacity(capacity)
        self.capacity = capacity
        self.random = random if random is not None else RandomBytes(purpose="replay")
        self.store = store
        self._draws = UniformDraws(self.random)
        self._slots: list[UnitId] = []
        self._index: dict[UnitId, int] = {}  # unit -> its slot
        self.seen = 0  # units ever offered and admitted to the population
        self.population = 0  # units offered and not erased
        self._gone_in = 0  # erasures from the buffer not yet paired with an arrival (c1)
        self._gone_out = 0  # erasures outside the buffer not yet paired (c2)

    # --- persistence -----------------------------------------------------------------------

    @classmethod
    def open(
        cls, store: Store, capacity: int, *, random: RandomBytes | None = None
    ) -> ReplayBuffer:
        """The buffer saved in ``store`` (empty if none), resized to ``capacity``.

        A smaller capacity than the saved one evicts uniformly chosen units (a uniform subset
        of a uniform sample is uniform). A larger one leaves free slots that the next arrivals
        fill first, as if that many buffered units had been erased.

        Raises:
            TamperDetected: the saved snapshot was altered or moved.
            ConfigError: ``capacity`` is not an integer in ``[0, 10⁷]``.
        """
        _check_capacity(capacity)
        store.apply_migrations(migrations)
        buffer = cls(capacity, random=random, store=store)
        row = store.db.execute(
            f"SELECT key_epoch, sealed FROM {TABLE} WHERE name = ?", [ROW]
        ).fetchone()
        if row is not None:
            plaintext = store.open_sealed(TABLE, ROW, (), Sealed(int(row[0]), bytes(row[1])))
            buffer._restore(_parse(plaintext))
        return buffer

    def save(self) -> None:
        """Write the buffer to its store: one sealed snapshot, replaced atomically."""
        if self.store is None:
            raise ConfigError("This replay buffer has no store: build it with ReplayBuffer.open.")
        self.store.apply_migrations(migrations)
        snapshot = {
            "format": FORMAT,
            "capacity": self.capacity,
            "units": self._slots,
            "seen": self.seen,
            "population": self.population,
            "gone_in": self._gone_in,
            "gone_out": self._gone_out,
        }
        plaintext = json.dumps(snapshot, separators=(",", ":")).encode()
        with self.store.atomic() as db:
            sealed = self.store.seal(TABLE, ROW, (), plaintext)
            db.execute(
                f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?)", [ROW, sealed.epoch, sealed.blob]
            )

    def _restore(self, snapshot: dict[str, Any]) -> None:
        units = snapshot["units"]
        self.seen, self.population = snapshot["seen"], snapshot["population"]
        self._gone_in, self._gone_out = snapshot["gone_in"], snapshot["gone_out"]
        for unit in units:
            self._append(unit)
        while len(self._slots) > self.capacity:  # shrunk: evict uniformly at random
            self._discard(self._slots[self._draws.below(len(self._slots))])
        # Grown: the new slots are holes that the next arrivals fill, like erased slots. The
        # pending in-buffer erasures can never outnumber the holes.
        grown = max(0, self.capacity - snapshot["capacity"])
        self._gone_in = min(self._gone_in + grown, self.capacity - len(self._slots))

    # --- the reservoir ---------------------------------------------------------------------

    def offer(self, units: Iterable[UnitId]) -> None:
        """Offer the units that arrived in a round, in order (reservoir sampling).

        Each unit is kept or not by the CSPRNG alone. A unit already in the buffer is skipped.
        """
        for unit in units:
            _check_unit(unit)
            if unit in self._index:
                continue
            self.seen += 1
            self.population += 1
            pending = self._gone_in + self._gone_out
            if pending:
                # Random pairing: this arrival takes the place of an earlier erasure, chosen
                # uniformly; it enters the buffer iff that erasure had left the buffer.
                if self._draws.below(pending) < self._gone_in:
                    self._gone_in -= 1
                    self._append(unit)
                else:
                    self._gone_out -= 1
            elif len(self._slots) < self.capacity:
                self._append(unit)
            else:  # Algorithm R: keep the n-th unit with probability capacity / n
                slot = self._draws.below(self.population)
                if slot < self.capacity:
                    self._replace(slot, unit)

    def remove(self, units: Iterable[UnitId]) -> int:
        """Erasure: the given units leave the buffer; returns how many were in it.

        Pass every unit erased from the log. An erased unit that is not in the buffer but was
        offered earlier is counted as an erasure outside the buffer, so that later arrivals
        keep the buffer uniform; one never offered skews that pairing slightly (never privacy).
        """
        removed = 0
        for unit in dict.fromkeys(units):
            if unit in self._index:
                self._discard(unit)
                self._gone_in += 1
                removed += 1
            elif self.population > len(self._slots):
                self._gone_out += 1
            else:
                continue  # no unit known outside the buffer: this one was never offered
            self.population -= 1
        return removed

    def sample(self, k: int) -> list[UnitId]:
        """``min(k, len(self))`` distinct units drawn uniformly from the buffer (CSPRNG).

        The selection depends on nothing but the CSPRNG. The caller charges each returned unit
        (purpose ``"replay"``) before reading its records; see the module docstring.

        Raises:
            ConfigError: ``k`` is not an integer >= 0.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError(f"Replay sample size must be an integer >= 0, got {k!r}.")
        pool = list(self._slots)
        k = min(k, len(pool))
        for i in range(k):  # partial Fisher-Yates shuffle
            j = i + self._draws.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    def units(self) -> list[UnitId]:
        """The buffered units, in slot order (which carries no information)."""
        return list(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, unit: object) -> bool:
        return unit in self._index

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer({len(self)}/{self.capacity} units, {self.seen} offered, "
            f"{self.population} not erased)"
        )

    # --- slots -----------------------------------------------------------------------------

    def _append(self, unit: UnitId) -> None:
        self._index[unit] = len(self._slots)
        self._slots.append(unit)

    def _replace(self, slot: int, unit: UnitId) -> None:
        del self._index[self._slots[slot]]
        self._slots[slot] = unit
        self._index[unit] = slot

    def _discard(self, unit: UnitId) -> None:
        slot = self._index.pop(unit)
        last = self._slots.pop()
        if slot < len(self._slots):  # move the last unit into the hole: O(1)
            self._slots[slot] = last
            self._index[last] = slot


def _check_capacity(capacity: object) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise ConfigError(f"Replay buffer capacity must be an integer, got {capacity!r}.")
    if not 0 <= capacity <= MAX_CAPACITY:
        raise ConfigError(f"Replay buffer capacity must be in [0, {MAX_CAPACITY}], got {capacity}.")


def _check_unit(unit: object) -> None:
    if isinstance(unit, bool) or not isinstance(unit, str | int):
        raise ConfigError(f"A unit id is a string or an integer, got {unit!r}.")


def _parse(plaintext: bytes) -> dict[str, Any]:
    """The snapshot as a dict; :class:`StoreCorrupt` if it is not one this version wrote."""
    try:
        snapshot = json.loads(plaintext)
        ok = (
            isinstance(snapshot, dict)
            and snapshot.get("format") == FORMAT
            and isinstance(snapshot.get("units"), list)
            and all(_is_count(snapshot.get(k)) for k in _COUNTERS)
            and not any(
                isinstance(u, bool) or not isinstance(u, str | int) for u in snapshot["units"]
            )
            and len(set(snapshot["units"])) == len(snapshot["units"])
            and len(snapshot["units"]) <= snapshot["capacity"]
        )
    except ValueError:
        ok = False
    if not ok:  # authenticated, so only a bug or a newer version could get here
        raise StoreCorrupt(
            "the replay buffer snapshot is not in a format this version reads: upgrade "
            "personal, or drop the buffer (it only affects which units are replayed)"
        )
    return snapshot


_COUNTERS: Sequence[str] = ("capacity", "seen", "population", "gone_in", "gone_out")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
