"""The chat format and the byte-level BPE tokenizer: ids, templates, round trips, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from personal.errors import ConfigError, TokenizerMismatch
from personal.model.tokenizer import (
    ASSISTANT_ID,
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    SPECIAL_TOKENS,
    USER_ID,
    encode_interaction,
    format_interaction,
    format_prompt,
    train_bpe_tokenizer,
)

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from personal_sim.public_corpus import generate_corpus, generate_texts

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Prompts and responses with what tokenizers trip on: accents, CJK, emoji, spaces, newlines.
TEXT = st.text(max_size=60) | st.sampled_from(["", " ", "  x ", "é\nñ", "日本語 ok", "a 🙂 b", "."])
quick = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_bpe_tokenizer(generate_texts(300, seed=0), 512, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def raw(tok_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf(tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


@pytest.fixture(scope="module")
def mlx_tok(tok_dir: Path):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tok_dir)


def test_files_and_special_token_ids(tok_dir: Path, raw: Tokenizer) -> None:
    assert all((tok_dir / name).is_file() for name in FILES)
    assert [raw.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert SPECIAL_TOKENS == ("<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>")
    assert 261 < raw.get_vocab_size() <= 512


def test_loads_offline_in_transformers_and_mlx_lm(hf, mlx_tok) -> None:
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (BOS_ID, EOS_ID, 0)
    assert mlx_tok.eos_token_id == EOS_ID
    assert mlx_tok.eos_token_ids == {EOS_ID}
    assert hf.chat_template == CHAT_TEMPLATE


def test_formats() -> None:
    assert format_prompt("hi") == "<|bos|><|user|>hi<|assistant|>"
    assert format_interaction("hi", "Hey!") == "<|bos|><|user|>hi<|assistant|>Hey!<|eos|>"


@quick
@given(prompt=TEXT, response=TEXT)
def test_chat_template_equals_the_python_format(hf, mlx_tok, prompt: str, response: str) -> None:
    user = [{"role": "user", "content": prompt}]
    full = [*user, {"role": "assistant", "content": response}]
    for tok in (hf, mlx_tok):
        rendered = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        assert rendered == format_prompt(prompt)
        assert tok.apply_chat_template(full, tokenize=False) == format_interaction(prompt, response)


def test_chat_template_rejects_system_messages(hf) -> None:
    with pytest.raises(Exception, match="only user and assistant"):
        hf.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200))
@example(text="a <|user|> b<|eos|> , c .")  # literal specials; spaces before punctuation
def test_round_trip_of_arbitrary_text(raw: Tokenizer, hf, text: str) -> None:
    ids = raw.encode(text).ids
    assert raw.decode(ids, skip_special_tokens=False) == text
    assert hf.decode(hf.encode(text, add_special_tokens=False)) == text


def test_streaming_detokenizer_reproduces_multibyte_text(mlx_tok) -> None:
    # mlx-lm detokenizes while generating; split UTF-8 sequences must come out whole.
    text = "Call Zoë and José 日本 🙂 at 7 pm"
    detok = mlx_tok.detokenizer
    detok.reset()
    for token in mlx_tok.encode(text):
        detok.add_token(token)
    detok.finalize()
    assert detok.text == text


@quick
@given(prompt=TEXT, response=TEXT)
def test_prompt_tokens_are_a_prefix_of_the_interaction(
    raw: Tokenizer, hf, prompt: str, response: str
) -> None:
    ids, start = encode_interaction(hf, prompt, response)
    assert ids[:start] == hf.encode(format_prompt(prompt), add_special_tokens=False)
    assert ids[:2] == [BOS_ID, USER_ID] and ids[start - 1] == ASSISTANT_ID and ids[-1] == EOS_ID
    assert hf.decode(ids[start:-1]) == response
    assert encode_interaction(raw, prompt, response) == (ids, start)


def test_encode_interaction_on_the_corpus_and_mlx_wrapper(mlx_tok, raw: Tokenizer) -> None:
    for it in generate_corpus(200, seed=4):
        ids, start = encode_interaction(mlx_tok, it.prompt, it.response)
        assert (ids, start) == encode_interaction(raw, it.prompt, it.response)
        assert raw.decode(ids[start:-1]) == it.response


def test_encode_interaction_detects_a_tokenizer_without_chat_specials() -> None:
    class Reversing:  # a "tokenizer" whose prompt tokens are not a prefix of the full tokens
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ord(c) for c in reversed(text)]

    with pytest.raises(TokenizerMismatch, match="prefix"):
        encode_interaction(Reversing(), "hi", "there")


def test_training_is_deterministic_across_processes(tok_dir: Path, tmp_path: Path) -> None:
    texts = generate_texts(300, seed=0)
    again = train_bpe_tokenizer(texts, 512, tmp_path / "again")
    # A fresh interpreter has different hash seeds: catches HashMap-order dependence.
    script = (
        "import sys; from pathlib import Path\n"
        "from personal.model.tokenizer import train_bpe_tokenizer\n"
        "from personal_sim.public_corpus import generate_texts\n"
        "train_bpe_tokenizer(generate_texts(300, seed=0), 512, Path(sys.argv[1]))\n"
    )
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-c", script, str(other)], check=True)
    for name in FILES:
        assert (again / name).read_bytes() == (tok_dir / name).read_bytes()
        assert (other / name).read_bytes() == (tok_dir / name).read_bytes()


def test_special_tokens_are_cut_out_of_training_text(tmp_path: Path) -> None:
    texts = [format_interaction(it.prompt, it.response) for it in generate_corpus(200, seed=1)]
    tok = Tokenizer.from_file(str(train_bpe_tokenizer(texts, 400, tmp_path) / "tokenizer.json"))
    merged = [t for t in tok.get_vocab() if t not in SPECIAL_TOKENS and len(t) > 1]
    assert merged and not any("<|" in t or "|>" in t for t in merged)


def test_vocab_too_small_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 261"):
        train_bpe_tokenizer(["hello"], 100, tmp_path)
