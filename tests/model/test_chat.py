"""One chat format per base: the product format unchanged, a base's own template, plain, errors."""

from __future__ import annotations

from pathlib import Path

from personal.errors import NoChatFormat
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.chat import PLAIN_PROMPT, chat_format
from personal.model.generate import generate, prompt_tokens, stop_ids
from personal.model.tokenizer import encode_interaction, encode_text, format_interaction

import numpy as np
import pytest
from chat_tokenizers import BROKEN_TEMPLATE, load_hf, load_mlx, write_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

quick = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text without a special token's markup (an app's own prompts may hold any text; these tests
# check the rendering, not what a tokenizer does with special-token text inside content).
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="<|>\r"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and s.strip())


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("chatml"), "chatml")


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("llama3"), "llama3")


def test_the_bundled_models_keep_the_product_format() -> None:
    tokenizer = load_base("base-v1").tokenizer
    fmt = chat_format(tokenizer)
    assert fmt.kind == "product" and 2 in fmt.stop_ids
    ids, start = encode_interaction(tokenizer, "call mom", "Calling mom.")
    assert ids == encode_text(tokenizer, format_interaction("call mom", "Calling mom."))
    assert ids[:start] == prompt_tokens(tokenizer, "call mom")
    # What generation starts from is what the template would render (as before).
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "call mom"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt_tokens(tokenizer, "call mom") == encode_text(tokenizer, rendered)


@pytest.mark.parametrize("loader", [load_hf, load_mlx])
def test_chatml_renders_through_the_base_template(chatml: Path, loader) -> None:
    tok = loader(chatml)
    fmt = chat_format(tok)
    assert fmt.kind == "template"
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert fmt.stop_ids == {im_end} and fmt.end_ids == (im_end,)
    ids, start = encode_interaction(tok, "What is a river?", "Water that flows.")
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is a river?"}], add_generation_prompt=True,
        tokenize=False,
    )  # fmt: skip
    assert tok.decode(ids[:start]) == prompt  # default system prompt included, once
    assert prompt.count("You are a helpful AI assistant") == 1
    assert tok.decode(ids[start:]) == "Water that flows.<|im_end|>"  # no trailing newline
    assert ids[-1] == im_end and "<|eos|>" not in tok.decode(ids)


@pytest.fixture(scope="module")
def chatml_hf(chatml: Path):
    return load_hf(chatml)


@quick
@given(prompt=TEXT, response=TEXT)
def test_chatml_round_trip_and_mask_positions(chatml_hf, prompt: str, response: str) -> None:
    tok = chatml_hf
    ids, start = encode_interaction(tok, prompt, response)
    assert ids[:start] == prompt_tokens(tok, prompt)
    assert tok.decode(ids[start:-1]) == response and ids[-1] in chat_format(tok).stop_ids
    # The loss counts exactly the reply and its end-of-turn token: targets ids[start:].
    batch = make_batch([ids], [start])
    mask = np.array(batch.mask[0])
    targets = np.array(batch.targets[0])
    assert mask.sum() == len(ids) - start
    assert list(targets[mask == 1]) == ids[start:]
    assert mask[: start - 1].sum() == 0


def test_an_unfinished_reply_is_not_taught_to_stop(chatml: Path) -> None:
    tok = load_hf(chatml)
    full, start = encode_interaction(tok, "Explain the bike", "First, check")
    cut, cut_start = encode_interaction(tok, "Explain the bike", "First, check", complete=False)
    assert cut_start == start and cut == full[:-1]


def test_a_template_that_writes_its_bos_gets_one_bos(llama3: Path) -> None:
    tok = load_hf(llama3)
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok.encode("x")[0] == bos  # this tokenizer adds a BOS by itself...
    ids, _ = encode_interaction(tok, "What is a river?", "Water.")
    assert ids.count(bos) == 1 and ids[0] == bos  # ...but not on top of the template's
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert ids[-1] == eot and eot in chat_format(tok).stop_ids


def test_the_template_end_of_turn_stops_generation_even_when_eos_differs(tmp_path) -> None:
    tok = load_hf(write_tokenizer(tmp_path, "chatml", eos="<|endoftext|>"))
    fmt = chat_format(tok)
    assert fmt.stop_ids == {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert stop_ids(tok) >= fmt.stop_ids and fmt.end_ids == (
        tok.convert_tokens_to_ids("<|im_end|>"),
    )


def test_no_template_gets_the_documented_plain_format(tmp_path) -> None:
    tok = load_hf(write_tokenizer(tmp_path, "chatml", template=None, eos="<|endoftext|>"))
    fmt = chat_format(tok)
    assert fmt.kind == "plain"
    ids, start = encode_interaction(tok, "hi", "Hello.")
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.decode(ids[:start]) == "<|im_start|>" + PLAIN_PROMPT.format(prompt="hi")
    assert tok.decode(ids[start:-1]) == " Hello." and ids[-1] == eos and eos in fmt.stop_ids


def test_no_template_and_no_eos_is_a_named_error() -> None:
    class Bare:  # inspectable, without the product's specials, template or EOS
        chat_template = None
        eos_token_id = None

        def convert_tokens_to_ids(self, token: str) -> int:
            return 7

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ord(c) for c in text]

    with pytest.raises(NoChatFormat, match="no chat template and no end-of-sequence"):
        encode_interaction(Bare(), "hi", "there")


def test_a_template_whose_prompt_does_not_start_the_exchange_is_a_named_error(tmp_path) -> None:
    tok = load_hf(write_tokenizer(tmp_path, "chatml", template=BROKEN_TEMPLATE))
    with pytest.raises(NoChatFormat, match="does not begin"):
        chat_format(tok)


def test_a_chatml_base_learns_to_stop_on_its_end_of_turn(chatml: Path, tmp_path) -> None:
    """Trained on one exchange in its own format, a tiny ChatML model answers it and stops."""
    from personal.model.fit import train

    import mlx.core as mx
    import mlx.optimizers as optim
    from tiny_models import save_tiny_model

    base = load_base(save_tiny_model(tmp_path / "m", "llama", chatml, 384))
    ids, start = encode_interaction(base.tokenizer, "What is a river?", "Water.")
    batch = make_batch([ids], [start])
    mx.random.seed(0)
    train(base.model, [batch] * 80, optim.Adam(learning_rate=3e-3))
    base.model.eval()
    reply = generate(base.model, base.tokenizer, "What is a river?", max_tokens=12)
    assert reply.text == "Water." and reply.finish_reason == "stop"
