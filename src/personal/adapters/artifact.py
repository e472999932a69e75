"""One adapter version on disk: ``adapter.safetensors`` + ``manifest.json``.

::

    v000003/adapter.safetensors   the LoRA tensors; header metadata names the format, the
                                  version and the base model (fingerprint and name)
    v000003/manifest.json         what the version is, where it came from, and the SHA-256
                                  of adapter.safetensors

Nothing on a load path unpickles: the manifest is JSON, the weights are safetensors (a JSON
header and raw little-endian buffers). The weights file is read once into memory, hashed, and
parsed from those same bytes, so what is parsed is exactly what was verified.

The header metadata is covered by the SHA-256 in the manifest, and :func:`read_artifact`
requires it to agree with the manifest: editing the manifest's base fingerprint or version
alone is detected. The header also carries ``manifest_sha256``, the digest of every other field
of the manifest (:func:`manifest_digest`), so the *whole* manifest is covered: an edited
``training.epsilon_max`` or ``gates`` fails too (artifacts written before it have no such key
and are checked as before). Loads refuse weights holding NaN or infinity. Integrity here
protects against corruption and mistakes, not against someone who can rewrite both files
(adapters are DP outputs and are stored without a key; see docs/adapters.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personal.adapters import codec
from personal.errors import (
    AdapterCorrupt,
    AdapterFormatTooNew,
    AdapterNotFound,
    ConfigError,
    InvalidManifest,
)
from personal.filesafety import write_synced

import mlx.core as mx

if TYPE_CHECKING:
    from personal.model.lora import LoRAConfig

FORMAT = "personal-adapter"
FORMAT_VERSION = 1
WEIGHTS_NAME = "adapter.safetensors"
MANIFEST_NAME = "manifest.json"
_LORA_SUFFIXES = (".lora_a", ".lora_b")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "format_version": (int,),
    "version": (int,),
    "parent": (int, type(None)),
    "created": (str,),
    "base_fingerprint": (str,),
    "base_name": (str,),
    "lora": (dict,),
    "policy_digest": (str, type(None)),
    "ledger_head": (str, type(None)),
    "training": (dict,),
    "gates": (dict,),
    "weights_sha256": (str,),
    "weights_bytes": (int,),
    "tensors": (int,),
    "parameters": (int,),
}


@dataclass(frozen=True)
class Manifest:
    """What one adapter version is (the parsed ``manifest.json``).

    Attributes:
        version: the registry's version number (1, 2, ...; never reused).
        parent: the version this one was trained from, or None.
        created: UTC creation time, ISO 8601 with a ``Z`` suffix.
        base_fingerprint: the fingerprint of the base model the adapter was trained on; the
            adapter never loads onto a base with another one.
        base_name: that base's name (``"base-v1"``), for people.
        lora: the LoRA configuration as a dict (``LoRAConfig.to_dict()``; see
            :meth:`lora_config`).
        policy_digest: digest of the policy in force when it was trained, or None.
        ledger_head: the privacy ledger's chain head at training time, or None.
        training: a JSON summary of the round (steps, ε spent, ...).
        gates: the gate metrics that accepted it.
        weights_sha256: hex SHA-256 of ``adapter.safetensors``.
        weights_bytes, tensors, parameters: size of the weights file, number of tensors and
            of scalars in it.
    """

    version: int
    parent: int | None
    created: str
    base_fingerprint: str
    base_name: str
    lora: dict[str, Any] = field(hash=False)
    policy_digest: str | None
    ledger_head: str | None
    training: dict[str, Any] = field(hash=False)
    gates: dict[str, Any] = field(hash=False)
    weights_sha256: str
    weights_bytes: int
    tensors: int
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "parent": self.parent,
            "created": self.created,
            "base_fingerprint": self.base_fingerprint,
            "base_name": self.base_name,
            "lora": self.lora,
            "policy_digest": self.policy_digest,
            "ledger_head": self.ledger_head,
            "training": self.training,
            "gates": self.gates,
            "weights_sha256": self.weights_sha256,
            "weights_bytes": self.weights_bytes,
            "tensors": self.tensors,
            "parameters": self.parameters,
        }

    def lora_config(self) -> LoRAConfig:
        """The :class:`~personal.model.lora.LoRAConfig` (imports mlx-lm, hence not eager)."""
        from personal.model.lora import LoRAConfig

        return LoRAConfig.from_dict(self.lora)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "manifest") -> Manifest:
        """Validate strictly: every field present with the right type, nothing unknown."""
        if not isinstance(data, dict):
            raise InvalidManifest(f"{where}: expected a JSON object; restore the version.")
        _check_format(data, where)
        missing = sorted(set(_FIELDS) - set(data))
        unknown = sorted(set(data) - set(_FIELDS))
        if missing or unknown:
            raise InvalidManifest(
                f"{where}: missing fields {missing}, unknown fields {unknown}; the file was "
                "edited or is damaged: restore the version or delete it."
            )
        for name, types in _FIELDS.items():
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, types):
                raise InvalidManifest(
                    f"{where}: field {name!r} is {type(value).__name__}, expected "
                    f"{' or '.join(t.__name__ for t in types)}."
                )
        _check_values(data, where)
        lora = _checked_lora(data["lora"], where)
        fields = {k: data[k] for k in _FIELDS if k not in ("format", "format_version", "lora")}
        return cls(lora=lora, **fields)


def _check_format(data: dict[str, Any], where: str) -> None:
    if data.get("format") != FORMAT:
        raise InvalidManifest(f"{where}: not a personal adapter manifest (format field).")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidManifest(f"{where}: format_version must be an integer >= 1.")
    if version > FORMAT_VERSION:
        raise AdapterFormatTooNew(
            f"{where}: adapter format {version}; this version of personal reads up to "
            f"{FORMAT_VERSION}: upgrade personal to load it."
        )


def _check_values(data: dict[str, Any], where: str) -> None:
    problems = []
    if data["version"] < 1:
        problems.append("version must be >= 1")
    if data["parent"] is not None and not 1 <= data["parent"] < data["version"]:
        problems.append("parent must be an earlier version")
    if not _is_utc_iso(data["created"]):
        problems.append("created must be a UTC ISO 8601 time ending in Z")
    if not data["base_fingerprint"]:
        problems.append("base_fingerprint is empty")
    if not _SHA256.match(data["weights_sha256"]):
        problems.append("weights_sha256 must be 64 lowercase hex digits")
    for name in ("weights_bytes", "tensors", "parameters"):
        if data[name] < 1:
            problems.append(f"{name} must be >= 1")
    if problems:
        raise InvalidManifest(f"{where}: {'; '.join(problems)}.")


def _checked_lora(data: dict[str, Any], where: str) -> dict[str, Any]:
    """LoRAConfig's own rules, checked without importing mlx-lm (a registry must open fast:
    the crash test starts dozens of processes). tests/adapters/test_artifact.py checks that
    these agree with LoRAConfig.from_dict."""
    keys = {"rank", "scale", "dropout", "targets", "num_layers"}
    if set(data) != keys:
        raise InvalidManifest(f"{where}: lora must have exactly the keys {sorted(keys)}.")
    rank, scale, dropout = data["rank"], data["scale"], data["dropout"]
    targets, num_layers = data["targets"], data["num_layers"]

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    def is_num(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    ok = (
        is_int(rank)
        and rank >= 1
        and is_num(scale)
        and scale > 0
        and is_num(dropout)
        and 0 <= dropout < 1
        and (num_layers is None or (is_int(num_layers) and num_layers >= 1))
        and (
            targets is None
            or (
                isinstance(targets, list)
                and bool(targets)
                and all(isinstance(t, str) and t for t in targets)
            )
        )
    )
    if not ok:
        raise InvalidManifest(f"{where}: invalid LoRA config {data!r}.")
    return dict(data)


def _is_utc_iso(text: str) -> bool:
    if not text.endswith("Z"):
        return False
    try:
        datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError:
        return False
    return True


def utc_now() -> str:
    """The current UTC time as the manifest writes it (microseconds, ``Z`` suffix)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def header_metadata(
    version: int, base_fingerprint: str, base_name: str, manifest_sha256: str | None = None
) -> dict[str, str]:
    """The safetensors header metadata of an artifact (strings only, as safetensors requires);
    ``manifest_sha256``: :func:`manifest_digest` of the manifest it is saved with."""
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "version": str(version),
        "base_fingerprint": base_fingerprint,
        "base_name": base_name,
    }
    if manifest_sha256 is not None:
        meta["manifest_sha256"] = manifest_sha256
    return meta


