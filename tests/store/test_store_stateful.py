"""A stateful test: random appends, erasures, key rotations, shredding and reopenings checked
against an in-memory model of the store."""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from personal.store import Interaction, InteractionLog, RawKey

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

T0 = datetime(2024, 1, 1, tzinfo=UTC)
units = st.sampled_from(["u0", "u1", "u2", "u3"])
days = st.integers(0, 9)
texts = st.text(max_size=30)
interactions = st.tuples(texts, texts, units, days)


class StoreMachine(RuleBasedStateMachine):
    """The model: ``{id: (prompt, response, unit, day)}`` and the current key."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="personal-stateful-"))
        self.key = RawKey(os.urandom(32))
        self.log = InteractionLog.create(self.dir / "s", self.key, max_encryptions=3)
        self.model: dict[int, tuple[str, str, str, int]] = {}
        self.last_id = 0

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _add(self, ids: list[int], items: list[tuple[str, str, str, int]]) -> None:
        assert all(rid > self.last_id for rid in ids)  # ids only grow, never reused
        self.model.update(zip(ids, items, strict=True))
        self.last_id = max(ids, default=self.last_id)

    @rule(item=interactions)
    def append(self, item: tuple[str, str, str, int]) -> None:
        prompt, response, unit, day = item
        rid = self.log.append(prompt, response, unit=unit, ts=T0 + timedelta(days=day))
        self._add([rid], [item])

    @rule(items=st.lists(interactions, max_size=7))
    def append_many(self, items: list[tuple[str, str, str, int]]) -> None:
        batch = [Interaction(p, r, unit=u, ts=T0 + timedelta(days=d)) for p, r, u, d in items]
        self._add(self.log.append_many(batch), items)

    @rule(unit=units)
    def erase_unit(self, unit: str) -> None:
        expected = sum(1 for v in self.model.values() if v[2] == unit)
        assert self.log.erase(unit).records == expected
        self.model = {k: v for k, v in self.model.items() if v[2] != unit}

    @rule(day=days)
    def erase_before(self, day: int) -> None:
        expected = sum(1 for v in self.model.values() if v[3] < day)
        assert self.log.erase(before=T0 + timedelta(days=day)).records == expected
        self.model = {k: v for k, v in self.model.items() if v[3] >= day}

    @rule()
    def rotate(self) -> None:
        self.key = RawKey(os.urandom(32))
        self.log.store.rotate_keys(self.key)

    @rule()
    def shred_everything_written_so_far(self) -> None:
        report = self.log.shred_epochs_before(datetime.now(UTC) + timedelta(seconds=1))
        assert report.records == len(self.model)
        self.model = {}

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = InteractionLog.open(self.dir / "s", self.key, max_encryptions=3)

    @invariant()
    def matches_the_model(self) -> None:
        stored = {
            r.id: (r.prompt, r.response, r.unit, (r.ts - T0).days) for r in self.log.iter_records()
        }
        assert stored == self.model
        assert self.log.units() == sorted({v[2] for v in self.model.values()})

    @invariant()
    def keys_are_consistent(self) -> None:
        epochs = self.log.store.keys.epochs("records")
        assert sum(e["state"] == "current" for e in epochs) <= 1
        assert all(e["encryptions"] <= 3 for e in epochs)


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
test_store_against_a_model = StoreMachine.TestCase
