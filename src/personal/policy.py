"""Policies: the rules one device lives by (privacy budget, training, replay, gates, ...).

A policy is data -- a TOML file -- parsed into frozen dataclasses (one per section, in
:mod:`personal.policy_sections`, re-exported here) and validated completely before anything uses
it. Three policies ship with the package (``src/personal/policies/``):
``default``, ``strict`` (lifetime ε = 1) and ``research`` (fast rounds for simulations).

Example::

    from personal.policy import load_policy

    policy = load_policy("default")             # a bundled name, or a path to a .toml file
    policy.privacy.lifetime_epsilon             # 8.0
    policy.digest()                             # "sha256:..." for manifests and the ledger
    strict = policy.with_overrides({"privacy.lifetime_epsilon": 1})

Validation collects every problem into one :class:`~personal.errors.PolicyError` whose message
names each dotted key (``training.lora.rank``), the value found, the allowed type and range, and
what to do. Types are strict: ``true`` is not an integer, ``2.0`` is not an integer, and an
integer is accepted (and stored) as a float where a float is expected. Every key, its default,
range and meaning is documented in ``docs/policies.md``.

A policy *file* must state its privacy contract explicitly: the ``[privacy]`` section with
``unit``, ``lifetime_epsilon``, ``delta`` and exactly one of ``round_epsilon`` /
``noise_multiplier``. Every other key has a default. In Python, ``Policy()`` is the default
policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from personal.errors import PolicyError
from personal.policy_sections import (
    ContinualPolicy,
    GatesPolicy,
    LoRAPolicy,
    MigrationPolicy,
    PrivacyPolicy,
    RetentionPolicy,
    StorePolicy,
    TrainingPolicy,
)
from personal.policy_specs import (
    NAME_PATTERN,
    Section,
    Text,
    Validated,
    join_key,
    parse_section,
    policy_error,
    show_value,
    spec_field,
    spec_of,
)

#: Directory of the policies shipped with the package (the single copy; see policies/README.md).
BUNDLED_DIR = Path(__file__).with_name("policies")

#: Largest policy file read (policies are a few KiB; this bounds what a bad path can cost).
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Policy(Validated):
    """A complete, validated policy. ``Policy()`` is the default policy.

    Attributes:
        name: a short name (recorded with the digest), 1-64 of ``A-Za-z0-9._-``.
        description: free text, at most 2000 characters.
        privacy, training, continual, gates, retention, migration, store: the sections.
    """

    _REQUIRED: ClassVar[tuple[str, ...]] = ("privacy",)

    name: str = spec_field(Text(NAME_PATTERN, 64), "custom")
    description: str = spec_field(Text(None, 2000), "")
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    training: TrainingPolicy = field(default_factory=TrainingPolicy)
    continual: ContinualPolicy = field(default_factory=ContinualPolicy)
    gates: GatesPolicy = field(default_factory=GatesPolicy)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    migration: MigrationPolicy = field(default_factory=MigrationPolicy)
    store: StorePolicy = field(default_factory=StorePolicy)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        privacy, batch = out["privacy"], out["training"].expected_batch_size
        problems = []
        sigma, count = privacy.noise_multiplier, privacy.clip_count_noise * batch
        if privacy.clip == "quantile" and sigma is not None and count <= sigma / 2:
            # σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½) needs σ_b > σ/2 (docs/privacy-accounting.md); a
            # round also checks it at its own expected batch (at most this one), uncharged.
            problems.append(
                f"privacy.clip_count_noise × training.expected_batch_size = "
                f"{privacy.clip_count_noise:g} × {batch:g} = {count:g} (σ_b, the noise std of "
                "quantile clipping's count) is not above privacy.noise_multiplier / 2 = "
                f"{sigma / 2:g}: the gradient's noise σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½) is then "
                "undefined. Raise clip_count_noise, lower noise_multiplier, or set privacy.clip = "
                '"fixed".'
            )
        training = out["training"]
        if training.update == "bank":
            # The bank trains coefficients, not LoRA tensors: a population warm start (another
            # LoRA shape) and EWC (anchored on LoRA tensors) do not apply to it (yet).
            if training.warm_start != "none":
                problems.append(
                    'training.update = "bank" needs training.warm_start = "none" (the bank\'s '
                    "first round starts from zero coefficients, the bare base); set it."
                )
            if out["continual"].ewc_lambda > 0:
                problems.append(
                    'training.update = "bank" needs continual.ewc_lambda = 0 (EWC anchors LoRA '
                    "tensors, which a bank round does not train); set it to 0."
                )
        lifetime, val = privacy.lifetime_epsilon, out["gates"].validation_epsilon
        if val is not None and val > lifetime:
            problems.append(
                f"gates.validation_epsilon = {val!r} exceeds privacy.lifetime_epsilon = "
                f"{lifetime!r}: the metric is charged to the same units; lower it."
            )
        return problems

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Policy:
        """Build from plain data (parsed TOML or JSON); every problem is reported at once.

        Raises:
            PolicyError: naming every bad key, its value, the allowed type/range and the fix.
        """
        if not isinstance(data, Mapping):
            raise policy_error(
                [f"the policy is {show_value(data)}: must be a table of sections"], source
            )
        values, problems = parse_section(cls, data, strict=True)
        if problems:
            raise policy_error(problems, source)
        return cls(**values)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> Policy:
        """Parse and validate TOML text; malformed TOML is a :class:`PolicyError` too."""
        if not isinstance(text, str):
            raise policy_error([f"the policy text is {show_value(text)}: must be a string"], source)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(
                f"invalid policy {source}: not valid TOML ({exc}). Fix the syntax "
                "(https://toml.io), or start from `personal policy show default`."
            ) from None
        except RecursionError:
            raise PolicyError(
                f"invalid policy {source}: nested too deeply to be a policy. Start from "
                "`personal policy show default`."
            ) from None
        return cls.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :meth:`from_dict` accepts and TOML can hold (unset optionals left out;
        ``targets = "all-linear"`` and ``num_layers = "all"`` stand for ``None``)."""
        return self._dump()

    def to_toml(self) -> str:
        """The policy as a TOML document that :meth:`from_toml` reads back equal."""
        return _to_toml(self.to_dict())

    def digest(self) -> str:
        """``"sha256:<hex>"`` of the canonical JSON of :meth:`to_dict` (sorted keys, no spaces).

        Equal policies have equal digests whatever their file's comments, key order or number
        spelling (``1`` and ``1.0`` for a float key); any changed value changes it.
        """
        canonical = json.dumps(
            self.to_dict(),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
        return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def with_overrides(self, overrides: Mapping[str, Any]) -> Policy:
        """A copy with dotted keys replaced (``{"training.steps": 5}``); ``None`` removes a key.

        The result is validated like a file: ``{"privacy.noise_multiplier": 1.0,
        "privacy.round_epsilon": None}`` switches the per-round target.
        """
        data = self.to_dict()
        for dotted, value in overrides.items():
            parts = str(dotted).split(".")
            table = data
            for part in parts[:-1]:
                nxt = table.get(part)
                if not isinstance(nxt, dict):
                    raise policy_error([f"{dotted}: no such section {part!r}"], "override")
                table = nxt
            if value is None:
                table.pop(parts[-1], None)
            else:
                table[parts[-1]] = value
        return type(self).from_dict(data, source="override")


# --- TOML output -------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t") + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _to_toml(data: Mapping[str, Any], table: str = "") -> str:
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    parts = [(f"[{table}]\n" if table else "") + "".join(f"{line}\n" for line in scalars)]
    for key, value in data.items():
        if isinstance(value, Mapping):
            parts.append(_to_toml(value, f"{table}.{key}" if table else key))
    return "\n".join(parts)


# --- loading -----------------------------------------------------------------------------------


def bundled_policies() -> dict[str, Path]:
    """Names and files of the policies shipped with the package (``default``, ``research``,
    ``strict``)."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.toml"))}


def load_policy(path_or_name: str | os.PathLike[str] | Policy) -> Policy:
    """Load a bundled policy by name or a TOML file by path (a :class:`Policy` passes through).

    A bundled name wins over a file of the same name in the working directory; write
    ``./default`` for the file.

    Raises:
        PolicyError: no such file or name, unreadable or non-UTF-8 file, malformed TOML, or any
            invalid value (the message names every bad key).
    """
    if isinstance(path_or_name, Policy):
        return path_or_name
    bundled = bundled_policies()
    names = ", ".join(bundled) or "none installed"
    if isinstance(path_or_name, str) and path_or_name in bundled:
        path = bundled[path_or_name]
    elif isinstance(path_or_name, str | os.PathLike):
        path = Path(path_or_name).expanduser()
    else:
        raise PolicyError(
            f"a policy is a bundled name ({names}) or a path to a TOML file, "
            f"not {show_value(path_or_name)}."
        )
    data = _read(path, names)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            f"invalid policy {path}: not UTF-8 text ({exc}). Save it as UTF-8."
        ) from None
    return Policy.from_toml(text, source=str(path))


def _read(path: Path, names: str) -> bytes:
    missing = PolicyError(
        f"no policy file at {str(path)!r}. Pass a TOML policy file or a bundled name ({names}); "
        "`personal policy show default` prints one to start from."
    )
    try:
        if not path.is_file():
            raise missing
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PolicyError(
                f"{path} is larger than {MAX_FILE_BYTES} bytes: not a policy file. Check the path."
            )
        return path.read_bytes()
    except (OSError, ValueError) as exc:  # unreadable, or a path with a NUL byte
        raise PolicyError(f"cannot read policy {str(path)!r}: {exc}. Check the path.") from None


#: Every section class, in file order (docs and tests iterate over it).
SECTIONS: tuple[type, ...] = (
    PrivacyPolicy,
    TrainingPolicy,
    LoRAPolicy,
    ContinualPolicy,
    GatesPolicy,
    RetentionPolicy,
    MigrationPolicy,
    StorePolicy,
)


def policy_keys() -> dict[str, str]:
    """Every dotted key a policy file may hold, with its type and range in words."""
    keys: dict[str, str] = {}

    def walk(cls: Any) -> None:
        for f in fields(cls):
            spec = spec_of(f)
            if isinstance(spec, Section):
                walk(spec.cls)
            else:
                keys[join_key(cls._PATH, f.name)] = spec.describe()

    walk(Policy)
    return keys


__all__ = [
    "BUNDLED_DIR",
    "SECTIONS",
    "ContinualPolicy",
    "GatesPolicy",
    "LoRAPolicy",
    "MigrationPolicy",
    "Policy",
    "PolicyError",
    "PrivacyPolicy",
    "RetentionPolicy",
    "StorePolicy",
    "TrainingPolicy",
    "bundled_policies",
    "load_policy",
    "policy_keys",
]
