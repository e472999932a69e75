"""The product's chat format and a byte-level BPE tokenizer to go with it.

The bundled models (and any base built with :func:`train_bpe_tokenizer`) speak one chat format::

    <|bos|><|user|>{prompt}<|assistant|>{response}<|eos|>

The five special tokens always take ids 0..4 in the order of :data:`SPECIAL_TOKENS`, so code
can rely on ``eos_token_id == 2`` whatever vocabulary a base model was trained with. The same
format exists three times and the tests keep them equal: as a Jinja :data:`CHAT_TEMPLATE` (for
``tokenizer_config.json``, used by mlx-lm and transformers), and as the pure-Python
:func:`format_prompt` / :func:`format_interaction` (used by training code, which must not depend
on a Jinja renderer). Other bases keep their own chat template: :mod:`personal.model.chat`
chooses the format per tokenizer, and :func:`encode_interaction` goes through it.

:func:`train_bpe_tokenizer` builds a GPT-2 style byte-level BPE with the HF ``tokenizers``
library: every string, in any script, encodes and decodes back exactly, so there is no unknown
token. App developers who build their own base model can use it as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from personal.errors import ConfigError, TokenizerMismatch

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS, USER, ASSISTANT = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|user|>",
    "<|assistant|>",
)
#: The special tokens; their position here is their token id.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, USER, ASSISTANT)
PAD_ID, BOS_ID, EOS_ID, USER_ID, ASSISTANT_ID = range(len(SPECIAL_TOKENS))

#: Context length written to ``tokenizer_config.json`` (the bundled models are trained on less).
DEFAULT_MODEL_MAX_LENGTH = 512

# The smallest useful vocabulary: the specials plus one token per byte value.
_MIN_VOCAB = len(SPECIAL_TOKENS) + 256

#: Jinja chat template (the transformers dialect). A system message is an error rather than
#: silently dropped: the base models never saw one, so accepting it would mislead callers.
CHAT_TEMPLATE = (
    "{{ '" + BOS + "' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '" + USER + "' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '" + ASSISTANT + "' + message['content'] + '" + EOS + "' }}"
    "{% else %}{{ raise_exception('only user and assistant roles are supported') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "' }}{% endif %}"
)

_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def format_prompt(prompt: str) -> str:
    """Render a user prompt ready for generation (what the model continues).

    Args:
        prompt: The user's message.

    Returns:
        ``<|bos|><|user|>{prompt}<|assistant|>``, identical to :data:`CHAT_TEMPLATE` rendered
        with one user message and ``add_generation_prompt=True``.
    """
    return f"{BOS}{USER}{prompt}{ASSISTANT}"


def format_interaction(prompt: str, response: str) -> str:
    """Render one complete user/assistant exchange (what the model is trained on).

    Args:
        prompt: The user's message.
        response: The assistant's reply.

    Returns:
        ``<|bos|><|user|>{prompt}<|assistant|>{response}<|eos|>``, identical to
        :data:`CHAT_TEMPLATE` rendered with those two messages.
    """
    return f"{format_prompt(prompt)}{response}{EOS}"


def _ordinary_segments(texts: Iterable[str]) -> Iterator[str]:
    # The BPE trainer does not split off added tokens, so chat-formatted training text would
    # waste merges on "<|", "user", "|>" pieces. Train on the text between special tokens only.
    for text in texts:
        for piece in _SPECIAL_RE.split(text):
            if piece:
                yield piece


def _build_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    # No normalizer: any normalization (NFC, lower-casing) would break the exact round trip.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _special_added_tokens() -> list[AddedToken]:
    # normalized=False: specials must match the raw text, never a normalized variant.
    return [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]


def _tokenizer_config(model_max_length: int) -> dict[str, Any]:
    decoder = {
        str(i): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        # Byte-level BPE can encode every string, so there is no unknown token to name.
        "unk_token": None,
        "additional_special_tokens": [USER, ASSISTANT],
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": model_max_length,
        # The format already has <|bos|>; the tokenizer must never add one of its own.
        "add_bos_token": False,
        "add_eos_token": False,
        # transformers would otherwise "clean up" " ." into "." and break the round trip.
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: Path,
    *,
    min_frequency: int = 2,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> Path:
    """Train a byte-level BPE tokenizer and save it as a Hugging Face tokenizer directory.

    The result loads offline with ``mlx_lm.utils.load_tokenizer`` and
    ``transformers.AutoTokenizer.from_pretrained``. Training is deterministic: the same texts
    and settings give a byte-identical ``tokenizer.json``.

    Args:
        texts: Training text. Raw prompts and responses are best; chat-formatted strings are
            fine too (special tokens are cut out before training).
        vocab_size: Total vocabulary size including the 5 special tokens and 256 byte tokens
            (so at least 261). Fewer tokens are produced when the texts run out of pairs to
            merge.
        out_dir: Directory to write ``tokenizer.json``, ``tokenizer_config.json`` and
            ``special_tokens_map.json`` into (created if missing).
        min_frequency: A pair must occur this often to be merged.
        model_max_length: Context length recorded in ``tokenizer_config.json``.

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: If ``vocab_size`` is too small to hold the specials and all 256 bytes.
    """
    if vocab_size < _MIN_VOCAB:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{_MIN_VOCAB} tokens (5 special + 256 bytes); use e.g. 512 or more."
        )
    tokenizer = _build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # Listed first, the specials take ids 0..4; the full byte alphabet follows so that no
        # byte is ever unknown, even one absent from the training text.
        special_tokens=_special_added_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_ordinary_segments(texts), trainer=trainer)
    _check_special_ids(tokenizer)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(model_max_length))
    special_map = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [USER, ASSISTANT],
    }
    _write_json(out_dir / "special_tokens_map.json", special_map)
    return out_dir


def _check_special_ids(tokenizer: Tokenizer) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected:
            raise TokenizerMismatch(
                f"{token} got id {tokenizer.token_to_id(token)}, not {expected}"
            )


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    # sort_keys + fixed indent: the files are byte-identical across runs and machines.
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already rendered ``text``, with no special token added by the tokenizer.

    Accepts a transformers tokenizer, mlx-lm's TokenizerWrapper (which forwards to one) or a
    raw ``tokenizers.Tokenizer`` (whose encode returns an Encoding, not a list). Rendered chat
    text carries its own BOS where the format has one, so the tokenizer must not add another.
    """
    encoded = tokenizer.encode(text, add_special_tokens=False)
    ids: Sequence[int] = encoded.ids if hasattr(encoded, "ids") else encoded
    return list(ids)


