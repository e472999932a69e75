"""GGUF import: tiny llama files written here reproduce a directly built model's logits."""

from __future__ import annotations

import json

from personal.errors import (
    ConfigError,
    CorruptWeights,
    MissingChatTemplate,
    ModelExists,
    ModelNotFound,
    UnsupportedArchitecture,
    UnsupportedQuantization,
    UnsupportedTokenizer,
)
from personal.model.base import load_base
from personal.model.gguf import import_gguf
from personal.model.gguf_reader import read_header

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf_files import F32, Q4_0, Q4_1, Q4_K, Q8_0, TEMPLATE, tiny_llama_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TOKENS = mx.array([[1, 40, 7, 93, 94, 95, 12, 60, 2, 33, 71, 5]])


def logits(model: nn.Module) -> np.ndarray:
    return np.array(model(TOKENS).astype(mx.float32))


def assert_no_leftovers(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.importing-*"))


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory):
    """A float32 tiny llama written by mx.save_gguf, and its reference model."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    return path, tiny_llama_gguf(path, use_save_gguf=True)


def test_float32_logits_match_reference_including_rope_layout(f32_file, tmp_path):
    path, reference = f32_file
    base = load_base(import_gguf(path, tmp_path / "out"))
    np.testing.assert_allclose(logits(base.model), logits(reference), rtol=1e-5, atol=1e-5)
    assert base.config["rope_traditional"] is True and base.config["tie_word_embeddings"]
    assert base.quantization is None and base.config["vocab_size"] == 96
    # The rope layout matters: the same weights with HF's rotation give other logits.
    base.model.model.layers[0].self_attn.rope.traditional = False
    assert not np.allclose(logits(base.model), logits(reference), atol=1e-3)


def test_untied_output_and_metadata(tmp_path):
    reference = tiny_llama_gguf(tmp_path / "t.gguf", tied=False, seed=3)
    base = load_base(import_gguf(tmp_path / "t.gguf", tmp_path / "out"))
    assert base.config["tie_word_embeddings"] is False
    np.testing.assert_allclose(logits(base.model), logits(reference), rtol=1e-5, atol=1e-5)
    assert base.config["rms_norm_eps"] == 1e-5 and base.config["rope_theta"] == 10000.0
    assert base.provenance["source"] == "gguf" and base.provenance["dtype"] == "float32"


@pytest.mark.parametrize("kind", [Q4_0, Q4_1, Q8_0])
def test_quantized_dequantizes_exactly(kind, tmp_path):
    reference = tiny_llama_gguf(tmp_path / "q.gguf", kind=kind)
    base = load_base(import_gguf(tmp_path / "q.gguf", tmp_path / "out"))
    assert base.model.model.embed_tokens.weight.dtype == mx.float32
    np.testing.assert_allclose(logits(base.model), logits(reference), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    """4-bit (Q4_1) layers and an 8-bit (Q8_0) embedding, like SmolLM2's file."""
    path = tmp_path_factory.mktemp("gguf") / "mixed.gguf"
    return path, tiny_llama_gguf(path, kind=Q4_1, embed_kind=Q8_0, seed=1)


def test_keep_stays_quantized_with_per_module_widths(mixed_file, tmp_path):
    path, reference = mixed_file
    base = load_base(import_gguf(path, tmp_path / "out", dtype="keep"), dequantize=False)
    assert base.quantization == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    assert isinstance(base.model.model.embed_tokens, nn.QuantizedEmbedding)
    assert base.model.model.embed_tokens.bits == 8
    q_proj = base.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear) and q_proj.bits == 4
    # Same weight values; the float16 scales make activations float16 (about 3 digits).
    np.testing.assert_allclose(logits(base.model), logits(reference), rtol=1e-2, atol=5e-3)


def test_bfloat16(mixed_file, tmp_path):
    path, reference = mixed_file
    base = load_base(import_gguf(path, tmp_path / "out", dtype="bfloat16"))
    assert base.model.model.layers[1].mlp.up_proj.weight.dtype == mx.bfloat16
    got, want = logits(base.model), logits(reference)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_tokenizer_and_chat_template(f32_file, tmp_path):
    path, _ = f32_file
    base = load_base(import_gguf(path, tmp_path / "out"))
    tok = base.tokenizer
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert base.config["bos_token_id"] == 1 and base.config["eos_token_id"] == 2
    ids = tok.convert_tokens_to_ids
    assert tok.encode("<|im_start|>the 12<|im_end|>") == [
        1, ids("t"), ids("he"), ids("Ġ"), ids("1"), ids("2"), 2  # digits one by one (smollm)
    ]  # fmt: skip
    assert tok.encode(" the") == [ids("Ġthe")]
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    config = json.loads((base.path / "tokenizer_config.json").read_text())
    assert config["chat_template"] == TEMPLATE and config["add_bos_token"] is False


