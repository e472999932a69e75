"""One chat format per base model: how an exchange becomes tokens, for training and serving alike.

Training, evaluation, the quality gates, distillation and :func:`~personal.model.generate.generate`
all render an interaction through :func:`chat_format`, so an adapter is trained in exactly the
format it is served in. Three kinds, chosen from the tokenizer:

* ``"product"``: the bundled models' format (:mod:`personal.model.tokenizer`),
  ``<|bos|><|user|>{prompt}<|assistant|>{response}<|eos|>``. Rendered in pure Python (no Jinja),
  byte-identical to what every earlier release produced. Chosen when the tokenizer's chat
  template is :data:`~personal.model.tokenizer.CHAT_TEMPLATE`, or when it has no template but
  carries the product's special tokens at their ids (or cannot be inspected at all).
* ``"template"``: the base's own Jinja chat template (ChatML, Llama 3, Gemma, ...), rendered by
  the tokenizer's ``apply_chat_template`` exactly as it renders a generation prompt, default
  system prompt included: a template that injects one (SmolLM2's does) gets it in training too,
  since that is what the base sees when it serves. The rendered text is tokenized without
  added special tokens, so a template that writes its BOS is not given a second one.
* ``"plain"``: a tokenizer without any chat template (a pretrained, not instruction-tuned base)
  gets ``[BOS]User: {prompt}\\nAssistant:`` followed by `` {response}`` and its EOS token. A
  tokenizer with neither a template nor an EOS token cannot learn to stop: :class:`NoChatFormat`.

Scoring: ``encode(prompt, response)`` returns ``(ids, start)``; ``ids[start:]`` is the reply and
the token that ends the assistant's turn (``<|eos|>``, ``<|im_end|>``, ``<|eot_id|>``,
``<end_of_turn>``, ...), so the model learns to stop; whatever the template writes after that
token (a newline) is left out. Generation stops on :attr:`ChatFormat.stop_ids`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from personal.errors import NoChatFormat, TokenizerMismatch
from personal.model.tokenizer import (
    ASSISTANT,
    ASSISTANT_ID,
    BOS,
    CHAT_TEMPLATE,
    EOS,
    EOS_ID,
    USER,
    encode_text,
    format_prompt,
)

#: Earlier ``(prompt, response)`` exchanges rendered before a request (personal memory).
History = Sequence[tuple[str, str]]

KINDS = ("product", "template", "plain")
#: The plain format's prompt and reply pieces (documented in docs/base-models.md).
PLAIN_PROMPT = "User: {prompt}\nAssistant:"
PLAIN_REPLY = " {response}"

# Probe texts for finding where a template puts the reply: unlikely to be altered by a template.
_PROBE_PROMPT = "Zq7 probe prompt"
_PROBE_REPLY = "Xj4 probe reply"


@dataclass(frozen=True)
class ChatFormat:
    """How one tokenizer renders a single user/assistant exchange.

    Attributes:
        kind: ``"product"``, ``"template"`` or ``"plain"`` (see the module docstring).
        stop_ids: token ids that end a generated reply.
        reply_prefix: text a template writes between the generation prompt and the reply in a
            rendered exchange (e.g. an empty ``<think></think>`` block); usually empty.
        end_ids: the tokens that close a reply, the last of them a stop token.
    """

    kind: str
    stop_ids: frozenset[int]
    reply_prefix: str = ""
    end_ids: tuple[int, ...] = ()
    tokenizer: Any = field(default=None, repr=False, compare=False)

    def prompt_text(self, prompt: str, history: History = ()) -> str:
        """The text a generation starts from (the user turn and the assistant's header).

        ``history``: earlier exchanges, rendered first as prior user/assistant turns in the
        same format (the base's template, the product's tokens, or plain ``User:`` lines).
        """
        if self.kind == "product":
            if not history:
                return format_prompt(prompt)
            turns = "".join(f"{USER}{p}{ASSISTANT}{r}{EOS}" for p, r in history)
            return f"{BOS}{turns}{USER}{prompt}{ASSISTANT}"
        if self.kind == "plain":
            bos = getattr(self.tokenizer, "bos_token", None) or ""
            turns = "".join(
                PLAIN_PROMPT.format(prompt=p) + PLAIN_REPLY.format(response=r) + "\n"
                for p, r in history
            )
            return bos + turns + PLAIN_PROMPT.format(prompt=prompt)
        messages = [
            {"role": role, "content": text}
            for p, r in history
            for role, text in (("user", p), ("assistant", r))
        ]
        return _render(self.tokenizer, [*messages, {"role": "user", "content": prompt}], True)

    def prompt_ids(self, prompt: str, history: History = ()) -> list[int]:
        """Token ids a generation starts from (``history`` as in :meth:`prompt_text`)."""
        return encode_text(self.tokenizer, self.prompt_text(prompt, history))

    def encode(
        self, prompt: str, response: str, *, complete: bool = True, history: History = ()
    ) -> tuple[list[int], int]:
        """Tokenize one exchange; ``ids[start:]`` are the reply and its end-of-turn token.

        Args:
            prompt: the user's message.
            response: the assistant's reply.
            complete: ``False`` for a reply cut at a length limit: its end-of-turn token is
                left out, so the model is not taught to stop mid-sentence.
            history: earlier exchanges rendered before it (as :meth:`prompt_text`): scoring a
                reply given recalled memory.

        Returns:
            ``(ids, start)``: the tokens and the index of the first reply token.

        Raises:
            TokenizerMismatch: a product-format tokenizer splits the prompt differently alone
                than within the exchange (it lacks the ``<|assistant|>`` special token).
        """
        if self.kind == "product":
            text = self.prompt_text(prompt, history)
            return _encode_product(self.tokenizer, text, response, complete)
        prompt_ids = self.prompt_ids(prompt, history)
        reply = PLAIN_REPLY.format(response=response) if self.kind == "plain" else response
        # The reply is tokenized apart from the prompt: the prompt's tokens are then exactly what
        # generation starts from, whatever the tokenizer would merge across the boundary.
        ids = prompt_ids + encode_text(self.tokenizer, self.reply_prefix + reply)
        return ids + (list(self.end_ids) if complete else []), len(prompt_ids)

    def encode_many(
        self, pairs: Sequence[tuple[str, str]], complete: Sequence[bool] | None = None
    ) -> list[tuple[list[int], int]]:
        """:meth:`encode` for every ``(prompt, response)``."""
        flags = complete if complete is not None else [True] * len(pairs)
        return [self.encode(p, r, complete=c) for (p, r), c in zip(pairs, flags, strict=True)]


def _encode_product(
    tokenizer: Any, prompt_text: str, response: str, complete: bool
) -> tuple[list[int], int]:
    prompt_ids = encode_text(tokenizer, prompt_text)
    ids = encode_text(tokenizer, f"{prompt_text}{response}{EOS if complete else ''}")
    start = len(prompt_ids)
    # <|assistant|> is an added token, so tokenization cannot merge across it; if this fails,
    # the tokenizer was not built for the chat format and response masks would be wrong.
    if ids[:start] != prompt_ids:
        raise TokenizerMismatch(
            "the prompt's tokens are not a prefix of the interaction's tokens; the tokenizer "
            f"must define {ASSISTANT} as a special token (train it with train_bpe_tokenizer)"
        )
    return ids, start


# --- choosing the format ---------------------------------------------------------------------

_CACHE: weakref.WeakKeyDictionary[Any, ChatFormat] = weakref.WeakKeyDictionary()


def chat_format(tokenizer: Any) -> ChatFormat:
    """The chat format of ``tokenizer`` (computed once per tokenizer object).

    Accepts an mlx-lm ``TokenizerWrapper``, a transformers tokenizer or a raw
    ``tokenizers.Tokenizer``.

    Raises:
        NoChatFormat: the tokenizer has no chat template and no end-of-sequence token, or its
            template renders a generation prompt that does not begin a rendered exchange.
    """
    try:
        return _CACHE[tokenizer]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable (a Rust tokenizer)
        pass
    fmt = _choose(tokenizer)
    with contextlib.suppress(TypeError):
        _CACHE[tokenizer] = fmt
    return fmt


def _choose(tokenizer: Any) -> ChatFormat:
    template = getattr(tokenizer, "chat_template", None)
    eos = eos_ids(tokenizer)
    if template == CHAT_TEMPLATE or (not template and _speaks_product(tokenizer)):
        return ChatFormat("product", frozenset({EOS_ID, *eos}), tokenizer=tokenizer)
    if template:
        return _from_template(tokenizer, eos)
    if not eos:
        raise NoChatFormat(
            "the tokenizer has no chat template and no end-of-sequence token, so a reply could "
            "never end: add a chat_template (and eos_token) to the model's "
            "tokenizer_config.json, or use an instruction-tuned base"
        )
    end = getattr(tokenizer, "eos_token_id", None)
    end = int(end) if end is not None else min(eos)
    return ChatFormat("plain", frozenset(eos), end_ids=(end,), tokenizer=tokenizer)


def _from_template(tokenizer: Any, eos: set[int]) -> ChatFormat:
    """Find where the template puts the reply and which token ends the assistant's turn."""
    user = {"role": "user", "content": _PROBE_PROMPT}
    prompt = _render(tokenizer, [user], True)
    full = _render(tokenizer, [user, {"role": "assistant", "content": _PROBE_REPLY}], False)
    at = full.find(_PROBE_REPLY, len(prompt))
    if not full.startswith(prompt) or at < 0:
        raise NoChatFormat(
            "the tokenizer's chat template renders a generation prompt that does not begin a "
            "rendered user/assistant exchange, so replies cannot be scored in the format they "
            "are served in: fix the template (tokenizer_config.json chat_template)"
        )
    after = encode_text(tokenizer, full[at + len(_PROBE_REPLY) :])
    enders = eos | _added_ids(tokenizer)
    cut = next((i for i, t in enumerate(after) if t in enders), None)
    if cut is not None:
        end_ids = tuple(after[: cut + 1])
    elif eos:  # a template that closes turns with plain text: end with EOS after it
        end = getattr(tokenizer, "eos_token_id", None)
        end_ids = (*after, int(end) if end is not None else min(eos))
    else:
        raise NoChatFormat(
            "the chat template closes the assistant's turn with no special token and the "
            "tokenizer has no end-of-sequence token: generation could never stop"
        )
    stops = frozenset({*eos, end_ids[-1]})
    return ChatFormat("template", stops, full[len(prompt) : at], end_ids, tokenizer)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
    return str(text)


def eos_ids(tokenizer: Any) -> set[int]:
    """The tokenizer's end-of-sequence ids (mlx-lm's ``eos_token_ids`` and ``eos_token_id``)."""
    ids: set[int] = set()
    for name in ("eos_token_ids", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple, set, frozenset)):
            ids |= {int(v) for v in value if isinstance(v, int)}
    return ids


def _added_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's added (special) tokens: what can end a turn in a template."""
    for name in ("added_tokens_decoder", "get_added_tokens_decoder"):
        table = getattr(tokenizer, name, None)
        table = table() if callable(table) else table
        if isinstance(table, dict):
            return {int(i) for i in table}
    return set()


def _token_id(tokenizer: Any, token: str) -> int | None:
    for name in ("convert_tokens_to_ids", "token_to_id"):
        lookup = getattr(tokenizer, name, None)
        if callable(lookup):
            value = lookup(token)
            return value if isinstance(value, int) else None
    return None


def _speaks_product(tokenizer: Any) -> bool:
    """The product's specials at their ids; a tokenizer that cannot say is taken to speak it."""
    has_lookup = any(
        callable(getattr(tokenizer, n, None)) for n in ("convert_tokens_to_ids", "token_to_id")
    )
    if not has_lookup:
        return True
    return _token_id(tokenizer, ASSISTANT) == ASSISTANT_ID and _token_id(tokenizer, EOS) == EOS_ID
