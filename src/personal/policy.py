"""Policies: the rules one device lives by (privacy budget, training, replay, gates, ...).

A policy is data -- a TOML file -- parsed into frozen dataclasses and validated completely before
anything uses it. Three policies ship with the package (``src/personal/policies/``):
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

import difflib
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from personal.errors import PolicyError

#: Directory of the policies shipped with the package (the single copy; see policies/README.md).
BUNDLED_DIR = Path(__file__).with_name("policies")

#: Largest policy file read (policies are a few KiB; this bounds what a bad path can cost).
MAX_FILE_BYTES = 1 << 20

_DOCS = "docs/policies.md lists every key with its type, default and range"


# --- value specifications ----------------------------------------------------------------------


class _Invalid(Exception):
    """One value failed its specification; the message says why and what to do."""


_FIX = "; change it to a value in that range"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


@dataclass(frozen=True)
class _Number:
    """An int or float in a closed/open interval; ``optional``: ``None`` (key absent) allowed."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"

    def parse(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"wrong type: must be {self.describe()}; write a bare number")
        if self.kind is int and not isinstance(value, int):
            raise _Invalid(f"must be {self.describe()}; write a whole number, no decimal point")
        if self.kind is float:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond float range
                raise _Invalid(f"out of range: must be {self.describe()}{_FIX}") from None
            if not math.isfinite(value):
                raise _Invalid(f"must be a finite number: {self.describe()}{_FIX}")
        low_ok = value > self.low if self.low_open else value >= self.low
        high_ok = value < self.high if self.high_open else value <= self.high
        if not (low_ok and high_ok):
            raise _Invalid(f"out of range: must be {self.describe()}{_FIX}")
        return value


@dataclass(frozen=True)
class _Choice:
    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(f'"{o}"' for o in self.options)

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise _Invalid(f"must be {self.describe()}; use one of them, spelled exactly, quoted")
        return value


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class _Text:
    """A name (``pattern``) or free text (at most ``max_len`` characters, no control chars)."""

    pattern: re.Pattern[str] | None
    max_len: int

    def describe(self) -> str:
        if self.pattern is not None:
            return (
                "a name of 1-64 letters, digits, '.', '_' or '-' (starting with one of A-Za-z0-9)"
            )
        return f"a string of at most {self.max_len} characters (no control characters)"

    def parse(self, value: Any) -> str:
        ok = isinstance(value, str) and len(value) <= self.max_len
        if ok and self.pattern is not None:
            ok = self.pattern.fullmatch(value) is not None
        elif ok:
            ok = _CONTROL.search(value) is None
        if not ok:
            raise _Invalid(f"must be {self.describe()}; change it to such a string")
        return value


class _Targets:
    """LoRA targets: ``"all-linear"`` (stored as ``None``) or a list of module-path suffixes."""

    ALL = "all-linear"

    def describe(self) -> str:
        return (
            f'"{self.ALL}" or a list of 1-64 distinct module-path suffixes '
            '(e.g. ["self_attn.q_proj", "self_attn.v_proj"])'
        )

    def parse(self, value: Any) -> tuple[str, ...] | None:
        if value is None or value == self.ALL:
            return None
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= 64:
            raise _Invalid(f"must be {self.describe()}")
        for item in value:
            if not isinstance(item, str) or _MODULE.fullmatch(item) is None:
                raise _Invalid(
                    f"item {_show(item)} is not a module path; must be {self.describe()}"
                )
        if len(set(value)) != len(value):
            raise _Invalid(f"lists a module twice; must be {self.describe()}")
        return tuple(value)

    @staticmethod
    def dump(value: tuple[str, ...] | None) -> Any:
        return _Targets.ALL if value is None else list(value)


class _Layers:
    """``num_layers``: ``"all"`` (stored as ``None``) or an integer number of last blocks."""

    def describe(self) -> str:
        return '"all" or an integer in [1, 1024] (adapt only the last N blocks)'

    def parse(self, value: Any) -> int | None:
        if value is None or value == "all":
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise _Invalid(f"must be {self.describe()}")
        return value

    @staticmethod
    def dump(value: int | None) -> Any:
        return "all" if value is None else value


@dataclass(frozen=True)
class _Section:
    cls: Any  # a _Validated dataclass


def _spec(spec: Any, default: Any) -> Any:
    """A dataclass field carrying its specification in ``metadata["spec"]``."""
    return field(default=default, metadata={"spec": spec})


