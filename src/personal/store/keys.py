"""Key providers: where the store's key-encryption key (KEK) comes from.

The KEK never touches a record: it only wraps the per-epoch data keys (see
:mod:`personal.store.crypto`). A provider makes a fresh KEK when a store is created or its keys
are rotated (:meth:`KeyProvider.new_kek`), returning the *non-secret* parameters to record in the
store (scrypt salt and cost, keyring entry name), and later recomputes the same KEK from those
recorded parameters (:meth:`KeyProvider.derive_kek`). The store checks the result against an
authenticated check value, so a wrong key fails with :class:`~personal.errors.WrongKey` before
any record is read.

Three providers:

* :class:`Passphrase`: scrypt (``cryptography``'s :class:`Scrypt`) over the NFC-normalised
  passphrase with a random 16-byte salt; the cost (``log_n``, ``r``, ``p``) is recorded, so a
  store always reopens with the cost it was created with.
* :class:`KeyringKey`: a random 32-byte key kept in the OS keyring (optional ``keyring`` extra).
* :class:`RawKey`: 32 caller-supplied bytes, for tests and integrations that manage keys.
"""

from __future__ import annotations

import base64
import contextlib
import os
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from personal.errors import KeyProviderError, StoreCorrupt

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_BYTES = 32
SALT_BYTES = 16
_KEYRING_HINT = (
    "the OS keyring needs the optional 'keyring' package: pip install 'personal[keyring]'"
)