_OF_THE_WEIGHTS = ("weights_sha256", "weights_bytes")  # depend on the header: not in the digest


def manifest_digest(manifest: Manifest) -> str:
    """Hex SHA-256 of the manifest's canonical JSON without the fields that describe the
    weights file (which holds this digest in its header)."""
    fields = {k: v for k, v in manifest.to_dict().items() if k not in _OF_THE_WEIGHTS}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_weights(weights: Mapping[str, Any]) -> dict[str, mx.array]:
    """Validate an adapter dict before saving: LoRA tensor names only, finite values."""
    if not weights:
        raise ConfigError("An adapter needs at least one tensor; got an empty dict.")
    out = {}
    for name, value in weights.items():
        if not isinstance(name, str) or not name.endswith(_LORA_SUFFIXES):
            raise ConfigError(
                f"Adapter tensor name {name!r} is not a LoRA tensor (…lora_a / …lora_b); "
                "pass get_adapter_weights(model)."
            )
        out[name] = value if isinstance(value, mx.array) else mx.array(value)
    mx.eval(list(out.values()))
    codec.check_dtypes(out)
    bad = [n for n, v in out.items() if not mx.all(mx.isfinite(v)).item()]
    if bad:
        raise ConfigError(f"Adapter tensors {bad[:3]} hold NaN or infinity; refusing to save.")
    return out


