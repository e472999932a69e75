"""Key providers: passphrases (scrypt), the OS keyring, raw keys; wrong keys fail first."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from personal.errors import KeyProviderError, StoreCorrupt, WrongKey
from personal.store import InteractionLog, KeyringKey, Passphrase, RawKey, ScryptParams, Store
from personal.store import log as log_module

import pytest
from store_helpers import raw_db


def test_passphrase_parameters_are_recorded_and_used_to_reopen(
    store_path: Path, cheap_scrypt: ScryptParams
) -> None:
    Store.create(store_path, Passphrase("pw", ScryptParams(log_n=5, r=2, p=1))).close()
    with raw_db(store_path) as conn:
        kind, params = conn.execute("SELECT kind, params FROM store_kek").fetchone()
    params = json.loads(params)
    assert kind == "passphrase"
    assert (params["kdf"], params["log_n"], params["r"], params["p"]) == ("scrypt", 5, 2, 1)
    assert len(bytes.fromhex(params["salt"])) == 16
    # The opener's own default cost does not matter: the recorded one is used.
    Store.open(store_path, Passphrase("pw", ScryptParams(log_n=6))).close()


def test_passphrases_are_unicode_normalised(store_path: Path) -> None:
    Store.create(store_path, Passphrase("caf\u00e9")).close()  # composed é
    Store.open(store_path, Passphrase("cafe\u0301")).close()  # e + combining accent


def test_wrong_passphrase_fails_before_any_record_is_read(
    log: InteractionLog, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.append("secret", "answer")
    log.close()

    def no_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("a record was read")

    monkeypatch.setattr(log_module.InteractionLog, "raw_pages", no_reads)
    with pytest.raises(WrongKey, match="wrong key"):
        InteractionLog.open(store_path, Passphrase("not it"))


def test_the_kind_of_key_must_match(store_path: Path, key: Passphrase) -> None:
    Store.create(store_path, key).close()
    with pytest.raises(WrongKey, match="passphrase key, not a raw key"):
        Store.open(store_path, RawKey(bytes(32)))


def test_raw_keys_are_exactly_32_bytes(store_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="32 bytes"):
        RawKey(b"short")
    Store.create(store_path, RawKey(bytes(32))).close()
    with pytest.raises(WrongKey):
        Store.open(store_path, RawKey(b"\x01" * 32))


def test_bad_passphrases_and_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyProviderError, match="empty"):
        Passphrase("")
    with pytest.raises(KeyProviderError, match="cannot read key file"):
        Passphrase.from_file(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(KeyProviderError, match="is empty"):
        Passphrase.from_file(tmp_path / "empty")
    (tmp_path / "k").write_text("pw\n")
    Store.create(tmp_path / "s", Passphrase.from_file(tmp_path / "k")).close()
    Store.open(tmp_path / "s", Passphrase("pw")).close()  # the newline is not part of it


def test_scrypt_parameters_are_bounded() -> None:
    with pytest.raises(KeyProviderError, match="out of range"):
        ScryptParams(log_n=30)
    with pytest.raises(KeyProviderError, match="1 GiB"):
        ScryptParams(log_n=22, r=32)


def test_tampered_kdf_parameters_are_refused(store_path: Path, key: Passphrase) -> None:
    Store.create(store_path, key).close()
    with raw_db(store_path) as conn:
        conn.execute("UPDATE store_kek SET params = ?", [json.dumps({"kdf": "md5"})])
    with pytest.raises(StoreCorrupt, match="passphrase parameters"):
        Store.open(store_path, key)


def test_secrets_do_not_show_in_reprs(key: Passphrase) -> None:
    assert "correct" not in repr(key)
    assert "00" not in repr(RawKey(bytes(32)))


# --- the OS keyring ----------------------------------------------------------------------------


@pytest.fixture
def memory_keyring() -> dict:
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend
    from keyring.errors import PasswordDeleteError

    entries: dict[tuple[str, str], str] = {}

    class MemoryKeyring(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def get_password(self, service: str, username: str) -> str | None:
            return entries.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            entries[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            if (service, username) not in entries:
                raise PasswordDeleteError(username)
            del entries[(service, username)]

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    yield entries
    keyring.set_keyring(previous)


def test_keyring_keys_create_open_and_rotate(store_path: Path, memory_keyring: dict) -> None:
    with InteractionLog.create(store_path, KeyringKey()) as log:
        rid = log.append("p", "r")
    assert len(memory_keyring) == 1
    [(service, username)] = memory_keyring
    assert service == "personal" and username.startswith(log.store.store_id)
    with InteractionLog.open(store_path, KeyringKey()) as log:
        log.store.rotate_keys(KeyringKey())
    assert len(memory_keyring) == 1 and (service, username) not in memory_keyring
    with InteractionLog.open(store_path, KeyringKey()) as log:
        assert log.get(rid).prompt == "p"
    memory_keyring.clear()
    with pytest.raises(KeyProviderError, match="no entry"):
        Store.open(store_path, KeyringKey())


def test_keyring_rotation_never_overwrites_the_live_entry(
    store_path: Path, memory_keyring: dict
) -> None:
    with Store.create(store_path, KeyringKey(username="me")) as store:
        with pytest.raises(KeyProviderError, match="overwrite"):
            store.rotate_keys(KeyringKey(username="me"))
        store.rotate_keys(KeyringKey(username="me-2"))
    assert list(memory_keyring) == [("personal", "me-2")]
    Store.open(store_path, KeyringKey()).close()


def test_keyring_without_the_package_says_how_to_install_it(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "keyring", None)
    with pytest.raises(KeyProviderError, match=r"pip install 'personal\[keyring\]'"):
        Store.create(store_path, KeyringKey())
