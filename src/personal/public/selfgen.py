"""The default public data: each base answers a bundled set of generic prompts itself.

Self-synthesized rehearsal (Huang et al. 2024, "Mitigating catastrophic forgetting in large
language models with self-synthesized rehearsal"): text the base generates stands in for the
general data it was trained on, which an on-device product does not have. With it, the
general-loss gate measures how far an adapter moved the model from **the base's own
behaviour**, and public replay and distillation to the base pull towards that behaviour.

The prompts (``generic_prompts.jsonl`` next to this module: a few hundred everyday-knowledge,
writing, how-to, math and coding requests, about no one) are answered with greedy decoding by
the bare base (any adapter switched off), at most :data:`MAX_TOKENS` tokens each, batched.
The answers are cached per base fingerprint under ``$PERSONAL_CACHE_DIR/public`` (default
``~/.cache/personal/public``), written atomically, so each base pays once per device: about
3 s for the bundled ``base-v1`` on 2 CPU cores (docs/public-data.md has the figures).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personal.errors import PublicDataError
from personal.filesafety import atomic_write_text
from personal.public.data import PublicData, PublicExample

#: The bundled generic prompts (one JSON object with a ``"prompt"`` per line).
PROMPTS_FILE = Path(__file__).with_name("generic_prompts.jsonl")
#: Longest self-generated answer, in tokens: bounds the cost; longer answers are kept cut
#: (scored without an end-of-turn token).
MAX_TOKENS = 64
#: Version of the cache files' layout and of the generation recipe.
CACHE_FORMAT = 1


def generic_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """The bundled generic prompts, in file order."""
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise PublicDataError(f"{path}, line {number}: no prompt ({exc})") from exc
    return prompts


class SelfGenerated:
    """A :class:`~personal.public.data.PublicSource`: the base's own greedy answers.

    Every :data:`~personal.public.data.GATE_EVERY`-th prompt is held out for the gate; the
    others are replay, Fisher and migration text.

    Args:
        prompts: the prompts to answer (default: the bundled generic prompts).
        max_tokens: longest answer in tokens.
        batch_size: prompts generated together.
        cache: the cache directory (default ``cache_dir() / "public"``); ``False`` disables
            the on-disk cache (answers are then kept in memory only).
    """

    name = "self-generated"

    def __init__(
        self,
        prompts: Sequence[str] | None = None,
        *,
        max_tokens: int = MAX_TOKENS,
        batch_size: int = 32,
        cache: str | Path | bool | None = None,
    ) -> None:
        self.prompts = list(prompts) if prompts is not None else generic_prompts()
        if len(self.prompts) < 2:
            raise PublicDataError("self-generated public data needs at least 2 prompts")
        self.max_tokens, self.batch_size, self.cache = max_tokens, batch_size, cache
        self._loaded: dict[str, PublicData] = {}
        #: Seconds the last generation took (0.0 when everything came from the cache).
        self.last_seconds = 0.0

    def recipe_digest(self) -> str:
        """What the answers depend on besides the base: prompts, token cap, recipe version."""
        text = json.dumps([CACHE_FORMAT, self.max_tokens, self.prompts], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def cache_path(self, base: Any) -> Path | None:
        """The cache file for ``base`` (``None`` when caching is off)."""
        if self.cache is False:
            return None
        if self.cache in (None, True):
            from personal.model.fingerprint import cache_dir

            root = cache_dir() / "public"
        else:
            root = Path(self.cache)  # type: ignore[arg-type]
        fingerprint = str(base.fingerprint).split(":")[-1]
        return root / f"{fingerprint[:32]}-{self.recipe_digest()[:16]}.jsonl"

    def for_base(self, base: Any) -> PublicData:
        """The base's answers to the prompts: from memory, the cache, or generated now."""
        key = str(base.fingerprint)
        if key not in self._loaded:
            path = self.cache_path(base)
            examples = _read_cache(path, key, self.recipe_digest()) if path else None
            if examples is None:
                examples = self.generate(base)
                if path is not None:
                    _write_cache(path, key, self.recipe_digest(), examples, self.last_seconds)
            self._loaded[key] = PublicData.from_examples(examples, name=self.name)
        return self._loaded[key]

    def generate(self, base: Any) -> list[PublicExample]:
        """Answer every prompt with ``base``'s bare model (greedy, batched)."""
        from personal.model.generate import greedy_replies
        from personal.model.lora import lora_off

        started = time.perf_counter()
        model, was_training = base.model, base.model.training
        model.eval()
        try:
            with lora_off(model):  # the base's own behaviour, never an adapter's
                replies = greedy_replies(
                    model,
                    base.tokenizer,
                    self.prompts,
                    max_tokens=self.max_tokens,
                    batch_size=self.batch_size,
                )
        finally:
            model.train(was_training)
        self.last_seconds = round(time.perf_counter() - started, 3)
        pairs = zip(self.prompts, replies, strict=True)
        return [PublicExample(p, text, done) for p, (text, done) in pairs]


def _read_cache(path: Path, fingerprint: str, recipe: str) -> list[PublicExample] | None:
    """The cached answers, or ``None`` if absent, foreign or damaged (then regenerated)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])
        expected = {"format": CACHE_FORMAT, "base": fingerprint, "recipe": recipe}
        if any(header.get(k) != v for k, v in expected.items()):
            return None
        rows = [json.loads(line) for line in lines[1:]]
        examples = [PublicExample(r["prompt"], r["response"], bool(r["complete"])) for r in rows]
    except (OSError, UnicodeDecodeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return examples if len(examples) == header.get("count") else None


def _write_cache(
    path: Path, fingerprint: str, recipe: str, examples: list[PublicExample], seconds: float
) -> None:
    """Write the cache atomically: readers see the old file, the new one, or none."""
    header = {
        "format": CACHE_FORMAT,
        "base": fingerprint,
        "recipe": recipe,
        "count": len(examples),
        "seconds": seconds,
    }
    rows = [{"prompt": e.prompt, "response": e.response, "complete": e.complete} for e in examples]
    text = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in [header, *rows])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)  # removes its temporary file if anything fails
    except OSError:
        pass  # a read-only or full cache only costs the regeneration next time
