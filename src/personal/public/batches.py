"""Public examples as response-scored batches, in the base's chat format.

The gates score the public data's ``gate`` split with them (the general loss); public replay,
distillation to the base and the public Fisher train on its ``train`` split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from personal.public.data import PublicExample

if TYPE_CHECKING:  # personal.model imports MLX: only when batches are built
    from personal.model.batching import Batch


def public_batches(
    tokenizer: Any, examples: Sequence[PublicExample], batch_size: int = 32
) -> list[Batch]:
    """Response-scored batches of public examples, in the base's chat format.

    Used for the general-loss gate (a :class:`~personal.public.PublicData`'s ``gate`` split)
    and for public replay, distillation to the base and the public Fisher (its ``train``
    split). A reply cut at a length limit is scored without an end-of-turn token.
    """
    from personal.model.batching import make_batch
    from personal.model.chat import chat_format

    fmt = chat_format(tokenizer)
    encoded = [fmt.encode(e.prompt, e.response, complete=e.complete) for e in examples]
    return [
        make_batch(
            [ids for ids, _ in encoded[i : i + batch_size]],
            [s for _, s in encoded[i : i + batch_size]],
        )
        for i in range(0, len(encoded), batch_size)
    ]
