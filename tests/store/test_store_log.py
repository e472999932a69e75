"""The interaction log: appending, reading, units, retention, export, stats."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from personal.errors import ConfigError, InvalidInteraction, RecordNotFound
from personal.store import Interaction, InteractionLog, Passphrase, RawKey, Record

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_append_get_and_iterate(log: InteractionLog) -> None:
    rid = log.append(
        "What's on today?",
        "Two meetings.",
        unit="session-1",
        ts=T0,
        source="calendar",
        feedback={"thumbs": "up"},
        metadata={"lang": "en"},
    )
    record = log.get(rid)
    assert record == Record(
        rid,
        "session-1",
        T0,
        "calendar",
        "What's on today?",
        "Two meetings.",
        {"thumbs": "up"},
        {"lang": "en"},
    )
    assert list(log) == [record]
    assert len(log) == 1


def test_append_many_returns_consecutive_ids_in_order(log: InteractionLog) -> None:
    ids = log.append_many(Interaction(f"p{i}", f"r{i}") for i in range(5))
    assert ids == [1, 2, 3, 4, 5]
    assert [r.prompt for r in log.iter_records()] == [f"p{i}" for i in range(5)]
    assert log.append_many([]) == []


def test_ids_are_never_reused_after_erasure(log: InteractionLog) -> None:
    ids = log.append_many(Interaction("p", "r", unit="u") for _ in range(3))
    log.erase("u")
    assert log.append("p", "r") == ids[-1] + 1
    with pytest.raises(RecordNotFound, match="no record 1"):
        log.get(1)


def test_privacy_units_default_to_one_per_interaction(log: InteractionLog) -> None:
    ids = log.append_many([Interaction("a", "b"), Interaction("c", "d", unit="s")])
    assert [log.get(i).unit for i in ids] == [f"interaction:{ids[0]}", "s"]


def test_privacy_units_by_day_and_by_session(tmp_path: Path, raw_key: RawKey) -> None:
    with InteractionLog.create(tmp_path / "d", raw_key, unit_by="day") as log:
        rid = log.append("a", "b", ts=T0)
        assert log.get(rid).unit == "2024-05-01"
    with InteractionLog.create(tmp_path / "s", raw_key, unit_by="session") as log:
        with pytest.raises(InvalidInteraction, match="needs a unit"):
            log.append("a", "b")
        assert log.get(log.append("a", "b", unit="sess-9")).unit == "sess-9"
    with pytest.raises(ConfigError):
        InteractionLog.open(tmp_path / "s", raw_key, unit_by="week")  # type: ignore[arg-type]


def test_explicit_units_must_fit_the_unit_of_privacy(tmp_path: Path, raw_key: RawKey) -> None:
    """Under day the unit is the date of ts; under session never the per-interaction form."""
    with InteractionLog.create(tmp_path / "d", raw_key) as log:
        log.append("a", "b", ts=T0)  # interaction:1, logged before the unit was day
        log.unit_by = "day"
        with pytest.raises(InvalidInteraction, match="UTC date 2024-05-01"):
            log.append("a", "b", ts=T0, unit="session-1")
        assert log.get(log.append("a", "b", ts=T0, unit="2024-05-01")).unit == "2024-05-01"
        assert (log.misfit_count("day"), log.misfit_count("interaction")) == (1, 0)
        assert log.misfit_count("session") == 1
        log.unit_by = "session"
        with pytest.raises(InvalidInteraction, match="session id"):
            log.append("a", "b", unit="interaction:12")
        assert len(log) == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": 3}, "must be strings"),
        ({"unit": ""}, "unit must be 1 to 256 bytes"),
        ({"unit": "x" * 300}, "unit must be 1 to 256 bytes"),
        ({"unit": "\ud800"}, "not valid Unicode"),
        ({"source": 5}, "source must be a string"),
        ({"ts": "2024-01-01"}, "ts must be a datetime"),
        ({"metadata": {1: "x"}}, "string keys"),
        ({"feedback": object()}, "JSON-serializable"),
    ],
)
def test_malformed_interactions_are_refused_and_nothing_is_written(
    log: InteractionLog, fields: dict, message: str
) -> None:
    good = Interaction("ok", "ok")
    bad = Interaction(**{"prompt": "p", "response": "r", **fields})
    with pytest.raises(InvalidInteraction, match=f"interaction 1: .*{message}"):
        log.append_many([good, bad])
    with pytest.raises(InvalidInteraction, match="expected an Interaction"):
        log.append_many([{"prompt": "p"}])  # type: ignore[list-item]
    assert len(log) == 0


def test_an_exception_inside_a_batch_writes_nothing(log: InteractionLog) -> None:
    def interactions():
        yield Interaction("a", "b")
        raise RuntimeError("the app crashed while building the batch")

    with pytest.raises(RuntimeError):
        log.append_many(interactions())
    with pytest.raises(KeyError), log.atomic():
        log.append("a", "b")
        log.append_many([Interaction("c", "d")])
        raise KeyError
    assert len(log) == 0
    assert log.store.integrity_check() == ["ok"]


def test_filters_by_unit_time_and_source(log: InteractionLog) -> None:
    for day in range(5):
        log.append(f"p{day}", "r", unit=f"u{day % 2}", ts=T0 + timedelta(days=day), source="a")
    log.append("other", "r", unit="u0", ts=T0, source="b")
    assert [r.prompt for r in log.iter_records(units=["u1"])] == ["p1", "p3"]
    assert [r.prompt for r in log.iter_records(units="u1")] == ["p1", "p3"]
    window = log.iter_records(since=T0 + timedelta(days=1), until=date(2024, 5, 4))
    assert [r.prompt for r in window] == ["p1", "p2"]
    assert [r.prompt for r in log.iter_records(since="2024-05-04")] == ["p3", "p4"]
    assert [r.prompt for r in log.iter_records(source="b")] == ["other"]
    assert log.units() == ["u0", "u1"]
    assert log.units(source="b") == ["u0"]
    [u0, _] = log.unit_summaries()
    assert (u0.unit, u0.records, u0.first_ts, u0.last_ts) == ("u0", 4, T0, T0 + timedelta(days=4))
    assert log.count(units=["u0"], since=T0 + timedelta(hours=1)) == 2


def test_iteration_pages_through_many_records(log: InteractionLog) -> None:
    log.append_many(Interaction(f"p{i}", "r") for i in range(2500))
    assert [r.id for r in log.iter_records(page=100)] == list(range(1, 2501))


def test_timestamps_are_stored_in_utc(log: InteractionLog) -> None:
    paris = datetime(2024, 5, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))  # CEST, UTC+2
    naive = datetime(2024, 5, 1, 12, 0)
    a, b = log.append_many([Interaction("a", "b", ts=paris), Interaction("c", "d", ts=naive)])
    assert log.get(a).ts == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert log.get(b).ts == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_erase_by_unit_date_and_source(log: InteractionLog) -> None:
    for day in range(4):
        log.append(f"p{day}", "r", unit=f"u{day}", ts=T0 + timedelta(days=day), source="a")
    log.append("b", "r", unit="u9", ts=T0, source="b")
    assert log.erase("u1").records == 1
    assert log.erase(["u2", "nope"]).records == 1
    assert log.erase(before="2024-05-01T12:00:01").records == 2  # p0 and b
    assert log.erase(source="a").records == 1
    assert len(log) == 0
    with pytest.raises(ConfigError, match="erase needs"):
        log.erase()


def test_crypto_shredding_destroys_old_data_keys(
    store_path: Path, key: Passphrase, monkeypatch: pytest.MonkeyPatch
) -> None:
    with InteractionLog.create(store_path, key, epoch_period=timedelta(microseconds=1)) as log:
        old = log.append_many([Interaction("old", "r"), Interaction("old", "r")])
        cut = datetime.now(UTC)
        new = log.append("new", "r")
        report = log.shred_epochs_before(cut)
        assert report.records == 2 and report.epochs_shredded == [1] and report.purged
        assert [r.id for r in log] == [new]
        epochs = {e["epoch"]: e["state"] for e in log.store.keys.epochs()}
        assert epochs == {1: "shredded", 2: "current"}
        with pytest.raises(RecordNotFound):
            log.get(old[0])


def test_erasing_every_record_of_a_closed_epoch_destroys_its_key(
    store_path: Path, key: Passphrase
) -> None:
    with InteractionLog.create(store_path, key, max_encryptions=2) as log:
        log.append_many([Interaction("a", "b", unit="x"), Interaction("a", "b", unit="x")])
        log.append("c", "d", unit="y")
        assert log.erase("x").epochs_shredded == [1]
        # Epoch 2 was current: erasing from it re-keys it too (its key is destroyed).
        assert log.erase("y").epochs_shredded == [2]


def test_export_is_the_plaintext_of_every_record(log: InteractionLog) -> None:
    log.append("hé", "réponse", unit="u", ts=T0, feedback=1, metadata={"k": [1, 2]})
    out = io.StringIO()
    assert log.export_jsonl(out) == 1
    assert json.loads(out.getvalue()) == {
        "id": 1,
        "unit": "u",
        "ts": "2024-05-01T12:00:00.000000Z",
        "source": "default",
        "prompt": "hé",
        "response": "réponse",
        "feedback": 1,
        "metadata": {"k": [1, 2]},
    }
    assert "hé" in out.getvalue()  # readable, not \u-escaped


def test_stats_use_cleartext_metadata_only(log: InteractionLog) -> None:
    log.append_many([Interaction("a", "b", unit="u", ts=T0, source=s) for s in "xxy"])
    stats = log.stats()
    assert (stats.records, stats.units, stats.sources) == (3, 1, {"x": 2, "y": 1})
    assert stats.first_ts == "2024-05-01T12:00:00.000000Z"
    assert stats.key_kind == "passphrase"
    assert stats.current_epoch_encryptions == 3
    assert stats.schema == {"store": 1, "log": 1}
    assert json.dumps(stats.to_json())
    assert any("3 in 1 units" in line for line in stats.lines())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=st.text(max_size=1 << 20) | st.just("\U0001f600" * (1 << 18)),
    response=st.text(alphabet=st.characters(codec="utf-8"), max_size=2000),
    feedback=json_values,
    metadata=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    unit=st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30),
)
def test_arbitrary_unicode_round_trips(
    log: InteractionLog, prompt: str, response: str, feedback: object, metadata: dict, unit: str
) -> None:
    rid = log.append(prompt, response, unit=unit, feedback=feedback, metadata=metadata)
    record = log.get(rid)
    assert (record.prompt, record.response, record.unit) == (prompt, response, unit)
    assert (record.feedback, record.metadata) == (feedback, metadata)


def test_lone_surrogates_in_texts_round_trip_and_export(log: InteractionLog) -> None:
    rid = log.append("a\ud800b", "c")
    assert log.get(rid).prompt == "a\ud800b"
    out = io.StringIO()
    log.export_jsonl(out)
    assert json.loads(out.getvalue())["prompt"] == "a\ud800b"
