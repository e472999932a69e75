"""Public data: the non-personal text the gates, replay, EWC and migration use (free of privacy).

An app passes it to :meth:`Personalizer.open(..., public_data=...)
<personal.personalizer.Personalizer.open>` (or ``--public-data FILE.jsonl`` on the command
line); without it, each base answers a bundled set of generic prompts itself
(:class:`SelfGenerated`). See docs/public-data.md.
"""

from __future__ import annotations

from pathlib import Path

from personal.public.batches import public_batches
from personal.public.data import (
    GATE_EVERY,
    PublicData,
    PublicExample,
    PublicSource,
    parse_jsonl_line,
)
from personal.public.selfgen import MAX_TOKENS, SelfGenerated, generic_prompts

__all__ = [
    "GATE_EVERY",
    "MAX_TOKENS",
    "PublicData",
    "PublicExample",
    "PublicSource",
    "SelfGenerated",
    "generic_prompts",
    "parse_jsonl_line",
    "public_batches",
    "public_source",
]


def public_source(source: PublicSource | str | Path | None = None) -> PublicSource:
    """Resolve what an app passed as public data.

    Args:
        source: a :class:`PublicData`, any :class:`PublicSource`, the path of a JSONL file
            (read now, so a bad file fails before anything else happens), or ``None`` for the
            default, :class:`SelfGenerated`.

    Raises:
        PublicDataError: the file is unreadable or malformed (the message names the line).
    """
    if source is None:
        return SelfGenerated()
    if isinstance(source, (str, Path)):
        return PublicData.from_jsonl(source)
    if not isinstance(source, PublicSource):
        from personal.errors import PublicDataError

        raise PublicDataError(
            f"public_data must be a PublicData, a source with for_base(base), a JSONL path or "
            f"None, not {type(source).__name__}"
        )
    return source
