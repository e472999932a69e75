"""A disk that fills up during ``train`` gets a true message: it names the rounds already
charged and never says the store is unchanged (issue 19, item 9)."""

from __future__ import annotations

import errno
from pathlib import Path

from personal.errors import DiskFull
from personal.privacy.ledger import Ledger
from personal.store import InteractionLog, Passphrase, ScryptParams, Store
from personal.store import keys as keys_module
from personal.training.charged import charges_on_disk_full
from personal.training.runner import RoundRunner

import pytest
from trained_store import PASS, POLICY, run

FULL = "the disk is full (or the file-size limit was reached): the write was rolled back"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(keys_module, "DEFAULT_SCRYPT", ScryptParams(log_n=4, r=1, p=1))
    with InteractionLog.create(tmp_path / "store", Passphrase(PASS), synchronous="NORMAL") as log:
        for i in range(10):
            log.append(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} minutes late.")
    (tmp_path / "policy.toml").write_text(POLICY)
    return tmp_path / "store"


def _full(*args: object, **kwargs: object) -> None:
    raise DiskFull(FULL)


@pytest.mark.slow  # a real training round (~20 s on 2 shared cores)
def test_disk_full_after_charging_names_what_was_charged(
    store: Path, tiny_model_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RoundRunner, "save_and_activate", _full)
    policy = store.parent / "policy.toml"
    result = run("train", store, "--base", tiny_model_factory("llama"), "--policy", policy)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "unchanged" not in result.output
    assert "had already been charged to the privacy ledger and stay charged" in result.output
    assert "#1 (" in result.output and "largest per-unit ε went from 0 to" in result.output
    with Store.open(store, Passphrase(PASS)) as opened:
        ledger = Ledger.open(opened)
        assert [r.round_id for r in ledger.rounds() if r.charged][:1] == [1]
        assert max(ledger.epsilons().values()) > 0  # what the message said: charged, for good


def test_disk_full_before_any_charge_says_nothing_was_charged() -> None:
    class Quiet:  # a ledger in which nothing happens
        def rounds(self) -> list:
            return []

        def epsilons(self) -> dict:
            return {}

    nothing = "nothing was charged to the privacy ledger"
    with pytest.raises(DiskFull, match=nothing), charges_on_disk_full(Quiet()):
        raise OSError(errno.ENOSPC, "No space left on device")
    # Other errors pass unchanged.
    with pytest.raises(OSError, match="Permission denied"), charges_on_disk_full(Quiet()):
        raise OSError(errno.EACCES, "Permission denied")