@dataclass(frozen=True)
class ScryptParams:
    """The cost of scrypt: ``n = 2**log_n``, block size ``r``, parallelism ``p``.

    The default (``log_n=17, r=8, p=1``: 128 MiB, ~0.5 s on a laptop core) follows OWASP's
    recommendation for scrypt. Tests pass a cheap one; it is recorded in the store, so a store
    created cheaply stays cheap to open (and weak): never do that with real data.
    """

    log_n: int = 17
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if not (1 <= self.log_n <= 22 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise KeyProviderError(
                f"scrypt parameters out of range (log_n={self.log_n}, r={self.r}, p={self.p}): "
                "use 1 <= log_n <= 22, 1 <= r <= 32, 1 <= p <= 16"
            )
        if (128 * self.r << self.log_n) > 1 << 30:
            raise KeyProviderError("scrypt parameters need more than 1 GiB of memory: lower them")

    def derive(self, secret: bytes, salt: bytes) -> bytes:
        """Run scrypt; returns a 32-byte key."""
        kdf = Scrypt(salt=salt, length=KEY_BYTES, n=1 << self.log_n, r=self.r, p=self.p)
        return kdf.derive(secret)


DEFAULT_SCRYPT = ScryptParams()


class KeyProvider(ABC):
    """Supplies the key-encryption key of a store."""

    #: Recorded in the store, so opening it with another kind of key gives a clear error.
    kind: ClassVar[str]

    @abstractmethod
    def new_kek(self, label: str) -> tuple[bytes, dict[str, Any]]:
        """Make a KEK for a new store (or a key rotation).

        Args:
            label: A name unique to this store and KEK (``"<store id>/<kek id>"``).

        Returns:
            The 32-byte KEK and the non-secret parameters to record in the store.
        """

    @abstractmethod
    def derive_kek(self, params: Mapping[str, Any], label: str) -> bytes:
        """Recompute the KEK from the parameters recorded by :meth:`new_kek`."""

    def forget(self, params: Mapping[str, Any], label: str) -> None:  # noqa: B027
        """Drop whatever the provider keeps for a retired KEK (a keyring entry). Best effort."""


class RawKey(KeyProvider):
    """A raw 32-byte key supplied by the caller (tests, integrations with their own KMS)."""

    kind = "raw"

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise KeyProviderError(f"a raw key must be exactly {KEY_BYTES} bytes")
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "RawKey(<32 bytes>)"

    def new_kek(self, label: str) -> tuple[bytes, dict[str, Any]]:
        return self._key, {}

    def derive_kek(self, params: Mapping[str, Any], label: str) -> bytes:
        return self._key


class Passphrase(KeyProvider):
    """A passphrase stretched with scrypt into the KEK.

    Args:
        passphrase: The passphrase; ``str`` is NFC-normalised before UTF-8 encoding so the same
            passphrase typed on different systems gives the same key.
        params: The scrypt cost for *new* KEKs; opening uses the cost recorded in the store.
    """

    kind = "passphrase"

    def __init__(self, passphrase: str | bytes, params: ScryptParams | None = None) -> None:
        if isinstance(passphrase, str):
            passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
        if not passphrase:
            raise KeyProviderError("the passphrase is empty: give a non-empty passphrase")
        self._secret = bytes(passphrase)
        self.params = params or DEFAULT_SCRYPT

    def __repr__(self) -> str:
        return f"Passphrase(<hidden>, {self.params})"

    @classmethod
    def from_file(cls, path: str | Path, params: ScryptParams | None = None) -> Passphrase:
        """Read a passphrase from a key file (its trailing newline is not part of it)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyProviderError(f"cannot read key file {path}: {exc.strerror}") from None
        data = data.removesuffix(b"\n").removesuffix(b"\r")
        if not data:
            raise KeyProviderError(f"key file {path} is empty: put the passphrase in it")
        return cls(data, params)

    def new_kek(self, label: str) -> tuple[bytes, dict[str, Any]]:
        salt = os.urandom(SALT_BYTES)
        p = self.params
        recorded = {"kdf": "scrypt", "salt": salt.hex(), "log_n": p.log_n, "r": p.r, "p": p.p}
        return p.derive(self._secret, salt), recorded

    def derive_kek(self, params: Mapping[str, Any], label: str) -> bytes:
        try:
            if params["kdf"] != "scrypt":
                raise ValueError(params["kdf"])
            salt = bytes.fromhex(params["salt"])
            cost = ScryptParams(int(params["log_n"]), int(params["r"]), int(params["p"]))
        except (KeyError, ValueError, TypeError, KeyProviderError):
            raise StoreCorrupt(
                "the store's passphrase parameters are malformed: restore store.db from a backup"
            ) from None
        return cost.derive(self._secret, salt)


def _keyring() -> Any:
    try:
        import keyring
    except ImportError:
        raise KeyProviderError(_KEYRING_HINT) from None
    return keyring


class KeyringKey(KeyProvider):
    """A random KEK kept in the OS keyring (macOS Keychain, Secret Service, ...).

    Args:
        service: The keyring service name.
        username: The entry name; by default one per store and KEK (``"<store id>/<kek id>"``),
            so rotating keys never overwrites the entry the store still depends on.
    """

    kind = "keyring"

    def __init__(self, service: str = "personal", username: str | None = None) -> None:
        self.service = service
        self.username = username

    def __repr__(self) -> str:
        return f"KeyringKey(service={self.service!r}, username={self.username!r})"

    def new_kek(self, label: str) -> tuple[bytes, dict[str, Any]]:
        keyring = _keyring()
        kek = os.urandom(KEY_BYTES)
        username = self.username or label
        try:
            keyring.set_password(self.service, username, base64.b64encode(kek).decode())
        except keyring.errors.KeyringError as exc:
            raise KeyProviderError(f"cannot store the key in the OS keyring: {exc}") from None
        return kek, {"service": self.service, "username": username}

    def derive_kek(self, params: Mapping[str, Any], label: str) -> bytes:
        keyring = _keyring()
        service, username = params.get("service"), params.get("username")
        try:
            value = keyring.get_password(service, username)
        except keyring.errors.KeyringError as exc:
            raise KeyProviderError(f"cannot read the OS keyring: {exc}") from None
        if value is None:
            raise KeyProviderError(
                f"the OS keyring has no entry {service!r}/{username!r} for this store: "
                "unlock the keyring, or open the store on the device that created it"
            )
        try:
            kek = base64.b64decode(value, validate=True)
        except ValueError:
            kek = b""
        if len(kek) != KEY_BYTES:
            raise KeyProviderError(f"the OS keyring entry {service!r}/{username!r} is not a key")
        return kek

    def forget(self, params: Mapping[str, Any], label: str) -> None:
        keyring = _keyring()
        # Already gone, or the keyring is locked: a stale entry is harmless.
        with contextlib.suppress(keyring.errors.KeyringError):
            keyring.delete_password(params.get("service"), params.get("username"))