def _spec_of(f: Any) -> Any:  # f: dataclasses.Field
    """A field's specification; a field defaulting to a section class is that section."""
    factory = f.default_factory
    if isinstance(factory, type) and issubclass(factory, _Validated):
        return _Section(factory)
    return f.metadata["spec"]


def _default(f: Any) -> Any:  # f: dataclasses.Field
    return f.default_factory() if f.default is MISSING else f.default


def _show(value: Any) -> str:
    """A short, safe rendering of an arbitrary value with its type."""
    if value is True or value is False:
        return f"{str(value).lower()} (boolean)"
    try:
        text = repr(value)
    except Exception:  # an arbitrary object's __repr__ may fail; the message must not
        text = f"<{type(value).__name__}>"
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _join(prefix: str, key: object) -> str:
    name = key if isinstance(key, str) and _MODULE.fullmatch(key) else repr(key)
    return f"{prefix}.{name}" if prefix else str(name)


# --- parsing and validation (shared by from_dict and __post_init__) ----------------------------


def _parse(cls: Any, raw: Mapping[Any, Any], *, strict: bool) -> tuple[dict[str, Any], list[str]]:
    """Validate ``raw`` against section class ``cls``: ``(normalised values, problems)``.

    ``strict`` (a file or dict): unknown keys and missing required keys are problems, and
    one-of groups are not filled with their default. Otherwise (a direct constructor call)
    every field is present and a one-of group left empty takes its default.
    """
    prefix, out, problems = cls._PATH, {}, []
    names = [f.name for f in fields(cls)]
    if strict:
        for key in raw:
            if key not in names:
                problems.append(_unknown(prefix, key, names))
    for f in fields(cls):
        spec, path = _spec_of(f), _join(prefix, f.name)
        if f.name in raw:
            value = raw[f.name]
        elif strict and f.name in cls._REQUIRED:
            problems.append(f"{path}: missing; required, {_describe(spec)}. Add it.")
            continue
        else:
            value = _default(f)
        if isinstance(spec, _Section):
            if isinstance(value, spec.cls):
                out[f.name] = value
            elif isinstance(value, Mapping) and strict:
                sub, sub_problems = _parse(spec.cls, value, strict=True)
                problems += sub_problems
                if not sub_problems:
                    out[f.name] = spec.cls(**sub)
            else:
                problems.append(
                    f"{path} = {_show(value)}: must be a table (a [{spec.cls._PATH}] section)"
                )
            continue
        try:
            out[f.name] = spec.parse(value)
        except _Invalid as exc:
            problems.append(f"{path} = {_show(value)}: {exc}.")
    if not problems:
        problems += cls._cross(out, strict)
    return out, problems


def _describe(spec: Any) -> str:
    if isinstance(spec, _Section):
        return f"a [{spec.cls._PATH}] table"
    return str(spec.describe())


def _unknown(prefix: str, key: object, names: list[str]) -> str:
    where = f"[{prefix}]" if prefix else "a policy's top level"
    close = difflib.get_close_matches(key, names, n=1) if isinstance(key, str) else []
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"{_join(prefix, key)}: unknown key.{hint} Keys allowed in {where}: "
        f"{', '.join(names)}. Remove it or fix its spelling."
    )


def _one_of(
    out: dict[str, Any], prefix: str, keys: tuple[str, str], default: float, required: bool
) -> list[str]:
    """Exactly one of two optional keys; when neither is set, the first takes ``default``
    unless ``required`` (a file must then set one)."""
    given = [k for k in keys if out[k] is not None]
    a, b = (_join(prefix, k) for k in keys)
    if len(given) == 2:
        return [f"{a} and {b} are both set: set exactly one of them and remove the other."]
    if not given:
        if required:
            return [f"{a} / {b}: missing; set exactly one of them (the per-round privacy target)."]
        out[keys[0]] = default
    return []


def _error(problems: list[str], source: str | None) -> PolicyError:
    where = f" {source}" if source else ""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    lines = "\n".join(f"  - {p}" for p in problems)
    return PolicyError(f"invalid policy{where} ({count}):\n{lines}\n({_DOCS}.)")


