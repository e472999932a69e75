"""Interactions in and records out: validation, the sealed payload's encoding, time stamps.

A record's cleartext columns are only what sampling and retention need — ``unit`` (the privacy
unit), ``ts`` (UTC, fixed-width text) and ``source`` (the app) — plus the id and key epoch.
Everything the user wrote or read is in the sealed payload:

    version (u8) | len(prompt) (u32) | len(response) (u32) | prompt | response | extra

``extra`` is empty when there is no feedback and no metadata, else compact ASCII JSON
``[feedback, metadata]``. Prompt and response are UTF-8 (``surrogatepass``, so any Python
``str`` round-trips); a length-prefixed layout keeps decoding a 1 KB record to two slices.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, Literal, NamedTuple

from personal.errors import InvalidInteraction
from personal.store.crypto import padded_length
from personal.store.db import format_ts

UnitBy = Literal["interaction", "session", "day"]
JSON = Any

_HEAD = struct.Struct(">BII")
_U32 = struct.Struct(">I")
_PAYLOAD_VERSION = 1


@dataclass(frozen=True, slots=True)
class Interaction:
    """One interaction to append.

    Attributes:
        prompt: What the user asked.
        response: What the assistant answered.
        unit: The privacy unit id (a session id, a day...). ``None``: derived from the log's
            ``unit_by`` policy (one unit per interaction by default). It is stored in
            cleartext: use an opaque id, never user content.
        ts: When it happened (naive means UTC); ``None``: now.
        source: The app that logged it (cleartext, for per-app retention and sampling).
        feedback: Any JSON value (thumbs, rating, correction); sealed.
        metadata: A JSON object of extra fields; sealed.
    """

    prompt: str
    response: str
    unit: str | None = None
    ts: datetime | None = None
    source: str = "default"
    feedback: JSON = None
    metadata: Mapping[str, JSON] = field(default_factory=dict)


class Record(NamedTuple):
    """A stored interaction, decrypted (a named tuple: cheap to build by the hundred thousand)."""

    id: int
    unit: str
    ts: datetime
    source: str
    prompt: str
    response: str
    feedback: JSON
    metadata: dict[str, JSON]

    def to_json(self) -> dict[str, JSON]:
        """The export form: ``id, unit, ts (ISO 8601, UTC), source, prompt, response, ...``."""
        return {
            "id": self.id,
            "unit": self.unit,
            "ts": format_ts(self.ts),
            "source": self.source,
            "prompt": self.prompt,
            "response": self.response,
            "feedback": self.feedback,
            "metadata": self.metadata,
        }


class Prepared(NamedTuple):
    """An interaction validated and encoded, waiting for its id."""

    unit: str | None
    ts: str
    source: str
    payload: bytes  # padded, ready to seal
    source_utf8: bytes  # for the associated data


def _bad(index: int, message: str) -> InvalidInteraction:
    return InvalidInteraction(f"interaction {index}: {message}")


def cleartext(value: object, what: str, index: int) -> bytes:
    """Validate a cleartext column value (unit, source); returns its UTF-8 bytes."""
    if not isinstance(value, str):
        raise _bad(index, f"{what} must be a string, not {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(index, f"{what} is not valid Unicode text") from None
    if not 0 < len(data) <= 256:
        raise _bad(index, f"{what} must be 1 to 256 bytes of UTF-8 (it is stored in cleartext)")
    return data


def encode_payload(
    prompt: str, response: str, feedback: JSON, metadata: Mapping, *, padded: bool = False
) -> bytes:
    """The plaintext that gets sealed (see the module docstring).

    ``padded=True`` returns it already framed and padded as :func:`crypto.pad` would, in one
    copy instead of two (this is the hot path of every append).
    """
    p = prompt.encode("utf-8", "surrogatepass")
    r = response.encode("utf-8", "surrogatepass")
    extra = b""
    if feedback is not None or metadata:
        # allow_nan=False: NaN, Infinity and 1e999 are not JSON, and an access-request export
        # must always be valid JSON (RFC 8259), so they are refused here, at the door.
        extra = json.dumps(
            [feedback, dict(metadata)], separators=(",", ":"), allow_nan=False
        ).encode("ascii")
    head = _HEAD.pack(_PAYLOAD_VERSION, len(p), len(r))
    if not padded:
        return b"".join((head, p, r, extra))
    n = _HEAD.size + len(p) + len(r) + len(extra)
    zeros = bytes(padded_length(n + 4) - n - 4)
    return b"".join((_U32.pack(n), head, p, r, extra, zeros))


def decode_payload(buf: bytes, start: int = 0, end: int | None = None) -> tuple[Any, ...]:
    """Inverse of :func:`encode_payload` on ``buf[start:end]``: ``(prompt, response, feedback,
    metadata)``. Slicing in place saves copying a padded plaintext first."""
    end = len(buf) if end is None else end
    version, lp, lr = _HEAD.unpack_from(buf, start)
    if version != _PAYLOAD_VERSION or start + _HEAD.size + lp + lr > end:
        raise ValueError("malformed payload")
    a = start + _HEAD.size
    b = a + lp
    c = b + lr
    prompt = buf[a:b].decode("utf-8", "surrogatepass")
    response = buf[b:c].decode("utf-8", "surrogatepass")
    if c == end:
        return prompt, response, None, {}
    feedback, metadata = json.loads(buf[c:end])
    if not isinstance(metadata, dict):
        raise ValueError("malformed payload metadata")
    return prompt, response, feedback, metadata


def decode_padded(buf: bytes) -> tuple[Any, ...]:
    """:func:`decode_payload` of a padded plaintext (see :func:`personal.store.crypto.pad`)."""
    (n,) = _U32.unpack_from(buf)
    if n > len(buf) - 4:
        raise ValueError("padded plaintext shorter than its declared length")
    return decode_payload(buf, 4, 4 + n)


def prepare(item: Interaction, index: int, now: str, sources: dict[str, bytes]) -> Prepared:
    """Validate one interaction and encode it; :class:`InvalidInteraction` if it is malformed.

    ``index`` names the interaction in errors; ``now`` is the formatted time used when the
    interaction has none; ``sources`` caches validated source names across a batch.
    """
    if not isinstance(item, Interaction):
        raise _bad(index, f"expected an Interaction, got {type(item).__name__}")
    prompt, response, unit, ts, metadata = (
        item.prompt,
        item.response,
        item.unit,
        item.ts,
        item.metadata,
    )
    if not (isinstance(prompt, str) and isinstance(response, str)):
        raise _bad(index, "prompt and response must be strings")
    if unit is not None:
        cleartext(unit, "unit", index)
    source = item.source
    source_utf8 = sources.get(source) if isinstance(source, str) else None
    if source_utf8 is None:
        source_utf8 = sources[source] = cleartext(source, "source", index)
    if ts is None:
        stamp = now
    elif isinstance(ts, datetime):
        stamp = format_ts(parse_time(ts, "ts"))  # parse_time: in range once in UTC
    else:
        raise _bad(index, f"ts must be a datetime, not {type(ts).__name__}")
    if not isinstance(metadata, Mapping) or (
        metadata and not all(isinstance(k, str) for k in metadata)
    ):
        raise _bad(index, "metadata must be a mapping with string keys")
    try:
        payload = encode_payload(prompt, response, item.feedback, metadata, padded=True)
    except (TypeError, ValueError) as exc:
        raise _bad(
            index, f"feedback and metadata must be JSON-serializable, numbers finite ({exc})"
        ) from None
    except RecursionError:
        raise _bad(index, "feedback or metadata is nested too deeply") from None
    return Prepared(unit, stamp, source, payload, source_utf8)


_AUTO_UNIT = "interaction:"


def check_unit(unit_by: UnitBy, unit: str | None, ts: str, index: int) -> None:
    """Refuse an explicit unit that contradicts the log's unit of privacy.

    Under ``day`` a unit is the UTC date of its interaction (derived from ``ts``), so an explicit
    unit must be that date; under ``session`` the app's session id must not be the
    one-per-interaction form ``interaction:<id>`` the log generates. Otherwise the audit's
    "unit of privacy: day" would not be true of what training charges. Under ``interaction``
    any coarser unit an app passes is fine: it protects more than one interaction.
    """
    if unit is None or unit_by == "interaction":
        return
    if unit_by == "day" and unit != ts[:10]:
        raise _bad(
            index,
            f"the store's unit of privacy is the day: unit {unit!r} is not this interaction's "
            f"UTC date {ts[:10]} (from its ts); leave unit out and the log derives it",
        )
    if unit_by == "session" and unit.startswith(_AUTO_UNIT) and unit[len(_AUTO_UNIT) :].isdigit():
        raise _bad(
            index,
            f"the store's unit of privacy is the session: {unit!r} is the per-interaction form; "
            "pass the interaction's session id as unit",
        )


def misfit_sql(unit_by: UnitBy) -> str | None:
    """SQL condition on a ``records`` row whose unit does not fit ``unit_by`` (``None``: any)."""
    if unit_by == "day":
        return "unit != substr(ts, 1, 10)"
    if unit_by == "session":
        return f"unit GLOB '{_AUTO_UNIT}[0-9]*'"
    return None


def default_unit(unit_by: UnitBy, record_id: int, ts: str, index: int) -> str:
    """The privacy unit of an interaction appended without one."""
    if unit_by == "interaction":
        return f"interaction:{record_id}"
    if unit_by == "day":
        return ts[:10]  # the UTC date
    raise _bad(
        index,
        "the log groups privacy units by session, so every interaction needs a unit "
        "(its session id)",
    )


def parse_time(value: object, what: str = "time") -> datetime:
    """A datetime from a ``datetime``, a ``date`` (midnight UTC), ISO 8601 text or unix seconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time(), tzinfo=UTC)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInteraction(f"{what} {value!r} is out of range") from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInteraction(
                f"{what} {value!r} is not an ISO 8601 date or time (e.g. 2024-05-01 or "
                "2024-05-01T12:30:00Z)"
            ) from None
    else:
        raise InvalidInteraction(f"{what} must be a date or time, not {type(value).__name__}")
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:  # the store keeps UTC: 9999-12-31T23:59:59-05:00 is in year 10000 there
        moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInteraction(
            f"{what} {value!r} is out of range: in UTC it falls outside the years 1 to 9999"
        ) from None
    return moment


def filters_sql(
    *,
    units: Iterable[str] | str | None = None,
    since: object = None,
    until: object = None,
    source: str | None = None,
) -> tuple[str, list[Any]]:
    """``(" AND ...", args)`` selecting records by unit(s), time window and source app."""
    clauses, args = [], []
    if units is not None:
        units = [units] if isinstance(units, str) else list(units)
        clauses.append("unit IN (SELECT value FROM json_each(?))")
        args.append(json.dumps(units))
    if since is not None:
        clauses.append("ts >= ?")
        args.append(format_ts(parse_time(since, "since")))
    if until is not None:
        clauses.append("ts < ?")
        args.append(format_ts(parse_time(until, "until")))
    if source is not None:
        clauses.append("source = ?")
        args.append(source)
    return "".join(f" AND {c}" for c in clauses), args
