"""The lifetime contract (ε, δ, unit, accountant, filter) lives in the ledger, not in a settings
row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from personal.errors import (
    LedgerIntegrityError,
    LifetimeContractFixed,
    PrivacyParameterError,
    UnitOfPrivacyMismatch,
)
from personal.privacy.contract import Contract, fits_unit
from personal.privacy.filter import Charge, RenyiFilter
from personal.privacy.gdp import gaussian_epsilon
from personal.privacy.ledger import Ledger
from personal.privacy.ledger import anchor as anchor_module
from personal.privacy.ledger.chain import DOMAIN, ENTRIES, MIGRATIONS, encode_body, entry_fields
from personal.privacy.rdp import filter_epsilon
from personal.privacy.rules import GAUSSIAN, RENYI
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


def _append_forged(store, ledger, forged) -> None:
    """Append ``(kind, record id, body)`` entries as an attacker with the keys would: chained,
    sealed and anchored, so that only verify's semantic checks can catch them."""
    for kind, rid, body in forged:
        with store.atomic():
            head, data = ledger.append(kind, rid, body)
        ledger._replace_state(head, ledger._table)
        anchor_module.write_head(store, ledger.anchor, head, data)


def test_the_genesis_entry_binds_the_whole_contract(store: Store) -> None:
    ledger = Ledger.open(store, STRICT)
    (genesis,) = ledger.entries()
    assert genesis.kind == "genesis" and genesis.body == {"format": 3, **STRICT.to_dict()}
    assert ledger.contract == STRICT
    _round(ledger)
    charge = ledger.entries()[1].body
    assert (charge["epsilon"], charge["delta"], charge["unit"]) == (1.0, 1e-6, "interaction")
    assert charge["policy_digest"] == "sha256:p"


@pytest.mark.parametrize(
    "change",
    [
        {"epsilon": 5.0},
        {"delta": 1e-5},
        {"unit": "day"},
        {"accountant": "prv"},
        {"filter": "gaussian"},
    ],
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
    _append_forged(store, ledger, forged)
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


# --- the filter rule (renyi / gaussian) is part of the contract ----------------------------------

GAUSS = Contract(epsilon=8.0, delta=1e-6, unit="interaction", accountant="rdp", filter="gaussian")
FULL = Charge(purpose="training", sample_rate=1.0, noise_multiplier=1.6, steps=4)


def test_a_gaussian_store_persists_its_filter_and_charges_by_it(
    store: Store, tmp_path: Path
) -> None:
    ledger = Ledger.open(store, GAUSS)
    assert ledger.entries()[0].body == {"format": 3, **GAUSS.to_dict()}
    rid = ledger.begin_round(FULL, ["a", "b"], accountant="rdp", **CONTEXT)
    ledger.finish_round(rid, "completed")
    assert ledger.entries()[1].body["filter"] == "gaussian"
    store.close()
    with Store.open(tmp_path / "store", KEY) as reopened:
        again = Ledger.open(reopened)  # no contract given: the chain's
        assert again.contract.filter == "gaussian" and again.rule is GAUSSIAN
        assert again.epsilon_of("a") == pytest.approx(gaussian_epsilon(2 / 1.6, 1e-6), rel=1e-12)
        assert again.verify().ok
        with pytest.raises(LifetimeContractFixed, match="filter: 'gaussian' -> 'renyi'"):
            Ledger.open(reopened, Contract(8.0, 1e-6, "interaction", "rdp", "renyi"))
        # A second round the Rényi filter would refuse (ε 8.23 > 8) fits the Gaussian one (6.88).
        second = Charge(purpose="training", sample_rate=1.0, noise_multiplier=4.0, steps=4)
        assert again.select(second, ["a"]).eligible == ("a",)
        renyi = RenyiFilter(epsilon=8.0, delta=1e-6)
        renyi.charge(FULL, ["a"])
        assert renyi.select(second, ["a"]).excluded == ("a",)


def test_the_filter_may_change_only_before_the_first_round(store: Store) -> None:
    Ledger.open(store, STRICT)
    ledger = Ledger.open(store, Contract(**{**STRICT.to_dict(), "filter": "gaussian"}))
    assert ledger.contract.filter == "gaussian"
    assert [e.kind for e in ledger.entries()] == ["genesis", "contract"]


def _format_2(store: Store) -> Ledger:
    """A ledger as the version before the filter rule wrote it: no ``filter`` anywhere."""
    ledger = Ledger(store, anchor_module.default_anchor(store))
    store.apply_migrations(MIGRATIONS)
    body = {"format": 2, "epsilon": 1.0, "delta": 1e-6, "unit": "interaction", "accountant": "rdp"}
    with store.atomic():
        head, data = ledger.append("genesis", None, body)
    anchor_module.write_head(store, ledger.anchor, head, data)
    ledger.load()
    return ledger


def test_a_ledger_without_a_filter_is_a_renyi_one(store: Store) -> None:
    _format_2(store)
    ledger = Ledger.open(store, STRICT)  # STRICT states filter = "renyi": nothing to append
    assert [e.kind for e in ledger.entries()] == ["genesis"]
    assert ledger.contract == STRICT and ledger.rule is RENYI
    _round(ledger)
    assert ledger.verify().ok
    assert ledger.epsilon_of("a") == pytest.approx(filter_epsilon(CHEAP.rdp(), delta=1e-6))
    with pytest.raises(LifetimeContractFixed, match="filter"):
        Ledger.open(store, Contract(**{**STRICT.to_dict(), "filter": "gaussian"}))


def test_verify_catches_a_rule_changed_after_a_round(store: Store) -> None:
    ledger = _format_2(store)
    ledger = Ledger.open(store, STRICT)
    _round(ledger)
    good = ledger.entries()[1].body
    forged = [
        ("contract", None, {"format": 3, **STRICT.to_dict(), "filter": "gaussian"}),
        ("charge", 9, {**good, "filter": "renyi"}),
    ]
    _append_forged(store, ledger, forged)
    problems = ledger.verify().problems
    assert any("changes the lifetime contract (filter)" in p for p in problems), problems
    assert any("admitted by the 'renyi' filter rule" in p for p in problems), problems


def test_a_genesis_resealed_with_another_filter_breaks_the_chain(
    store: Store, tmp_path: Path
) -> None:
    """Even with the store key, editing the genesis's filter changes its hash: the chain (the
    next entry's link) and the anchor no longer match."""
    ledger = Ledger.open(store, GAUSS)
    rid = ledger.begin_round(FULL, ["a"], accountant="rdp", **CONTEXT)
    ledger.finish_round(rid, "completed")
    row = ledger.read_rows()[0]
    forged = {"format": 3, **GAUSS.to_dict(), "filter": "renyi"}
    sealed = store.seal(
        ENTRIES, 1, entry_fields(row.kind, row.round_id, row.created_at, row.prev_hash),
        encode_body(forged), domain=DOMAIN,
    )  # fmt: skip
    store.db.execute(
        f"UPDATE {ENTRIES} SET key_epoch = ?, sealed = ? WHERE seq = 1", [sealed.epoch, sealed.blob]
    )
    assert any("entry 1" in p or "hash" in p for p in ledger.verify().problems)
    store.close()
    with Store.open(tmp_path / "store", KEY) as reopened, pytest.raises(LedgerIntegrityError):
        Ledger.open(reopened)
