"""Value specifications and validation shared by the policy dataclasses (:mod:`personal.policy`).

Internal to the policy modules (not public API): each spec knows its type and range and how to
say what is wrong with a value; the :class:`Validated` base parses a section from plain data and
collects every problem.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from personal.errors import PolicyError

_DOCS = "docs/policies.md lists every key with its type, default and range"

# --- value specifications ----------------------------------------------------------------------


class _Invalid(Exception):
    """One value failed its specification; the message says why and what to do."""


_FIX = "; change it to a value in that range"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


@dataclass(frozen=True)
class Number:
    """An int or float in a closed/open interval; ``optional``: ``None`` (key absent) allowed.
    ``implicit``: a value :meth:`Validated._dump` leaves out, as for :class:`Choice`."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    implicit: float | None = None

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
class Choice:
    """One of ``options``. ``implicit``: a value :meth:`Validated._dump` leaves out (a key
    added later with its historical behaviour as default, so older policies keep their digest).
    """

    options: tuple[str, ...]
    implicit: str | None = None

    def describe(self) -> str:
        return "one of " + ", ".join(f'"{o}"' for o in self.options)

    def parse(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise _Invalid(f"must be {self.describe()}; use one of them, spelled exactly, quoted")
        return value


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True)
class Text:
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


class Targets:
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
                    f"item {show_value(item)} is not a module path; must be {self.describe()}"
                )
        if len(set(value)) != len(value):
            raise _Invalid(f"lists a module twice; must be {self.describe()}")
        return tuple(value)

    @staticmethod
    def dump(value: tuple[str, ...] | None) -> Any:
        return Targets.ALL if value is None else list(value)


class Layers:
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
class Section:
    cls: Any  # a Validated dataclass


def spec_field(spec: Any, default: Any) -> Any:
    """A dataclass field carrying its specification in ``metadata["spec"]``."""
    return field(default=default, metadata={"spec": spec})


def spec_of(f: Any) -> Any:  # f: dataclasses.Field
    """A field's specification; a field defaulting to a section class is that section."""
    factory = f.default_factory
    if isinstance(factory, type) and issubclass(factory, Validated):
        return Section(factory)
    return f.metadata["spec"]


def _default(f: Any) -> Any:  # f: dataclasses.Field
    return f.default_factory() if f.default is MISSING else f.default


def show_value(value: Any) -> str:
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


def join_key(prefix: str, key: object) -> str:
    name = key if isinstance(key, str) and _MODULE.fullmatch(key) else repr(key)
    return f"{prefix}.{name}" if prefix else str(name)


# --- parsing and validation (shared by from_dict and __post_init__) ----------------------------


def parse_section(
    cls: Any, raw: Mapping[Any, Any], *, strict: bool
) -> tuple[dict[str, Any], list[str]]:
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
        spec, path = spec_of(f), join_key(prefix, f.name)
        if f.name in raw:
            value = raw[f.name]
        elif strict and f.name in cls._REQUIRED:
            problems.append(f"{path}: missing; required, {_describe(spec)}. Add it.")
            continue
        else:
            value = _default(f)
        if isinstance(spec, Section):
            if isinstance(value, spec.cls):
                out[f.name] = value
            elif isinstance(value, Mapping) and strict:
                sub, sub_problems = parse_section(spec.cls, value, strict=True)
                problems += sub_problems
                if not sub_problems:
                    out[f.name] = spec.cls(**sub)
            else:
                problems.append(
                    f"{path} = {show_value(value)}: must be a table (a [{spec.cls._PATH}] section)"
                )
            continue
        try:
            out[f.name] = spec.parse(value)
        except _Invalid as exc:
            problems.append(f"{path} = {show_value(value)}: {exc}.")
    if not problems:
        problems += cls._cross(out, strict)
    return out, problems


def _describe(spec: Any) -> str:
    if isinstance(spec, Section):
        return f"a [{spec.cls._PATH}] table"
    return str(spec.describe())


def _unknown(prefix: str, key: object, names: list[str]) -> str:
    where = f"[{prefix}]" if prefix else "a policy's top level"
    close = difflib.get_close_matches(key, names, n=1) if isinstance(key, str) else []
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"{join_key(prefix, key)}: unknown key.{hint} Keys allowed in {where}: "
        f"{', '.join(names)}. Remove it or fix its spelling."
    )


def one_of(
    out: dict[str, Any],
    prefix: str,
    keys: tuple[str, str],
    default: float,
    required: bool,
    fallback: int = 0,
) -> list[str]:
    """Exactly one of two optional keys; when neither is set, ``keys[fallback]`` takes
    ``default`` unless ``required`` (a file must then set one)."""
    given = [k for k in keys if out[k] is not None]
    a, b = (join_key(prefix, k) for k in keys)
    if len(given) == 2:
        return [f"{a} and {b} are both set: set exactly one of them and remove the other."]
    if not given:
        if required:
            return [f"{a} / {b}: missing; set exactly one of them (the per-round privacy target)."]
        out[keys[fallback]] = default
    return []


def policy_error(problems: list[str], source: str | None) -> PolicyError:
    where = f" {source}" if source else ""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    lines = "\n".join(f"  - {p}" for p in problems)
    return PolicyError(f"invalid policy{where} ({count}):\n{lines}\n({_DOCS}.)")


class Validated:
    """Mixin: validate and normalise a frozen section dataclass on construction."""

    _PATH: ClassVar[str] = ""
    _REQUIRED: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        own = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        values, problems = parse_section(type(self), own, strict=False)
        if problems:
            raise policy_error(problems, None)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def _cross(cls, out: dict[str, Any], strict: bool) -> list[str]:
        return []

    def _dump(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            spec, value = spec_of(f), getattr(self, f.name)
            if isinstance(spec, Section):
                data[f.name] = value._dump()
            elif isinstance(spec, Targets | Layers):
                data[f.name] = spec.dump(value)
            elif isinstance(spec, Choice | Number) and (
                spec.implicit is not None and value == spec.implicit
            ):
                continue  # the implicit default is left out (the digest stays the same)
            elif value is not None:  # an unset optional is left out (TOML has no null)
                data[f.name] = value
        return data
