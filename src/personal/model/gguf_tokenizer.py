"""Rebuild a GGUF file's byte-level BPE tokenizer as Hugging Face tokenizer files.

A GGUF file carries its tokenizer as metadata: ``tokenizer.ggml.tokens`` (id -> token),
``tokenizer.ggml.merges``, ``tokenizer.ggml.token_type`` (normal, control, user-defined, ...),
special-token ids, the pre-tokenizer's name (``tokenizer.ggml.pre``) and the chat template.
For the ``gpt2`` (byte-level BPE) tokenizer model this is everything the HF ``tokenizers``
library needs. The pre-tokenizer is only a name: each name below maps to the split llama.cpp
applies for it (``llama-vocab.cpp``), and an unknown name is refused rather than guessed,
because a wrong split silently changes token ids.

SentencePiece GGUFs (``tokenizer.ggml.model == "llama"``: Llama 2, TinyLlama, Mistral 7B) are
not supported: their vocabulary is scored pieces, not merges.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from personal.errors import MissingChatTemplate, TokenizerMismatch, UnsupportedTokenizer

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

# token_type values (llama.cpp's llama_token_type).
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# Pre-tokenizer names -> whether digits are split one by one before GPT-2's regex split.
# GPT-2 regex: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
_GPT2_PRE = {"default": False, "gpt2": False, "mpt": False, "olmo": False, "jais": False}
_DIGIT_PRE = {"smollm": True, "starcoder": True, "refact": True, "codeshell": True}
PRE_TOKENIZERS = {**_GPT2_PRE, **_DIGIT_PRE}


def _pre_tokenizer(name: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if PRE_TOKENIZERS[name]:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def check_tokenizer(meta: dict[str, Any], chat_template: str | None, source: Path) -> str:
    """Refuse what cannot be rebuilt faithfully; return the chat template to use.

    Raises:
        UnsupportedTokenizer: not a byte-level BPE, an unknown pre-tokenizer, duplicate tokens.
        MissingChatTemplate: the file has no chat template and ``chat_template`` is None.
    """
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedTokenizer(
            f"{source} has a {kind!r} tokenizer; personal rebuilds byte-level BPE ('gpt2') "
            "tokenizers only. Convert the original Hugging Face checkpoint with "
            "mlx_lm.convert instead."
        )
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedTokenizer(
            f"{source} uses the pre-tokenizer {pre!r}; personal knows "
            f"{', '.join(sorted(PRE_TOKENIZERS))}. Convert the original Hugging Face "
            "checkpoint with mlx_lm.convert instead."
        )
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if len(set(tokens)) != len(tokens) or "tokenizer.ggml.merges" not in meta:
        raise UnsupportedTokenizer(
            f"{source}'s vocabulary has duplicate tokens or no merges; it cannot be rebuilt "
            "as a byte-level BPE. Convert the original checkpoint with mlx_lm.convert."
        )
    template = chat_template or meta.get("tokenizer.chat_template")
    if not template:
        raise MissingChatTemplate(
            f"{source} carries no chat template (it may be a base model, not an instruct "
            "model). personal formats every prompt through the tokenizer's chat template: "
            "pass the model's Jinja template (import_gguf(..., chat_template=TEXT), "
            "personal import-model ... --chat-template FILE)."
        )
    return str(template)


def _special(meta: dict[str, Any], tokens: list[str], key: str) -> str | None:
    index = meta.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """The ``tokenizers.Tokenizer`` a checked GGUF's metadata describes."""
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    # No normalizer: llama.cpp applies none to byte-level BPE text.
    tokenizer.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
    tokenizer.decoder = decoders.ByteLevel()
    bos = _special(meta, tokens, "bos")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control and user-defined tokens are matched whole, before the BPE ever sees them.
    added = [
        AddedToken(token, special=kind in (_CONTROL, _UNKNOWN), normalized=False)
        for token, kind in zip(tokens, types, strict=True)
        if kind in (_CONTROL, _UNKNOWN, _USER_DEFINED)
    ]
    tokenizer.add_tokens(added)
    return tokenizer


def write_tokenizer(
    meta: dict[str, Any], out_dir: Path, *, chat_template: str, vocab_rows: int
) -> dict[str, int | None]:
    """Write ``tokenizer.json`` and ``tokenizer_config.json``; return bos/eos token ids.

    Raises:
        TokenizerMismatch: more tokens than the model's embedding has rows.
    """
    tokenizer = build_tokenizer(meta)
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    if len(tokens) > vocab_rows:
        raise TokenizerMismatch(
            f"the GGUF's tokenizer has {len(tokens)} tokens but its embedding only "
            f"{vocab_rows} rows: the file is inconsistent; use another copy of the model."
        )
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _special(meta, tokens, "bos"),
        "eos_token": _special(meta, tokens, "eos"),
        "pad_token": _special(meta, tokens, "padding"),
        "unk_token": _special(meta, tokens, "unknown"),
        "chat_template": chat_template,
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        # transformers would otherwise rewrite " ." as "." when decoding.
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_config.json").write_text(text, encoding="utf-8")
    ids = {}
    for key in ("bos", "eos"):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        ids[key] = int(value) if isinstance(value, int) else None
    return ids
