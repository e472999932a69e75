"""Tiny tokenizers in other bases' chat formats (ChatML, Llama 3 style, none), built inline.

A byte-level BPE from the ``tokenizers`` library plus a ``tokenizer_config.json`` carrying the
chat template, as a real instruct model ships them; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

#: SmolLM2-Instruct's template, default system prompt included.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: Llama 3's shape: the template writes the BOS itself; turns end with <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
#: A broken template: the generation prompt is not where a rendered exchange starts.
BROKEN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT SAYS:' }}{% endif %}"
)

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3_SPECIALS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>",
)  # fmt: skip

TEXTS = [
    f"{verb} the {thing} {when}, please. {reply}"
    for verb in ("How do I fix", "Explain", "Describe", "What is", "Summarize")
    for thing in ("bike", "recipe", "poem", "equation", "function", "river")
    for when in ("today", "quickly", "in detail", "for a beginner")
    for reply in ("Sure, here it is.", "First, check the chain.", "It equals 42.")
]


def _train(specials: tuple[str, ...], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXTS, trainer=trainer)
    return tokenizer


def write_tokenizer(
    out: Path,
    style: str = "chatml",
    *,
    vocab_size: int = 384,
    eos: str | None = None,
    template: str | None = "default",
) -> Path:
    """A tokenizer directory in ``style`` ("chatml" or "llama3").

    Args:
        eos: the EOS token (default: the style's end of turn, as instruct models ship it).
        template: ``"default"`` for the style's template, ``None`` for no template at all, or
            a Jinja template of one's own.
    """
    out.mkdir(parents=True, exist_ok=True)
    specials = CHATML_SPECIALS if style == "chatml" else LLAMA3_SPECIALS
    tokenizer = _train(specials, vocab_size)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }
    if style == "chatml":
        config |= {"bos_token": "<|im_start|>", "eos_token": eos or "<|im_end|>",
                   "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                   "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}  # fmt: skip
        default = CHATML_TEMPLATE
    else:
        # Like Llama 3: the tokenizer itself adds a BOS unless told not to.
        bos = tokenizer.token_to_id("<|begin_of_text|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
        )
        config |= {"bos_token": "<|begin_of_text|>", "eos_token": eos or "<|eot_id|>"}
        default = LLAMA3_TEMPLATE
    chosen = default if template == "default" else template
    if chosen is not None:
        config["chat_template"] = chosen
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_hf(directory: Path) -> Any:
    """The directory's tokenizer through transformers (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def load_mlx(directory: Path) -> Any:
    """The directory's tokenizer as mlx-lm wraps it (what ``load_base`` gives)."""
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(directory)