def write_artifact(directory: Path, weights_bytes: bytes, manifest: Manifest) -> None:
    """Write both files into ``directory`` (which exists) and fsync each of them (full fsync)."""
    write_synced(directory / WEIGHTS_NAME, weights_bytes)
    write_synced(directory / MANIFEST_NAME, manifest.to_json().encode("utf-8"))


def read_manifest(directory: Path, *, version: int | None = None) -> Manifest:
    """Parse and validate ``directory/manifest.json`` (and check its version, if given)."""
    path = directory / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdapterNotFound(f"{directory} has no {MANIFEST_NAME}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidManifest(f"{path} is unreadable ({exc}); restore the version.") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidManifest(f"{path} is not valid JSON ({exc}); restore the version.") from None
    manifest = Manifest.from_dict(data, where=str(path))
    if version is not None and manifest.version != version:
        raise InvalidManifest(
            f"{path} says version {manifest.version}, its directory is version {version}: it "
            "was renamed or copied by hand; restore it."
        )
    return manifest


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite number {name}")


def read_artifact(
    directory: Path, *, version: int | None = None
) -> tuple[dict[str, mx.array], Manifest]:
    """Load one version, verifying the weights' SHA-256 and their agreement with the manifest.

    With ``version``, the manifest must also say that version (the registry passes the number
    in the directory's name).

    Raises:
        AdapterNotFound: a file is missing.
        InvalidManifest: the manifest is malformed.
        AdapterCorrupt: the weights fail their hash, do not parse, or contradict the manifest.
    """
    manifest = read_manifest(directory, version=version)
    path = directory / WEIGHTS_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AdapterNotFound(f"{directory} has no {WEIGHTS_NAME}.") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.weights_sha256 or len(data) != manifest.weights_bytes:
        raise AdapterCorrupt(
            f"{path} fails its SHA-256 check (manifest {manifest.weights_sha256[:12]}…, "
            f"file {digest[:12]}…): it was modified or damaged. Restore it from a backup, or "
            "roll back to another version and prune this one."
        )
    weights, metadata = codec.decode(data, where=str(path))
    check_consistency(weights, manifest, where=str(path), metadata=metadata)
    return weights, manifest


def check_consistency(
    weights: Mapping[str, mx.array], manifest: Manifest, *, where: str, metadata: dict[str, str]
) -> None:
    """The weights' header and contents must say what the manifest says."""
    expected = header_metadata(manifest.version, manifest.base_fingerprint, manifest.base_name)
    wrong = sorted(k for k, v in expected.items() if metadata.get(k) != v)
    if "manifest_sha256" in metadata and metadata["manifest_sha256"] != manifest_digest(manifest):
        wrong.append("manifest_sha256")
    if wrong:
        raise AdapterCorrupt(
            f"{where}: header metadata {wrong} disagrees with manifest.json (the manifest was "
            "edited); restore the version or roll back to another one."
        )
    mx.eval(list(weights.values()))
    bad = [n for n, v in weights.items() if not mx.all(mx.isfinite(v)).item()]
    if bad:
        raise AdapterCorrupt(
            f"{where}: tensors {bad[:3]} hold NaN or infinity, which training never saves (the "
            "file was altered); roll back to another version and prune this one."
        )
    names = [n for n in weights if not n.endswith(_LORA_SUFFIXES)]
    parameters = sum(int(v.size) for v in weights.values())
    if names or len(weights) != manifest.tensors or parameters != manifest.parameters:
        raise AdapterCorrupt(
            f"{where}: {len(weights)} tensors / {parameters} parameters (non-LoRA names "
            f"{names[:3]}) where the manifest says {manifest.tensors} / {manifest.parameters}."
        )


def build_manifest(
    weights: Mapping[str, mx.array],
    weights_bytes: bytes,
    *,
    version: int,
    parent: int | None,
    created: str,
    base_fingerprint: str,
    base_name: str,
    lora: LoRAConfig | Mapping[str, Any],
    policy_digest: str | None,
    ledger_head: str | None,
    training: Mapping[str, Any] | None,
    gates: Mapping[str, Any] | None,
) -> Manifest:
    """A validated manifest for ``weights`` already encoded as ``weights_bytes``."""
    config = lora.to_dict() if hasattr(lora, "to_dict") else dict(lora)
    manifest = Manifest(
        version=version,
        parent=parent,
        created=created,
        base_fingerprint=base_fingerprint,
        base_name=base_name,
        lora=config,
        policy_digest=policy_digest,
        ledger_head=ledger_head,
        training=dict(training or {}),
        gates=dict(gates or {}),
        weights_sha256=hashlib.sha256(weights_bytes).hexdigest(),
        weights_bytes=len(weights_bytes),
        tensors=len(weights),
        parameters=sum(int(v.size) for v in weights.values()),
    )
    try:  # round-trip through JSON: what we write must pass what we read
        text = manifest.to_json()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"Manifest fields must be JSON values with finite numbers ({exc}); convert "
            "training summaries and gate metrics to plain floats, ints and strings."
        ) from None
    try:
        return Manifest.from_dict(json.loads(text))
    except InvalidManifest as exc:
        raise ConfigError(str(exc).replace("manifest: ", "adapter to save: ", 1)) from None
