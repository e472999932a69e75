"""The privacy ledger's on-disk format: tables, entries, the hash chain and the unit snapshot.

Pure encoding and hashing; the protocol (who appends what, when) is in
:mod:`personal.privacy.ledger.core`, the anchor outside the database in
:mod:`personal.privacy.ledger.anchor`.

One row of ``ledger_entries`` is one entry of the chain::

    seq         1, 2, 3, ... (no gaps: position in the chain)
    kind        genesis | contract | charge | finish | uncharged | reanchor (cleartext)
    round_id    the round the entry belongs to (NULL otherwise)           (cleartext)
    created_at  UTC time of the append                                      (cleartext)
    prev_hash   entry_hash of entry seq-1 (the genesis hash for seq 1)
    entry_hash  SHA-256(prev_hash || canonical bytes of the entry)
    key_epoch, sealed   the body (canonical JSON: every privacy parameter, the eligible unit
                ids, fingerprints, status...) sealed with AES-256-GCM through the store; the
                associated data binds the store, table, seq, kind, round id, time and prev_hash.

The canonical bytes (:func:`entry_hash`) are a domain tag and the length-prefixed seq, kind,
round id, time, key epoch and the *sealed* blob: the chain commits to ciphertexts, so a cleartext
hash never lets anyone confirm a guess about a body (which unit ids were eligible).

The genesis body binds the store's lifetime contract (ε, δ, unit, accountant, filter rule; see
:mod:`personal.privacy.contract`); a ``contract`` entry replaces it before the first round, or
completes a format-1 genesis (ε and δ only).

``ledger_state`` holds one sealed snapshot of every unit's accumulated curve (under the
contract's filter rule, fixed before the first charge), bound to the chain position
(seq, entry_hash) it was computed at. It is a cache: :meth:`Ledger.verify` rebuilds it from the
chain, and a snapshot that does not match the chain is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from personal.errors import LedgerIntegrityError, PrivacyError, PrivacyParameterError
from personal.privacy.filter import Charge
from personal.privacy.rdp import ORDERS
from personal.store import Migrations
from personal.store.crypto import FieldValue

import numpy as np
from numpy.typing import NDArray
from sqlite_utils import Database

FORMAT_VERSION = 1
ENTRIES = "ledger_entries"
STATE = "ledger_state"
DOMAIN = "ledger"  # data-key family of every ledger row (never crypto-shredded with the log)
KINDS = ("genesis", "contract", "charge", "finish", "uncharged", "reanchor")
HASH_BYTES = 32

UnitId = str | int

MIGRATIONS = Migrations("ledger")
_U32 = struct.Struct(">I")


@MIGRATIONS(1)
def _create_tables(db: Database) -> None:
    db.execute(
        f"CREATE TABLE {ENTRIES} (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
        " round_id INTEGER, created_at TEXT NOT NULL, prev_hash BLOB NOT NULL,"
        " entry_hash BLOB NOT NULL, key_epoch INTEGER NOT NULL, sealed BLOB NOT NULL)"
    )
    db.execute(f"CREATE INDEX {ENTRIES}_round ON {ENTRIES} (round_id)")
    db.execute(
        f"CREATE TABLE {STATE} (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL,"
        " entry_hash BLOB NOT NULL, key_epoch INTEGER NOT NULL, sealed BLOB NOT NULL)"
    )


class LedgerHead(NamedTuple):
    """A position in the chain: ``seq`` (0 = empty) and that entry's hash (hex)."""

    seq: int
    hash: str


class Row(NamedTuple):
    """One ``ledger_entries`` row as stored."""

    seq: int
    kind: str
    round_id: int | None
    created_at: str
    prev_hash: bytes
    entry_hash: bytes
    key_epoch: int
    sealed: bytes

    def fields(self) -> list[tuple[str, FieldValue]]:
        """The cleartext columns bound as associated data of the sealed body."""
        return entry_fields(self.kind, self.round_id, self.created_at, self.prev_hash)