def test_import_is_deterministic(f32_file, tmp_path):
    path, _ = f32_file
    one = load_base(import_gguf(path, tmp_path / "a")).fingerprint
    two = load_base(import_gguf(path, tmp_path / "b")).fingerprint
    assert one == two


def test_chat_template_argument(tmp_path):
    tiny_llama_gguf(tmp_path / "base.gguf", template=None)
    with pytest.raises(MissingChatTemplate, match="--chat-template"):
        import_gguf(tmp_path / "base.gguf", tmp_path / "out")
    assert_no_leftovers(tmp_path / "out")
    plain = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    base = load_base(import_gguf(tmp_path / "base.gguf", tmp_path / "out", chat_template=plain))
    assert base.tokenizer.chat_template == plain


# --- bad input: a named error, and no directory left behind ----------------------------------


@pytest.mark.parametrize("cut", [0, 20, 200, 0.5, -1])
def test_truncated_file(f32_file, tmp_path, cut):
    data = f32_file[0].read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut % len(data)
    (tmp_path / "cut.gguf").write_bytes(data[:end])
    with pytest.raises(CorruptWeights, match="truncated or corrupt"):
        import_gguf(tmp_path / "cut.gguf", tmp_path / "out")
    assert_no_leftovers(tmp_path / "out")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"arch": "qwen2"}, UnsupportedArchitecture, "'qwen2' model"),
        ({"kind": Q4_K}, UnsupportedQuantization, "Q4_K"),
        ({"extra_meta": {"tokenizer.ggml.model": "llama"}}, UnsupportedTokenizer, "'llama'"),
        ({"extra_meta": {"tokenizer.ggml.pre": "qwen2"}}, UnsupportedTokenizer, "'qwen2'"),
        ({"extra_meta": {"llama.expert_count": 4}}, UnsupportedArchitecture, "expert_count"),
        ({"extra_meta": {"llama.block_count": None}}, CorruptWeights, "block_count"),
        ({"extra_meta": {"llama.block_count": 3}}, CorruptWeights, "do not fit"),
        ({"extra_meta": {"llama.attention.head_count": [4, 4]}}, CorruptWeights, "malformed"),
    ],
)
def test_unsupported_files(tmp_path, kwargs, error, match):
    tiny_llama_gguf(tmp_path / "bad.gguf", **kwargs)
    with pytest.raises(error, match=match):
        import_gguf(tmp_path / "bad.gguf", tmp_path / "out")
    assert_no_leftovers(tmp_path / "out")


def test_unknown_tensor_is_refused(tmp_path):
    freqs = {"rope_freqs.weight": (F32, np.ones((8,), np.float32))}
    tiny_llama_gguf(tmp_path / "odd.gguf", extra_tensors=freqs)
    assert read_header(tmp_path / "odd.gguf").tensors[-1].shape == (8,)
    with pytest.raises(UnsupportedArchitecture, match="rope_freqs"):
        import_gguf(tmp_path / "odd.gguf", tmp_path / "out")
    assert_no_leftovers(tmp_path / "out")


def test_other_bad_input(f32_file, tmp_path):
    with pytest.raises(ModelNotFound):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "notes.gguf").write_text("not a model at all, just some text " * 4)
    with pytest.raises(CorruptWeights, match="no GGUF magic"):
        import_gguf(tmp_path / "notes.gguf", tmp_path / "out")
    with pytest.raises(ConfigError, match="float32, bfloat16, keep"):
        import_gguf(f32_file[0], tmp_path / "out", dtype="int8")
    assert_no_leftovers(tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(ModelExists):
        import_gguf(f32_file[0], tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_failure_while_writing_leaves_nothing(f32_file, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", disk_full)
    with pytest.raises(OSError, match="No space"):
        import_gguf(f32_file[0], tmp_path / "out")
    assert_no_leftovers(tmp_path / "out")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40))
def test_rebuilt_tokenizer_matches_the_original(tiny_tokenizer_dir, text):
    """A GGUF's vocabulary and merges rebuild the exact tokenizer they came from."""
    from personal.model.gguf_tokenizer import build_tokenizer

    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    spec = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in spec["added_tokens"]}
    meta = {
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": [
            m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]
        ],
        "tokenizer.ggml.token_type": [3 if t in specials else 1 for t in tokens],
    }
    rebuilt = build_tokenizer(meta)
    assert rebuilt.encode(text).ids == original.encode(text).ids
    assert rebuilt.decode(rebuilt.encode(text).ids) == text
