"""AEAD sealing: associated data, padding, nonces, the key ring, binary round trips."""

from __future__ import annotations

from pathlib import Path

from personal.errors import TamperDetected, WrongKey
from personal.store import RawKey, Store
from personal.store.crypto import (
    KeyRing,
    RowAad,
    Sealed,
    aad,
    aad_prefix,
    new_dek,
    pad,
    padded_length,
    seal_batch,
    unpad,
)

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

MiB = 1 << 20


def test_associated_data_tells_types_and_positions_apart() -> None:
    p = aad_prefix("store", "t")
    seen = {
        aad(p, 1, 1, 1, [("a", "5")]),
        aad(p, 1, 1, 1, [("a", b"5")]),
        aad(p, 1, 1, 1, [("a", 5)]),
        aad(p, 1, 1, 1, [("a", None)]),
        aad(p, 1, 1, 1, [("a", "")]),
        aad(p, "1", 1, 1, [("a", "5")]),
        aad(p, 1, 2, 1, [("a", "5")]),
        aad(p, 1, 1, 2, [("a", "5")]),
        aad(p, 1, 1, 1, [("b", "5")]),
        aad(p, 1, 1, 1, [("a", "5"), ("b", "")]),
        aad(p, 1, 1, 1, [("a", "5b"), ("", "")]),
        aad(aad_prefix("store", "u"), 1, 1, 1, [("a", "5")]),
        aad(aad_prefix("other", "t"), 1, 1, 1, [("a", "5")]),
    }
    assert len(seen) == 13


def test_associated_data_rejects_unbindable_values() -> None:
    with pytest.raises(TypeError):
        aad(aad_prefix("s", "t"), 1, 1, 1, [("a", 1.5)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        RowAad(aad_prefix("s", "t"), ["a,b"])


@given(
    st.integers(0, 2**40),
    st.integers(0, 2**32),
    st.lists(st.binary(max_size=40), min_size=3, max_size=3),
)
def test_fast_row_aad_matches_the_generic_encoding(rid: int, epoch: int, values: list) -> None:
    prefix = aad_prefix("s", "records")
    names = ("unit", "ts", "source")
    fast = RowAad(prefix, names)
    generic = aad(prefix, rid, epoch, 1, list(zip(names, values, strict=True)))
    assert fast.one(rid, epoch, 1, values) == generic
    assert fast.many(epoch, 1, [rid], [values]) == [generic]


@given(st.binary(max_size=5000))
def test_padding_round_trips_and_hides_most_of_the_length(data: bytes) -> None:
    padded = pad(data)
    assert unpad(padded) == data
    assert len(padded) == padded_length(len(data) + 4) >= 64
    assert len(padded) <= max(64, (len(data) + 4) * 1.12 + 1)


def test_padmé_lengths_take_few_distinct_values() -> None:
    lengths = {padded_length(n) for n in range(1000, 2000)}
    assert len(lengths) <= 40  # vs 1000 distinct lengths unpadded


def test_seal_batch_uses_injected_nonces_and_is_standard_gcm() -> None:
    aead = AESGCM(bytes(32))
    nonce = bytes(12)
    [(n, ct)] = seal_batch(aead, [b"hello"], [b"ad"], [nonce])
    assert n == nonce
    assert unpad(aead.decrypt(nonce, ct, b"ad")) == b"hello"


def test_nonces_never_repeat_and_every_encryption_is_counted(
    tmp_path: Path, raw_key: RawKey
) -> None:
    n = 100_000
    with Store.create(tmp_path / "s", raw_key) as store:
        sealed: list[Sealed] = []
        for start in range(0, n, 10_000):
            items = [(i, (), b"") for i in range(start, start + 10_000)]
            with store.atomic():
                sealed += store.seal_many("t", items)
        assert len({s.nonce for s in sealed}) == n
        assert {len(s.nonce) for s in sealed} == {12}
        [epoch] = store.keys.epochs("t")
        assert epoch["encryptions"] == n


def test_a_new_epoch_starts_when_a_data_key_reaches_its_limit(
    tmp_path: Path, raw_key: RawKey
) -> None:
    with Store.create(tmp_path / "s", raw_key, max_encryptions=4) as store:
        sealed = store.seal_many("t", [(i, (), b"x") for i in range(10)])
        assert [s.epoch for s in sealed] == [1] * 4 + [2] * 4 + [3] * 2
        epochs = store.keys.epochs("t")
        assert [e["encryptions"] for e in epochs] == [4, 4, 2]
        assert [e["state"] for e in epochs] == ["closed", "closed", "current"]
        for i, s in enumerate(sealed):
            assert store.open_sealed("t", i, (), s) == b"x"


def test_max_encryptions_cannot_exceed_the_nist_bound(tmp_path: Path, raw_key: RawKey) -> None:
    with pytest.raises(ValueError, match="NIST"):
        Store.create(tmp_path / "s", raw_key, max_encryptions=(1 << 32) + 1)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=MiB))
@example(payload=b"")
@example(payload=bytes(MiB))
@example(payload=bytes(range(256)) * 4096)
def test_binary_payloads_up_to_1_mib_round_trip(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "s"
    store = Store.open(path, RawKey(bytes(32))) if path.exists() else None
    store = store or Store.create(path, RawKey(bytes(32)))
    with store:
        sealed = store.seal("blobs", 7, {"kind": "x", "n": 3}, payload)
        assert store.open_sealed("blobs", 7, {"kind": "x", "n": 3}, sealed) == payload
        assert len(sealed.ciphertext) == padded_length(len(payload) + 4) + 16


def test_sealed_values_only_open_where_they_were_sealed(tmp_path: Path, raw_key: RawKey) -> None:
    with Store.create(tmp_path / "a", raw_key) as a, Store.create(tmp_path / "b", raw_key) as b:
        sealed = a.seal("t", 1, {"unit": "u"}, b"secret")
        for store, table, rid, fields in [
            (a, "t", 2, {"unit": "u"}),
            (a, "other", 1, {"unit": "u"}),
            (a, "t", 1, {"unit": "v"}),
            (a, "t", 1, {"unit": "u", "extra": 1}),
            (b, "t", 1, {"unit": "u"}),
        ]:
            with pytest.raises(TamperDetected, match=f"row {rid}"):
                store.open_sealed(table, rid, fields, sealed)
        assert a.open_sealed("t", 1, {"unit": "u"}, sealed) == b"secret"


def test_key_ring_check_value_and_wrapping() -> None:
    ring = KeyRing("store", "kek1", bytes(32))
    nonce, check = ring.check_value()
    ring.verify_check(nonce, check)
    with pytest.raises(WrongKey):
        KeyRing("store", "kek1", bytes(31) + b"\x01").verify_check(nonce, check)
    with pytest.raises(WrongKey):
        KeyRing("other", "kek1", bytes(32)).verify_check(nonce, check)
    dek = new_dek()
    n, wrapped = ring.wrap(3, "records", dek)
    assert ring.unwrap(3, "records", n, wrapped) == dek
    for epoch, domain in [(4, "records"), (3, "ledger")]:
        with pytest.raises(TamperDetected, match="epoch"):
            ring.unwrap(epoch, domain, n, wrapped)