ROW_COLUMNS = "seq, kind, round_id, created_at, prev_hash, entry_hash, key_epoch, sealed"
# What reads select: every column cast to the type it was written with, so a value edited into
# another type (a blob made TEXT by `||`) fails the hash check instead of crashing the driver.
READ_COLUMNS = (
    "seq, CAST(kind AS TEXT), CAST(round_id AS INTEGER), CAST(created_at AS TEXT), "
    "CAST(prev_hash AS BLOB), CAST(entry_hash AS BLOB), CAST(key_epoch AS INTEGER), "
    "CAST(sealed AS BLOB)"
)


def entry_fields(
    kind: str, round_id: int | None, created_at: str, prev_hash: bytes
) -> list[tuple[str, FieldValue]]:
    """Associated data of an entry body, in the fixed order it is bound."""
    return [
        ("kind", kind),
        ("round_id", round_id),
        ("created_at", created_at),
        ("prev_hash", prev_hash),
    ]


def _lp(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def genesis_hash(store_id: str) -> bytes:
    """The ``prev_hash`` of entry 1: binds the chain to its store."""
    return hashlib.sha256(b"personal-ledger-genesis-v1" + _lp(store_id.encode())).digest()


def entry_hash(
    prev_hash: bytes,
    seq: int,
    kind: str,
    round_id: int | None,
    created_at: str,
    key_epoch: int,
    sealed: bytes,
) -> bytes:
    """SHA-256(prev_hash || canonical bytes of the entry); see the module docstring."""
    rid = b"" if round_id is None else b"%d" % round_id
    canonical = b"".join(
        (
            b"personal-ledger-entry-v1",
            _lp(b"%d" % seq),
            _lp(kind.encode()),
            _lp(rid),
            _lp(created_at.encode()),
            _lp(b"%d" % key_epoch),
            _lp(sealed),
        )
    )
    return hashlib.sha256(prev_hash + canonical).digest()


def row_hash(row: Row) -> bytes:
    """Recompute a stored row's entry hash from its own columns."""
    return entry_hash(
        row.prev_hash, row.seq, row.kind, row.round_id, row.created_at, row.key_epoch, row.sealed
    )


def check_chain(rows: Iterable[Row], genesis: bytes) -> list[str]:
    """Problems with the links of ``rows`` (in seq order): gaps, bad links, bad hashes.

    Needs no key: it recomputes every hash over the stored (sealed) columns.
    """
    problems: list[str] = []
    prev, expected_seq = genesis, 1
    for row in rows:
        if row.seq != expected_seq:
            problems.append(
                f"entry {expected_seq} is missing (the next entry is {row.seq}): "
                "entries were deleted or renumbered"
            )
        if row.kind not in KINDS:
            problems.append(f"entry {row.seq} has an unknown kind {row.kind!r}")
        if row.prev_hash != prev:
            problems.append(
                f"entry {row.seq} does not link to the entry before it: entries were "
                "deleted, reordered or modified"
            )
        if row_hash(row) != row.entry_hash:
            problems.append(f"entry {row.seq}'s hash does not match its contents: it was modified")
        prev, expected_seq = row.entry_hash, row.seq + 1
    return problems


# --- bodies ------------------------------------------------------------------------------------


def encode_body(body: Mapping[str, Any]) -> bytes:
    """Canonical JSON of an entry body (sorted keys, no spaces, floats as repr, no NaN).

    A non-finite float (a NaN loss in a round summary) is recorded as ``null`` and a NumPy
    scalar as its Python value: an entry that records what a round already charged must never
    fail on its summary. (No entry written before held one: their encoding is unchanged.)
    """
    try:
        return _dumps(body)
    except (TypeError, ValueError):
        pass
    try:
        return _dumps(_plain(body))
    except (TypeError, ValueError) as exc:
        raise PrivacyParameterError(f"a ledger entry must be plain JSON data: {exc}") from None


def _dumps(body: Any) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _plain(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` and NumPy scalars and arrays as Python."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def decode_body(data: bytes, seq: int) -> dict[str, Any]:
    """Inverse of :func:`encode_body` (on authenticated plaintext)."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict):
        raise LedgerIntegrityError(f"ledger entry {seq} is not a valid entry body")
    return body


def check_units(units: Iterable[object]) -> tuple[UnitId, ...]:
    """Unit ids as a tuple, refusing non-(str, int) ids, bools and duplicates."""
    ids = tuple(units)
    for unit in ids:
        if type(unit) not in (str, int):
            raise PrivacyParameterError(f"unit ids must be str or int; got {unit!r}.")
    if len(set(ids)) != len(ids):
        raise PrivacyParameterError("the same unit is listed twice in one round.")
    return ids  # type: ignore[return-value]


def units_digest(units: Iterable[UnitId]) -> str:
    """SHA-256 (hex) of a unit set: each id as JSON (``"a"`` and ``1`` differ), sorted as
    UTF-8 bytes, joined by newlines. Order-independent; the audit can recompute it."""
    encoded = sorted(json.dumps(u, ensure_ascii=False).encode("utf-8") for u in units)
    return hashlib.sha256(b"\n".join(encoded)).hexdigest()


# --- the unit table and its snapshot -----------------------------------------------------------


class UnitTable:
    """Every charged unit's accumulated RDP over :data:`ORDERS` (rows in first-charge order)."""

    def __init__(self) -> None:
        self.index: dict[UnitId, int] = {}
        self.rdp = np.zeros((0, len(ORDERS)))  # (n_units, k)

    def current(self, units: Sequence[UnitId]) -> NDArray[np.float64]:
        """``(len(units), k)`` RDP of ``units`` (zeros for never-charged ones)."""
        get = self.index.get
        rows = np.fromiter((get(u, -1) for u in units), dtype=np.int64, count=len(units))
        out = np.zeros((len(units), len(ORDERS)))
        known = rows >= 0
        out[known] = self.rdp[rows[known]]
        return out

    def add(self, units: Sequence[UnitId], step: NDArray[np.float64]) -> None:
        """Add the RDP curve ``step`` to every unit of ``units`` (distinct ids)."""
        new = [u for u in units if u not in self.index]
        if new:
            base = len(self.index)
            self.index.update((u, base + i) for i, u in enumerate(new))
            self.rdp = np.vstack([self.rdp, np.zeros((len(new), len(ORDERS)))])
        rows = np.fromiter((self.index[u] for u in units), dtype=np.int64, count=len(units))
        self.rdp[rows] += step

    def copy(self) -> UnitTable:
        out = UnitTable()
        out.index, out.rdp = dict(self.index), self.rdp.copy()
        return out

    def encode(self) -> bytes:
        """``u32 header length | JSON header (orders, unit ids) | float64 LE RDP rows``."""
        header = encode_body({"orders": list(ORDERS), "units": list(self.index)})
        return _lp(header) + self.rdp.astype("<f8").tobytes()

    @classmethod
    def decode(cls, data: bytes) -> UnitTable | None:
        """Inverse of :meth:`encode`; ``None`` if it was written on another order grid."""
        (n,) = _U32.unpack_from(data)
        header = json.loads(data[4 : 4 + n].decode("utf-8"))
        if [float(a) for a in header["orders"]] != list(ORDERS):
            return None
        units = check_units(header["units"])
        rdp = np.frombuffer(data[4 + n :], dtype="<f8").astype(np.float64)
        table = cls()
        table.index = {u: i for i, u in enumerate(units)}
        table.rdp = rdp.reshape(len(units), len(ORDERS))
        return table


# --- decoded entries and rounds ----------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    """One decoded chain entry (every kind: genesis, charge, finish, uncharged, reanchor)."""

    seq: int
    kind: str
    round_id: int | None
    time: str
    hash: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LedgerRound:
    """One round as recorded, decoded for the audit. Uncharged rounds have no σ, q or C."""

    round_id: int
    seq: int
    time: str
    purpose: str
    charged: bool
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    clip_norm: float | None
    accountant: str | None
    eligible_units: int
    units_digest: str
    base_fingerprint: str | None
    adapter_version: str | int | None
    policy_digest: str | None
    epsilon: float
    delta: float
    status: str  # "charged" (running or interrupted), "completed" or "aborted"
    finished_at: str | None = None
    summary: Any = None
    reason: str | None = None
    units: tuple[UnitId, ...] | None = None


def rounds_of(entries: Iterable[LedgerEntry], *, with_units: bool) -> list[LedgerRound]:
    """Merge charge / uncharged entries with their finish entries, in round order."""
    rounds: dict[int, dict[str, Any]] = {}
    for e in entries:
        b = e.body
        if e.kind in ("charge", "uncharged") and e.round_id is not None:
            rounds[e.round_id] = {
                "round_id": e.round_id,
                "seq": e.seq,
                "time": e.time,
                "purpose": b.get("purpose"),
                "charged": e.kind == "charge",
                "noise_multiplier": b.get("noise_multiplier"),
                "sample_rate": b.get("sample_rate"),
                "steps": int(b.get("steps", 0)),
                "clip_norm": b.get("clip_norm"),
                "accountant": b.get("accountant"),
                "eligible_units": int(b.get("unit_count", 0)),
                "units_digest": b.get("units_digest"),
                "base_fingerprint": b.get("base_fingerprint"),
                "adapter_version": b.get("adapter_version"),
                "policy_digest": b.get("policy_digest"),
                "epsilon": b.get("epsilon"),
                "delta": b.get("delta"),
                "status": b.get("status"),
                "reason": b.get("reason"),
                "summary": b.get("summary"),
                "units": tuple(b.get("units", ())) if with_units else None,
            }
        elif e.kind == "finish" and e.round_id in rounds:
            rounds[e.round_id].update(
                status=b.get("status"), finished_at=e.time, summary=b.get("summary")
            )
    return [LedgerRound(**r) for r in rounds.values()]


def charge_of(body: Mapping[str, Any], seq: int) -> Charge:
    """The :class:`Charge` a charge entry records."""
    try:
        return Charge.from_dict(body)
    except PrivacyError as exc:
        raise LedgerIntegrityError(f"ledger entry {seq} holds an invalid charge: {exc}") from None


def units_of(body: Mapping[str, Any], seq: int) -> tuple[UnitId, ...]:
    """The eligible unit ids a charge entry records."""
    try:
        return check_units(body["units"])
    except (KeyError, TypeError, PrivacyError):
        raise LedgerIntegrityError(f"ledger entry {seq} holds an invalid unit list") from None


def check_context(
    base_fingerprint: str, adapter_version: str | int | None, policy_digest: str | None
) -> dict[str, Any]:
    """The model and policy context recorded with a round, checked."""
    if not isinstance(base_fingerprint, str) or not base_fingerprint:
        raise PrivacyParameterError("base_fingerprint must be the base model's fingerprint.")
    if adapter_version is not None and type(adapter_version) not in (str, int):
        raise PrivacyParameterError(
            f"adapter_version must be str, int or None: {adapter_version!r}"
        )
    if not isinstance(policy_digest, str) or not policy_digest:
        # The audit checks every round against the contract and shows the policy it ran under.
        raise PrivacyParameterError(
            f"every round records the digest of its policy: pass policy_digest (got "
            f"{policy_digest!r}); nothing was recorded"
        )
    return {
        "base_fingerprint": base_fingerprint,
        "adapter_version": adapter_version,
        "policy_digest": policy_digest,
    }


def check_positive(name: str, value: float) -> float:
    """``value`` as a float after checking it is finite and > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise PrivacyParameterError(f"{name} must be a finite number > 0; got {value!r}.")
    return v


def damaged(problems: list[str]) -> str:
    """The message of a :class:`LedgerIntegrityError` for a damaged chain."""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return (
        f"the privacy ledger is damaged: {problems[0]}{more}. Training is refused. Run "
        "`personal audit` for the full list; restore store.db (with its -wal file) from the "
        "latest backup"
    )