def encode_interaction(
    tokenizer: Any, prompt: str, response: str, *, complete: bool = True
) -> tuple[list[int], int]:
    """Tokenize one exchange in the base's chat format and find where the response starts.

    The one function every trainer, evaluator, gate and distiller encodes an exchange with: it
    renders through :func:`personal.model.chat.chat_format`, the format ``generate`` serves in
    (the product format above for the bundled models, byte-identical to earlier releases; the
    base's own chat template otherwise). ``ids[start:]`` are the response and the token that
    ends the assistant's turn (``<|eos|>`` here); ``ids[:start]`` are the generation prompt.

    Args:
        tokenizer: the base's tokenizer (transformers, mlx-lm wrapper, or raw
            ``tokenizers.Tokenizer``).
        prompt: The user's message.
        response: The assistant's reply.
        complete: ``False`` leaves the end-of-turn token out (a reply cut at a length limit).

    Returns:
        ``(ids, start)``: the token ids and the index of the first response token.

    Raises:
        TokenizerMismatch: If the prompt's tokens are not a prefix of the full tokens, which
            means the tokenizer lacks the ``<|assistant|>`` special token.
        NoChatFormat: the tokenizer has neither a chat template nor an EOS token.
    """
    from personal.model.chat import chat_format  # chat builds on this module

    return chat_format(tokenizer).encode(prompt, response, complete=complete)