class _Validated:
    """Mixin: validate and normalise a frozen section dataclass on construction."""

    _PATH: ClassVar[str] = ""
    _REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        own = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        values, problems = _parse(type(self), own, strict=False)
        if problems:
            raise _error(problems, None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        return []

    def _dump(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            spec, value = _spec_of(f), getattr(self, f.name)
            if isinstance(spec, _Section):
                data[f.name] = value._dump()
            elif isinstance(spec, _Targets | _Layers):
                data[f.name] = spec.dump(value)
            elif value is not None:  # an unset optional is left out (TOML has no null)
                data[f.name] = value
        return data


# --- the sections ------------------------------------------------------------------------------

_EPS = _Number(float, 0.1, 100.0)


@dataclass(frozen=True)
class PrivacyPolicy(_Validated):
    """The privacy contract (what a reviewer checks first; docs/privacy.md).

    Attributes:
        unit: what DP protects: one ``"interaction"``, a ``"session"`` or a ``"day"``.
        lifetime_epsilon: ε each unit may lose over the device's whole life, in [0.1, 100].
        delta: δ of the lifetime guarantee, in (0, 1e-3]; keep it well below 1 / (units).
        round_epsilon: per-round target ε (noise is calibrated to spend at most this per round
            for a unit eligible in it), in (0, lifetime_epsilon]. Exactly one of this and
            ``noise_multiplier``; defaults to 0.5 when neither is given in Python.
        noise_multiplier: σ, a fixed noise multiplier (noise std / clip norm), in [0.1, 1000].
        clip_norm: C, the L2 bound on a unit's gradient contribution, in (0, 1000].
        accountant: ``"rdp"`` (default; also what the per-unit filter uses) or ``"prv"``
            (tighter, for reports and calibration of a planned schedule).
    """

    _PATH: ClassVar[str] = "privacy"
    _REQUIRED: ClassVar[tuple[str, ...]] = ("unit", "lifetime_epsilon", "delta")

    unit: str = _spec(_Choice(("interaction", "session", "day")), "interaction")
    lifetime_epsilon: float = _spec(_EPS, 8.0)
    delta: float = _spec(_Number(float, 0.0, 1e-3, low_open=True), 1e-6)
    round_epsilon: float | None = _spec(
        _Number(float, 0.0, 100.0, low_open=True, optional=True), None
    )
    noise_multiplier: float | None = _spec(_Number(float, 0.1, 1000.0, optional=True), None)
    clip_norm: float = _spec(_Number(float, 0.0, 1000.0, low_open=True), 1.0)
    accountant: str = _spec(_Choice(("rdp", "prv")), "rdp")

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        keys = ("round_epsilon", "noise_multiplier")
        problems = _one_of(out, cls._PATH, keys, 0.5, required=strict)
        eps = out["round_epsilon"]
        if not problems and eps is not None and eps > out["lifetime_epsilon"]:
            problems.append(
                f"privacy.round_epsilon = {out['round_epsilon']!r} exceeds "
                f"privacy.lifetime_epsilon = {out['lifetime_epsilon']!r}: a round may spend "
                "at most the lifetime budget; lower round_epsilon."
            )
        return problems


@dataclass(frozen=True)
class LoRAPolicy(_Validated):
    """The adapter trained (see :class:`personal.model.lora.LoRAConfig`).

    Attributes:
        rank: r, in [1, 256].
        scale: update multiplier ``y = Wx + scale·BAx``, in (0, 1000] (PEFT's
            ``lora_alpha = scale · rank``).
        dropout: dropout on the LoRA input while training, in [0, 1).
        targets: module-path suffixes inside a block (``None``, written ``"all-linear"``:
            every attention and MLP linear, MoE routers excluded).
        num_layers: adapt only the last N blocks, in [1, 1024] (``None``, written ``"all"``).
    """

    _PATH: ClassVar[str] = "training.lora"

    rank: int = _spec(_Number(int, 1, 256), 8)
    scale: float = _spec(_Number(float, 0.0, 1000.0, low_open=True), 20.0)
    dropout: float = _spec(_Number(float, 0.0, 1.0, high_open=True), 0.0)
    targets: tuple[str, ...] | None = _spec(_Targets(), None)
    num_layers: int | None = _spec(_Layers(), None)

    def to_lora_config(self) -> Any:
        """The :class:`~personal.model.lora.LoRAConfig` (imports MLX)."""
        from personal.model.lora import LoRAConfig

        return LoRAConfig(
            rank=self.rank,
            scale=self.scale,
            dropout=self.dropout,
            targets=self.targets,
            num_layers=self.num_layers,
        )


@dataclass(frozen=True)
class TrainingPolicy(_Validated):
    """When a round runs and what it does.

    Attributes:
        min_new_units: new units logged since the last round before another may run,
            in [1, 1e6].
        max_rounds_per_day: at most this many rounds per (local) day, in [1, 1440].
        steps: DP-SGD steps per round, in [1, 100000].
        learning_rate: the optimiser's step size, in (0, 10].
        optimizer: ``"adam"`` or ``"sgd"`` (both only ever see noised gradients).
        expected_batch_size: B, expected units per step (sampling rate q = B / units),
            in [1, 65536].
        max_tokens: tokens per example (longer ones are truncated), in [8, 32768].
        examples_per_unit: most recent examples a unit contributes per step, in [1, 1024]
            (the unit is clipped as one whatever this is).
        lora: the adapter (``[training.lora]``).
    """

    _PATH: ClassVar[str] = "training"

    min_new_units: int = _spec(_Number(int, 1, 1_000_000), 32)
    max_rounds_per_day: int = _spec(_Number(int, 1, 1440), 1)
    steps: int = _spec(_Number(int, 1, 100_000), 50)
    learning_rate: float = _spec(_Number(float, 0.0, 10.0, low_open=True), 1e-3)
    optimizer: str = _spec(_Choice(("adam", "sgd")), "adam")
    expected_batch_size: float = _spec(_Number(float, 1.0, 65536.0), 16.0)
    max_tokens: int = _spec(_Number(int, 8, 32768), 128)
    examples_per_unit: int = _spec(_Number(int, 1, 1024), 4)
    lora: LoRAPolicy = field(default_factory=LoRAPolicy)


@dataclass(frozen=True)
class ContinualPolicy(_Validated):
    """Forgetting mitigation: replay of past units and public text, and online EWC.

    Attributes:
        replay_share: share of each step's expected batch drawn from the private replay
            buffer (charged to those units), in [0, 1).
        buffer_capacity: units kept in the replay buffer (reservoir sampling), in [0, 1e6].
        public_replay_share: share of each step's batch drawn from public text (free),
            in [0, 1). ``replay_share + public_replay_share < 1``: part of every batch is new.
        ewc_lambda: weight of the EWC penalty (0 disables EWC), in [0, 1e6].
        fisher_source: ``"public"`` (Fisher on public text) or ``"dp_gradients"`` (from the
            round's already-noised gradients); neither reads raw private data.
    """

    _PATH: ClassVar[str] = "continual"

    replay_share: float = _spec(_Number(float, 0.0, 1.0, high_open=True), 0.25)
    buffer_capacity: int = _spec(_Number(int, 0, 1_000_000), 1024)
    public_replay_share: float = _spec(_Number(float, 0.0, 1.0, high_open=True), 0.25)
    ewc_lambda: float = _spec(_Number(float, 0.0, 1e6), 10.0)
    fisher_source: str = _spec(_Choice(("public", "dp_gradients")), "public")

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        problems = []
        total = out["replay_share"] + out["public_replay_share"]
        if total >= 1.0:
            problems.append(
                f"continual.replay_share + continual.public_replay_share = {total:g}: must be "
                "< 1 so that part of every batch is new data; lower one of them."
            )
        if out["replay_share"] > 0 and out["buffer_capacity"] == 0:
            problems.append(
                f"continual.replay_share = {out['replay_share']:g} needs a replay buffer but "
                "continual.buffer_capacity = 0: raise the capacity or set replay_share = 0."
            )
        return problems


@dataclass(frozen=True)
class GatesPolicy(_Validated):
    """What a new adapter must show before it becomes active.

    Attributes:
        max_general_regression: largest relative rise of the public-corpus loss vs the active
            adapter, in [0, 1] (0.01 = 1%).
        min_personal_gain: smallest relative drop of the DP-noised held-out personal loss,
            in [-1, 1] (0: no worse; -1 disables the check).
        validation_noise_multiplier: σ of the Gaussian noise on the personal metric, in
            [0.1, 1000]. Exactly one of this and ``validation_epsilon``; defaults to 10 when
            neither is given.
        validation_epsilon: per-round ε target of the personal metric instead, in
            (0, privacy.lifetime_epsilon]. The metric is charged to the held-out units.
    """

    _PATH: ClassVar[str] = "gates"

    max_general_regression: float = _spec(_Number(float, 0.0, 1.0), 0.01)
    min_personal_gain: float = _spec(_Number(float, -1.0, 1.0), 0.0)
    validation_noise_multiplier: float | None = _spec(
        _Number(float, 0.1, 1000.0, optional=True), None
    )
    validation_epsilon: float | None = _spec(
        _Number(float, 0.0, 100.0, low_open=True, optional=True), None
    )

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        keys = ("validation_noise_multiplier", "validation_epsilon")
        return _one_of(out, cls._PATH, keys, 10.0, required=False)


@dataclass(frozen=True)
class RetentionPolicy(_Validated):
    """How long private data lives.

    Attributes:
        days: interactions older than this are erased, in [1, 36500].
        epoch_days: length of a data-key epoch (erasure crypto-shreds whole epochs),
            in [1, 3650] and <= ``days``.
    """

    _PATH: ClassVar[str] = "retention"

    days: int = _spec(_Number(int, 1, 36500), 365)
    epoch_days: int = _spec(_Number(int, 1, 3650), 30)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        if out["epoch_days"] > out["days"]:
            return [
                f"retention.epoch_days = {out['epoch_days']} exceeds retention.days = "
                f"{out['days']}: an epoch must end before its data expires; lower epoch_days."
            ]
        return []


@dataclass(frozen=True)
class MigrationPolicy(_Validated):
    """What happens to the adapter when a new base model arrives.

    Attributes:
        strategy: ``"distill"`` (free: post-processing), ``"retrain"`` (charged),
            ``"both"`` (distill, then a budgeted retrain) or ``"drop"`` (start over).
        distill_steps: distillation steps, in [1, 1e6].
        retrain_budget_share: share of each unit's *remaining* budget a retrain may spend,
            in [0, 1]; must be > 0 for ``retrain`` and ``both``.
    """

    _PATH: ClassVar[str] = "migration"

    strategy: str = _spec(_Choice(("distill", "retrain", "both", "drop")), "distill")
    distill_steps: int = _spec(_Number(int, 1, 1_000_000), 200)
    retrain_budget_share: float = _spec(_Number(float, 0.0, 1.0), 0.25)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        if out["strategy"] in ("retrain", "both") and out["retrain_budget_share"] == 0:
            return [
                f'migration.strategy = "{out["strategy"]}" retrains but '
                'migration.retrain_budget_share = 0: give it a share > 0 or use "distill".'
            ]
        return []


@dataclass(frozen=True)
class StorePolicy(_Validated):
    """The encrypted store.

    Attributes:
        synchronous: SQLite durability, ``"FULL"`` (every commit survives power loss) or
            ``"NORMAL"`` (faster; may lose the last commits on power loss, never corrupts).
    """

    _PATH: ClassVar[str] = "store"

    synchronous: str = _spec(_Choice(("FULL", "NORMAL")), "FULL")


# --- the policy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy(_Validated):
    """A complete, validated policy. ``Policy()`` is the default policy.

    Attributes:
        name: a short name (recorded with the digest), 1-64 of ``A-Za-z0-9._-``.
        description: free text, at most 2000 characters.
        privacy, training, continual, gates, retention, migration, store: the sections.
    """

    _REQUIRED: ClassVar[tuple[str, ...]] = ("privacy",)

    name: str = _spec(_Text(_NAME, 64), "custom")
    description: str = _spec(_Text(None, 2000), "")
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    training: TrainingPolicy = field(default_factory=TrainingPolicy)
    continual: ContinualPolicy = field(default_factory=ContinualPolicy)
    gates: GatesPolicy = field(default_factory=GatesPolicy)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    migration: MigrationPolicy = field(default_factory=MigrationPolicy)
    store: StorePolicy = field(default_factory=StorePolicy)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        lifetime, val = out["privacy"].lifetime_epsilon, out["gates"].validation_epsilon
        if val is not None and val > lifetime:
            return [
                f"gates.validation_epsilon = {val!r} exceeds privacy.lifetime_epsilon = "
                f"{lifetime!r}: the metric is charged to the same units; lower it."
            ]
        return []

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Policy:
        """Build from plain data (parsed TOML or JSON); every problem is reported at once.

        Raises:
            PolicyError: naming every bad key, its value, the allowed type/range and the fix.
        """
        if not isinstance(data, Mapping):
            raise _error([f"the policy is {_show(data)}: must be a table of sections"], source)
        values, problems = _parse(cls, data, strict=True)
        if problems:
            raise _error(problems, source)
        return cls(**values)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> Policy:
        """Parse and validate TOML text; malformed TOML is a :class:`PolicyError` too."""
        if not isinstance(text, str):
            raise _error([f"the policy text is {_show(text)}: must be a string"], source)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(
                f"invalid policy {source}: not valid TOML ({exc}). Fix the syntax "
                "(https://toml.io), or start from `personal policy show default`."
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
                    raise _error([f"{dotted}: no such section {part!r}"], "override")
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
            f"not {_show(path_or_name)}."
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
            spec = _spec_of(f)
            if isinstance(spec, _Section):
                walk(spec.cls)
            else:
                keys[_join(cls._PATH, f.name)] = spec.describe()

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
