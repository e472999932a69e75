"""Earlier turns (personal memory) render through each base's own chat format."""

from __future__ import annotations

from pathlib import Path

from personal.errors import ConfigError
from personal.model.base import load_base
from personal.model.chat import PLAIN_PROMPT, PLAIN_REPLY, chat_format
from personal.model.generate import prompt_tokens
from personal.model.tokenizer import encode_text

import pytest
from chat_tokenizers import load_hf, write_tokenizer

HISTORY = [("call my mom", "Calling Maria."), ("play jazz", "Playing Coltrane.")]


def _messages(prompt: str) -> list[dict[str, str]]:
    out = []
    for p, r in HISTORY:
        out += [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
    return [*out, {"role": "user", "content": prompt}]


def _template(tok, prompt: str) -> str:
    return tok.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=False)


def test_the_product_format_renders_history_as_its_template_does() -> None:
    tok = load_base("base-v1").tokenizer
    fmt = chat_format(tok)
    assert fmt.kind == "product"
    assert fmt.prompt_text("call mom", HISTORY) == _template(tok, "call mom")
    assert fmt.prompt_text("call mom", ()) == fmt.prompt_text("call mom")
    assert prompt_tokens(tok, "call mom", history=HISTORY) == encode_text(
        tok, _template(tok, "call mom")
    )
    ids, start = fmt.encode("call mom", "Calling Maria.", history=HISTORY)
    assert ids[:start] == fmt.prompt_ids("call mom", HISTORY)
    assert tok.decode(ids[start:]) == "Calling Maria.<|eos|>"


def test_a_base_template_renders_history_as_prior_turns(tmp_path: Path) -> None:
    tok = load_hf(write_tokenizer(tmp_path, "chatml"))
    fmt = chat_format(tok)
    assert fmt.kind == "template"
    assert fmt.prompt_text("What is a river?", HISTORY) == _template(tok, "What is a river?")
    ids, start = fmt.encode("What is a river?", "Water.", history=HISTORY)
    assert tok.decode(ids[:start]) == _template(tok, "What is a river?")
    assert tok.decode(ids[start:]) == "Water.<|im_end|>"


def test_the_plain_format_writes_earlier_turns_as_lines(tmp_path: Path) -> None:
    tok = load_hf(write_tokenizer(tmp_path, "chatml", template=None, eos="<|endoftext|>"))
    fmt = chat_format(tok)
    turns = "".join(
        PLAIN_PROMPT.format(prompt=p) + PLAIN_REPLY.format(response=r) + "\n" for p, r in HISTORY
    )
    assert fmt.prompt_text("hi", HISTORY) == "<|im_start|>" + turns + PLAIN_PROMPT.format(
        prompt="hi"
    )


def test_history_needs_the_chat_format() -> None:
    tok = load_base("base-v1").tokenizer
    with pytest.raises(ConfigError, match="chat format"):
        prompt_tokens(tok, "hi", chat=False, history=HISTORY)
