"""``personal verify`` checks every sealed row of every table; ``personal repair`` rebuilds the
derived ones (replay buffer, EWC state, round bookkeeping) and never touches records or the
ledger (issue 19, item 7)."""

from __future__ import annotations

import json
from pathlib import Path

from personal.store import InteractionLog, Passphrase
from personal.training.replay import ReplayBuffer

import pytest
from trained_store import PASS, build, copy, flip, rows, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory) -> Path:
    return build(tmp_path_factory.mktemp("trained"), str(tiny_model_factory("llama")))


@pytest.fixture
def store(trained: Path, tmp_path: Path) -> Path:
    return copy(trained, tmp_path)


def test_a_sound_trained_store_verifies(store: Path) -> None:
    result = run("verify", store, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] and data["records"] == 10 and data["rows"] >= 5  # settings, ewc, replay
    assert data["bad_rows"] == [] and data["ledger_problems"] == []


@pytest.mark.parametrize(
    ("table", "where", "named"),
    [
        ("store_settings", "name = 'policy'", "store_settings row 'policy'"),
        ("store_settings", "name = 'base'", "store_settings row 'base'"),
        ("ewc_state", "name = 'state'", "ewc_state row 'state'"),
        ("replay_buffer", "name = 'snapshot'", "replay_buffer row 'snapshot'"),
        ("ledger_entries", "seq = 2", "ledger entry 2 failed authentication"),
    ],
)
def test_verify_finds_a_flipped_byte_in_any_sealed_row(
    store: Path, table: str, where: str, named: str
) -> None:
    flip(store, table, where)
    result = run("verify", store)
    assert result.exit_code == 1, result.output
    assert named in result.output and "FAILED" in result.output
    assert "Traceback" not in result.output


def test_repair_rebuilds_derived_state_and_leaves_records_and_ledger_alone(store: Path) -> None:
    before = {t: rows(store, t) for t in ("records", "ledger_entries")}
    anchor = (store / "ledger.anchor").read_bytes()
    for table, where in (
        ("replay_buffer", "name = 'snapshot'"),
        ("ewc_state", "name = 'state'"),
        ("store_settings", "name = 'policy'"),
        ("store_settings", "name = 'continual_last_record_id'"),
    ):
        flip(store, table, where)
    assert run("verify", store).exit_code == 1

    repaired = run("repair", store)
    assert repaired.exit_code == 0, repaired.output
    for what in ("replay buffer: rebuilt", "EWC state: dropped", "'policy'", "high-water"):
        assert what in repaired.output
    assert run("verify", store).exit_code == 0
    assert {t: rows(store, t) for t in before} == before
    assert (store / "ledger.anchor").read_bytes() == anchor
    with InteractionLog.open(store, Passphrase(PASS)) as log:
        ReplayBuffer.open(log.store, 1024)  # opens again
    assert run("repair", store).output.startswith("nothing to rebuild")


def test_repair_rebuilds_the_replay_buffer_from_the_units_earlier_rounds_offered(
    store: Path,
) -> None:
    flip(store, "replay_buffer", "name = 'snapshot'")
    assert run("repair", store).exit_code == 0
    with InteractionLog.open(store, Passphrase(PASS)) as log:
        buffer = ReplayBuffer.open(log.store, 1024)
        assert sorted(buffer.units()) == sorted(log.units())  # 10 units < capacity: all kept


def test_repair_leaves_a_bad_ledger_entry_and_says_it_needs_a_backup(store: Path) -> None:
    flip(store, "ledger_entries", "seq = 2")
    entries = rows(store, "ledger_entries")
    result = run("repair", store)
    assert result.exit_code == 1, result.output
    assert "not repaired" in result.output and "ledger entry 2" in result.output
    assert rows(store, "ledger_entries") == entries
