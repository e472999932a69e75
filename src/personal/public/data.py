"""Public data: non-personal text the library may use freely, split by what it is used for.

Public text costs no privacy, so the library uses it wherever it needs text that is not the
user's: the general-loss gate's held-out set, public replay, distillation to the base, the
public Fisher of EWC (all on ``(prompt, response)`` examples) and the prompts migration
distills on. :class:`PublicData` holds such text with **disjoint** splits: the gate's examples
are never trained on, and no training example or migration prompt shares a prompt with them.

Anything with a ``for_base(base) -> PublicData`` method is a :class:`PublicSource`: a
:class:`PublicData` returns itself; :class:`~personal.public.selfgen.SelfGenerated` (the
default) has each base answer a bundled set of generic prompts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from personal.errors import PublicDataError

#: Without explicit ``"split"`` fields, one example in this many is held out for the gate.
GATE_EVERY = 4
SPLITS = ("gate", "train")


@dataclass(frozen=True)
class PublicExample:
    """One public exchange.

    Attributes:
        prompt: the user's message.
        response: the assistant's reply.
        complete: ``False`` when the reply was cut at a length limit (a self-generated answer):
            it is scored without an end-of-turn token, so nothing learns to stop mid-sentence.
    """

    prompt: str
    response: str
    complete: bool = True


@runtime_checkable
class PublicSource(Protocol):
    """Where public data comes from: one :class:`PublicData` per base model."""

    def for_base(self, base: Any) -> PublicData:
        """The public data to use with ``base`` (a :class:`~personal.model.base.BaseModel`)."""
        ...


@dataclass(frozen=True)
class PublicData:
    """Public text for the gate, replay, distillation to the base, the Fisher and migration.

    Attributes:
        gate: held-out examples for the general-loss gate (never trained on).
        train: examples for public replay, distillation to the base and the public Fisher.
        prompts: prompts for migration distillation; by default the training prompts that are
            not gate prompts (prompts given explicitly are used as they are).
        name: where the data came from (a file, ``"self-generated"``, ...), for reports.
    """

    gate: tuple[PublicExample, ...]
    train: tuple[PublicExample, ...]
    prompts: tuple[str, ...] = ()
    name: str = "public data"
    _digest: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.gate or not self.train:
            raise PublicDataError(
                f"{self.name}: public data needs at least one gate example and one training "
                f"example (got {len(self.gate)} and {len(self.train)}); give more examples"
            )
        if not self.prompts:
            # The gate measures forgetting on text nothing was fitted to: keep its prompts out.
            gate_prompts = {e.prompt for e in self.gate}
            train_prompts = dict.fromkeys(e.prompt for e in self.train)
            derived = tuple(p for p in train_prompts if p not in gate_prompts)
            object.__setattr__(self, "prompts", derived)
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "train", tuple(self.train))
        object.__setattr__(self, "gate", tuple(self.gate))

    def for_base(self, base: Any) -> PublicData:
        """The same data for every base (it is text, not a model's behaviour)."""
        return self

    def migration_prompts(self, count: int) -> list[str]:
        """The first ``count`` migration prompts (fewer if there are fewer)."""
        return list(self.prompts[: max(0, count)])

    def digest(self) -> str:
        """``sha256:`` over the splits' text: names the exact data in reports and caches."""
        if not self._digest:
            h = hashlib.sha256()
            for split, examples in (("gate", self.gate), ("train", self.train)):
                for e in examples:
                    h.update(json.dumps([split, e.prompt, e.response, e.complete]).encode())
            for p in self.prompts:
                h.update(json.dumps(["prompt", p]).encode())
            object.__setattr__(self, "_digest", "sha256:" + h.hexdigest())
        return self._digest

    @classmethod
    def from_examples(
        cls,
        examples: Iterable[PublicExample | tuple[str, str]],
        *,
        splits: Sequence[str | None] | None = None,
        name: str = "public data",
    ) -> PublicData:
        """Split ``examples`` into gate and training sets.

        ``splits`` names each example's split (``"gate"``, ``"train"`` or ``None``); an example
        without one goes to the gate if it is every :data:`GATE_EVERY`-th unassigned one
        (deterministic). Training examples that repeat a gate prompt are dropped.
        """
        items = [e if isinstance(e, PublicExample) else PublicExample(*e) for e in examples]
        chosen = list(splits) if splits is not None else [None] * len(items)
        gate: list[PublicExample] = []
        train: list[PublicExample] = []
        unassigned = 0
        for example, split in zip(items, chosen, strict=True):
            if split is None:
                split = "gate" if unassigned % GATE_EVERY == 0 else "train"
                unassigned += 1
            (gate if split == "gate" else train).append(example)
        gate_prompts = {e.prompt for e in gate}
        train = [e for e in train if e.prompt not in gate_prompts]
        return cls(tuple(gate), tuple(train), name=name)

    @classmethod
    def from_jsonl(cls, path: str | Path) -> PublicData:
        """Read public data from a JSON-lines file (see :func:`parse_jsonl_line`).

        Raises:
            PublicDataError: the file is missing or unreadable, a line is malformed (the
                message gives its number), or the file holds too few examples. Nothing is
                kept from a file with a bad line.
        """
        path = Path(path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PublicDataError(f"cannot read public data {path}: {exc}") from exc
        examples: list[PublicExample] = []
        splits: list[str | None] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            for example, split in parse_jsonl_line(line, f"{path}, line {number}"):
                examples.append(example)
                splits.append(split)
        if len(examples) < 2:
            raise PublicDataError(
                f"{path}: public data needs at least 2 examples (one for the gate, one to "
                f"train on), found {len(examples)}"
            )
        return cls.from_examples(examples, splits=splits, name=str(path))


def parse_jsonl_line(line: str, where: str) -> list[tuple[PublicExample, str | None]]:
    """The examples of one JSONL line: ``{"prompt", "response"}`` or ``{"messages": [...]}``.

    A ``messages`` line holds ``user``/``assistant`` turns, alternating and starting with the
    user; each user turn and the assistant turn after it become one example (earlier turns are
    not context: the library renders single exchanges). Either form may carry
    ``"split": "gate"`` or ``"train"``.

    Raises:
        PublicDataError: naming ``where`` and what is wrong.
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PublicDataError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(obj, dict):
        raise PublicDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise PublicDataError(f"{where}: split must be 'gate' or 'train', not {split!r}")
    if "messages" in obj:
        return [(e, split) for e in _from_messages(obj["messages"], where)]
    prompt, response = obj.get("prompt"), obj.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str) or not prompt:
        raise PublicDataError(
            f'{where}: expected {{"prompt": "...", "response": "..."}} (non-empty prompt, '
            'both strings) or {"messages": [...]}'
        )
    return [(PublicExample(prompt, response), split)]


def _from_messages(messages: Any, where: str) -> list[PublicExample]:
    if not isinstance(messages, list) or not messages:
        raise PublicDataError(f"{where}: messages must be a non-empty list")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected or not isinstance(content, str):
            raise PublicDataError(
                f"{where}: message {i + 1} must be a {expected!r} turn with string content "
                f"(user and assistant turns alternate, starting with the user; no system turn: "
                "the base's own template supplies any system prompt)"
            )
        turns.append(content)
    if len(turns) % 2:
        raise PublicDataError(f"{where}: the last user turn has no assistant reply")
    return [PublicExample(turns[i], turns[i + 1]) for i in range(0, len(turns), 2)]
