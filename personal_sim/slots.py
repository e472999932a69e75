"""Slot accuracy: does the greedy reply get the user's personal slot right?

Many requests are underspecified ("call my mom", "take me home", "play something", "remind me
to water the plants"): the right reply names something the prompt does not, and only this
user's history says what (who mom is, where home is, their favourite artist, the time they
usually want). The synthetic world knows it: the held-out interaction's slots. A request
*counts* when its reference reply holds one of :data:`PERSONAL_SLOTS` that its prompt does not
name; it is *right* when the model's greedy reply names that same value (as a whole word).

    rate = slot_accuracy(model, tokenizer, held_out)   # {"slot_accuracy": 0.31, ...}
    rate = slot_accuracy(model, tokenizer, held_out, histories=turns)   # with personal memory

With ``histories`` (per request, the turns personal memory recalled for it) each greedy reply
is generated with them before the request, and ``slot_recall`` counts the slot requests whose
recalled turns name the right value at all (what the model could copy).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from personal.model.chat import History
from personal.model.generate import greedy_replies
from personal.model.token_cache import DEFAULT_SETTINGS, CacheSettings, TokenCache

from personal_sim.public_corpus import Interaction

#: The slots a persona decides (who, where, what music, when), in order of precedence.
PERSONAL_SLOTS = ("contact", "address", "artist", "time")
#: Tokens of a greedy reply: the slot-bearing replies of the world are short.
REPLY_TOKENS = 32


def _mentions(text: str, value: str) -> bool:
    # Whole words only: "1 pm" must not match inside "11 pm".
    pattern = r"(?<!\w)" + re.escape(value.casefold()) + r"(?!\w)"
    return re.search(pattern, text.casefold()) is not None


def slot_target(it: Interaction) -> tuple[str, str] | None:
    """``(slot, value)`` the reply must get right, or ``None`` if the prompt names them all."""
    for slot in PERSONAL_SLOTS:
        value = it.slots.get(slot)
        if value and _mentions(it.response, value) and not _mentions(it.prompt, value):
            return slot, value
    return None


def slot_accuracy(
    model: Any,
    tokenizer: Any,
    held_out: Sequence[Interaction],
    max_tokens: int = REPLY_TOKENS,
    *,
    histories: Sequence[History] | None = None,
    caches: Sequence[TokenCache | None] | None = None,
    cache_settings: CacheSettings = DEFAULT_SETTINGS,
) -> dict[str, Any]:
    """The share of ``held_out``'s slot requests whose greedy reply names the right value.

    Returns ``{"slot_accuracy": share or None, "slot_requests": n, "slot_hits": hits,
    "by_slot": {slot: [hits, n]}}`` (``None`` when no request carries a personal slot).
    ``histories``: per request of ``held_out``, earlier ``(prompt, response)`` turns generated
    before it (recalled memory); the result then also has ``"slot_recall"``, the share of slot
    requests whose turns name the right value (``None`` without slot requests). ``caches``:
    per request, a token cache (or ``None``) to generate through instead; ``slot_recall`` then
    looks in the exchanges each was built from, and ``cache_settings`` weighs the caches.
    """
    if histories is not None and caches is not None:
        raise ValueError("pass histories or caches, not both")
    memory = histories if histories is not None else caches
    if memory is not None and len(memory) != len(held_out):
        raise ValueError(f"{len(memory)} recalls for {len(held_out)} requests")
    per_request = list(memory) if memory is not None else [None] * len(held_out)
    targets = [(it, slot_target(it), m) for it, m in zip(held_out, per_request, strict=True)]
    asked = [(it, t, m) for it, t, m in targets if t is not None]
    by_slot: dict[str, list[int]] = {}
    recall: dict[str, Any] = {} if memory is None else {"slot_recall": None}
    if not asked:
        return {"slot_accuracy": None, "slot_requests": 0, "slot_hits": 0, "by_slot": by_slot,
                **recall}  # fmt: skip
    prompts = [it.prompt for it, _, _ in asked]
    if caches is not None:
        replies = greedy_replies(
            model, tokenizer, prompts, max_tokens=max_tokens, cache_settings=cache_settings,
            caches=[m if isinstance(m, TokenCache) else None for _, _, m in asked],
        )  # fmt: skip
    else:
        replies = greedy_replies(
            model, tokenizer, prompts, max_tokens=max_tokens,
            histories=[m if isinstance(m, Sequence) else () for _, _, m in asked],
        )  # fmt: skip
    hits = recalled = 0
    for (_, (slot, value), m), (reply, _) in zip(asked, replies, strict=True):
        history = m.sources if isinstance(m, TokenCache) else (m or ())
        right = _mentions(reply, value)
        hits += right
        recalled += any(_mentions(f"{q} {a}", value) for q, a in history)
        counts = by_slot.setdefault(slot, [0, 0])
        counts[0] += right
        counts[1] += 1
    if memory is not None:
        recall["slot_recall"] = recalled / len(asked)
    return {
        "slot_accuracy": hits / len(asked),
        "slot_requests": len(asked),
        "slot_hits": hits,
        "by_slot": by_slot,
        **recall,
    }
