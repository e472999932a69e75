"""The lifetime contract (ε, δ, unit, accountant) lives in the ledger, not in a settings row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from personal.errors import (
    LifetimeContractFixed,
    PrivacyParameterError,
    UnitOfPrivacyMismatch,
)
from personal.privacy import anchor as anchor_module
from personal.privacy.chain import MIGRATIONS
from personal.privacy.contract import Contract, fits_unit
from personal.privacy.filter import Charge
from personal.privacy.ledger import Ledger
from personal.store import RawKey, Store
from personal.store.settings import StoreSettings

import pytest

KEY = RawKey(bytes(range(32)))
STRICT = Contract(epsilon=1.0, delta=1e-6, unit="interaction", accountant="rdp")
CHEAP = Charge(purpose="training", sample_rate=0.2, noise_multiplier=3.0, steps=3)
CONTEXT = {"base_fingerprint": "sha256:b", "clip_norm": 1.0, "policy_digest": "sha256:p"}


def _round(ledger: Ledger, units=("a", "b"), accountant: str = "rdp") -> int:
    rid = ledger.begin_round(CHEAP, list(units), accountant=accountant, **CONTEXT)
    ledger.finish_round(rid, "completed")
    return rid


@pytest.fixture
def store(tmp_path: Path):
    with Store.create(tmp_path / "store", KEY) as opened:
        yield opened


def test_the_genesis_entry_binds_the_whole_contract(store: Store) -> None:
    ledger = Ledger.open(store, STRICT)
    (genesis,) = ledger.entries()
    assert genesis.kind == "genesis" and genesis.body == {"format": 2, **STRICT.to_dict()}
    assert ledger.contract == STRICT
    _round(ledger)
    charge = ledger.entries()[1].body
    assert (charge["epsilon"], charge["delta"], charge["unit"]) == (1.0, 1e-6, "interaction")
    assert charge["policy_digest"] == "sha256:p"


@pytest.mark.parametrize(
    "change",
    [{"epsilon": 5.0}, {"delta": 1e-5}, {"unit": "day"}, {"accountant": "prv"}],
)
def test_no_field_changes_once_a_round_is_recorded(store: Store, change: dict) -> None:
    ledger = Ledger.open(store, STRICT)
    _round(ledger)
    head = ledger.head
    wanted = Contract(**{**STRICT.to_dict(), **change})
    with pytest.raises(LifetimeContractFixed, match=next(iter(change))):
        Ledger.open(store, wanted)
    assert Ledger.open(store).head == head  # nothing was appended


def test_before_the_first_round_a_contract_may_be_replaced(store: Store) -> None:
    """A first, failed, uncharged attempt does not fix the policy for life."""
    Ledger.open(store, STRICT)
    looser = Contract(epsilon=8.0, delta=1e-6, unit="day", accountant="prv")
    ledger = Ledger.open(store, looser)
    assert ledger.contract == looser
    assert [e.kind for e in ledger.entries()] == ["genesis", "contract"]
    _round(ledger, ["2024-05-01"], accountant="prv")
    assert ledger.verify().ok
    with pytest.raises(LifetimeContractFixed):
        Ledger.open(store, STRICT)


def test_deleting_the_settings_row_changes_nothing(store: Store) -> None:
    StoreSettings(store).set("policy", {"privacy": {"lifetime_epsilon": 1.0, "delta": 1e-6}})
    ledger = Ledger.open(store, STRICT)
    _round(ledger)
    store.db.execute("DELETE FROM store_settings WHERE name = 'policy'")
    with pytest.raises(LifetimeContractFixed, match=r"epsilon: 1\.0 -> 5\.0"):
        Ledger.open(store, epsilon=5.0, delta=1e-6)
    assert Ledger.open(store).contract == STRICT


def test_rounds_must_fit_the_unit_and_accountant(store: Store) -> None:
    ledger = Ledger.open(store, Contract(2.0, 1e-6, "day", "rdp"))
    with pytest.raises(UnitOfPrivacyMismatch, match="unit of privacy"):
        ledger.begin_round(CHEAP, ["interaction:1"], accountant="rdp", **CONTEXT)
    with pytest.raises(PrivacyParameterError, match="accountant"):
        ledger.begin_round(CHEAP, ["2024-05-01"], accountant="prv", **CONTEXT)
    with pytest.raises(PrivacyParameterError, match="policy_digest"):
        ledger.begin_round(
            CHEAP, ["2024-05-01"], accountant="rdp", **{**CONTEXT, "policy_digest": None}
        )
    assert ledger.rounds() == []


def test_unit_shapes() -> None:
    assert fits_unit("day", "2024-05-01") and not fits_unit("day", "interaction:3")
    assert fits_unit("session", "s-42") and not fits_unit("session", "interaction:3")
    assert fits_unit("interaction", "anything")


def _legacy(store: Store, sealed_policy: dict | None) -> None:
    """A ledger as an older version wrote it: a format-1 genesis (ε, δ) and one round."""
    ledger = Ledger(store, anchor_module.default_anchor(store))
    store.apply_migrations(MIGRATIONS)
    with store.atomic():
        head, data = ledger.append("genesis", None, {"format": 1, "epsilon": 2.0, "delta": 1e-6})
    anchor_module.write_head(store, ledger.anchor, head, data)
    ledger.load()
    ledger._bound = {**ledger._bound, "unit": "interaction", "accountant": "rdp"}
    _round(ledger)
    if sealed_policy is not None:
        StoreSettings(store).set("policy", sealed_policy)


def test_an_old_ledger_is_completed_from_the_sealed_policy(store: Store) -> None:
    _legacy(store, {"privacy": {"lifetime_epsilon": 2.0, "delta": 1e-6, "unit": "session",
                                "accountant": "prv"}})  # fmt: skip
    ledger = Ledger.open(store, epsilon=2.0, delta=1e-6)
    assert ledger.contract == Contract(2.0, 1e-6, "session", "prv")
    assert [e.kind for e in ledger.entries()][-1] == "contract"
    report = ledger.verify()
    assert report.contract == ledger.contract.to_dict()


def test_an_old_ledger_keeps_its_genesis_budget(store: Store) -> None:
    """The sealed row is gone: the opening policy supplies the unit, never ε or δ."""
    _legacy(store, None)
    with pytest.raises(LifetimeContractFixed, match=r"epsilon: 2\.0 -> 9\.0"):
        Ledger.open(store, Contract(9.0, 1e-6))
    assert Ledger.open(store, Contract(2.0, 1e-6)).contract == Contract(2.0, 1e-6)


def test_verify_holds_every_round_to_the_contract(store: Store) -> None:
    ledger = Ledger.open(store, STRICT)
    _round(ledger)
    good = ledger.entries()[1].body
    forged = [
        ("contract", None, {"format": 2, **STRICT.to_dict(), "epsilon": 5.0}),
        ("charge", 9, {**good, "epsilon": 7.0}),
    ]
    for kind, rid, body in forged:
        with store.atomic():
            head, data = ledger.append(kind, rid, body)
        ledger._replace_state(head, ledger._table)
        anchor_module.write_head(store, ledger.anchor, head, data)
    problems = ledger.verify().problems
    assert any("changes the lifetime contract (epsilon)" in p for p in problems), problems
    assert any("charged under ε=7.0" in p for p in problems), problems


def test_a_tampered_contract_entry_is_detected(store: Store, tmp_path: Path) -> None:
    Ledger.open(store, STRICT)
    store.close()
    conn = sqlite3.connect(tmp_path / "store" / "store.db")
    conn.execute("UPDATE ledger_entries SET sealed = sealed || x'00' WHERE seq = 1")
    conn.commit()
    conn.close()
    with Store.open(tmp_path / "store", KEY) as reopened, pytest.raises(Exception) as err:
        Ledger.open(reopened)
    assert "ledger" in str(err.value)
