"""Tiny GGUF files for the import tests, written here (nothing is downloaded).

``mx.save_gguf`` writes float tensors only, so quantized files (Q4_0, Q4_1, Q8_0, and a K-quant
type the importer must refuse) go through :func:`write_gguf`, a minimal GGUF v3 writer that
follows the spec (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) and llama.cpp's
block layouts. :func:`tiny_llama_gguf` builds an mlx-lm llama, stores it the way llama.cpp's
converter does (GGUF tensor names, q/k rows permuted to Meta's rope layout) and returns the
reference model whose logits the imported one must reproduce.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models import llama

F32, F16, Q4_0, Q4_1, Q8_0, Q4_K = 0, 1, 2, 3, 8, 12
QUANT_BITS = {Q4_0: 4, Q4_1: 4, Q8_0: 8}
_BLOCK = 32

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value: Any) -> bytes:
    """Type tag + payload of one metadata value (str, bool, int, float, list of str or int)."""
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, bool):
        return struct.pack("<IB", 7, value)
    if isinstance(value, int):
        return struct.pack("<II", 4, value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if all(isinstance(v, str) for v in value):
        return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_string(v) for v in value)
    return struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)


def quantize_blocks(x: np.ndarray, kind: int) -> tuple[bytes, np.ndarray]:
    """llama.cpp blocks of ``x`` (rows of 32-value blocks) and the values they decode to."""
    blocks = x.astype(np.float32).reshape(-1, _BLOCK)
    if kind == Q8_0:
        d = (np.abs(blocks).max(1, keepdims=True) / 127).astype(np.float16)
        q = np.clip(np.round(blocks / np.where(d == 0, 1, d)), -127, 127).astype(np.int8)
        raw = np.concatenate([d.view(np.uint8), q.view(np.uint8)], axis=1)
        return raw.tobytes(), (q * d.astype(np.float32)).reshape(x.shape)
    if kind == Q4_0:
        lo = np.zeros_like(blocks[:, :1])
        d = (np.abs(blocks).max(1, keepdims=True) / 8).astype(np.float16)
        q = np.clip(np.round(blocks / np.where(d == 0, 1, d)) + 8, 0, 15).astype(np.uint8)
        head = d.view(np.uint8)
        values = (q.astype(np.float32) - 8) * d.astype(np.float32)
    else:  # Q4_1: scale and minimum
        lo = blocks.min(1, keepdims=True)
        d = ((blocks.max(1, keepdims=True) - lo) / 15).astype(np.float16)
        m = lo.astype(np.float16)
        q = np.clip(np.round((blocks - m) / np.where(d == 0, 1, d)), 0, 15).astype(np.uint8)
        head = np.concatenate([d.view(np.uint8), m.view(np.uint8)], axis=1)
        values = q * d.astype(np.float32) + m.astype(np.float32)
    # Byte j holds value j in its low nibble and value j + 16 in its high nibble.
    packed = q[:, :16] | (q[:, 16:] << 4)
    return np.concatenate([head, packed], axis=1).tobytes(), values.reshape(x.shape)


def write_gguf(path: Path, tensors: dict[str, tuple[int, np.ndarray]], meta: dict) -> dict:
    """Write ``{name: (ggml type, float array)}`` and metadata; return the decoded values."""
    decoded: dict[str, np.ndarray] = {}
    infos, blobs, offset = b"", [], 0
    for name, (kind, array) in tensors.items():
        if kind == F32:
            raw, decoded[name] = array.astype(np.float32).tobytes(), array.astype(np.float32)
        elif kind == F16:
            raw, decoded[name] = array.astype(np.float16).tobytes(), array.astype(np.float16)
        else:  # Q4_K's real layout does not matter: the importer must refuse the type
            raw, decoded[name] = quantize_blocks(array, Q4_0 if kind == Q4_K else kind)
        dims = array.shape[::-1]  # GGUF lists the fastest-varying dimension first
        infos += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
        pad = -len(raw) % 32
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    head += b"".join(_string(k) + _value(v) for k, v in meta.items()) + infos
    Path(path).write_bytes(head + b"\0" * (-len(head) % 32) + b"".join(blobs))
    return decoded


# --- a tiny llama stored the llama.cpp way ---------------------------------------------------

CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": 96,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
}
_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(name: str) -> str:
    """mlx-lm parameter name -> llama.cpp tensor name."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    _, _, layer, rest = name.split(".", 3)
    module, leaf = rest.rsplit(".", 1)
    return f"blk.{layer}.{_NAMES[module]}.{leaf}"


def to_meta_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``permute``: HF's half-split rotary rows -> Meta's interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(w.shape)


def _mx_meta(value: Any) -> Any:
    """A metadata value as ``mx.save_gguf`` takes it: str, list of str, or an array."""
    if isinstance(value, str) or (isinstance(value, list) and isinstance(value[0], str)):
        return value
    if isinstance(value, float):
        return mx.array(value, dtype=mx.float32)
    return mx.array(value, dtype=mx.int32 if isinstance(value, list) else mx.uint32)


def from_meta_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of :func:`to_meta_rope`."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def tokenizer_meta(template: str | None = TEMPLATE, pre: str = "smollm") -> dict[str, Any]:
    """A byte-level BPE vocabulary of 96 tokens: 3 specials, 90 bytes, 3 merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    # "Ġ" (a space) and the printable ASCII characters, then the merged tokens.
    alphabet = ["Ġ", *sorted(c for c in ByteLevel.alphabet() if c != "Ġ")[:89]]
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = SPECIALS + alphabet + [m.replace(" ", "") for m in merges]
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2,
    }
    if template is not None:
        meta["tokenizer.chat_template"] = template
    return meta


def tiny_llama_gguf(
    path: Path,
    *,
    kind: int = F32,
    embed_kind: int | None = None,
    tied: bool = True,
    seed: int = 0,
    arch: str = "llama",
    template: str | None = TEMPLATE,
    use_save_gguf: bool = False,
    extra_meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, tuple[int, np.ndarray]] | None = None,
) -> llama.Model:
    """Write a tiny llama as a GGUF at ``path``; return the reference model it encodes.

    ``kind`` is the type of the 2-D weights, ``embed_kind`` (default ``kind``) the embedding's.
    The reference model holds exactly the values the file decodes to, in HF's rope layout.
    ``extra_meta`` adds metadata (a ``None`` value removes the key); ``extra_tensors`` adds
    tensors a plain llama does not have.
    """
    config = {**CONFIG, "tie_word_embeddings": tied}
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    params = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    tensors: dict[str, tuple[int, np.ndarray]] = {}
    for name, value in params.items():
        stored = value
        if name.endswith("q_proj.weight"):
            stored = to_meta_rope(value, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            stored = to_meta_rope(value, config["num_key_value_heads"])
        wkind = F32 if value.ndim == 1 else kind
        if name == "model.embed_tokens.weight" and embed_kind is not None:
            wkind = embed_kind
        tensors[gguf_name(name)] = (wkind, stored)
    tensors.update(extra_tensors or {})
    meta = {
        "general.architecture": arch,
        f"{arch}.embedding_length": 64,
        f"{arch}.block_count": 2,
        f"{arch}.feed_forward_length": 128,
        f"{arch}.attention.head_count": 4,
        f"{arch}.attention.head_count_kv": 2,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.context_length": 256,
        **tokenizer_meta(template),
    }
    for key, value in (extra_meta or {}).items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    if use_save_gguf:
        assert kind == F32 and embed_kind in (None, F32), "mx.save_gguf writes floats only"
        arrays = {k: mx.array(v) for k, (_, v) in tensors.items()}
        mx.save_gguf(str(path), arrays, {k: _mx_meta(v) for k, v in meta.items()})
        decoded = {k: v for k, (_, v) in tensors.items()}
    else:
        decoded = write_gguf(path, tensors, meta)
    # Undo the rope permutation on the decoded values: the reference runs HF's layout.
    reference = {}
    for name in params:
        value = decoded[gguf_name(name)].astype(np.float32)
        if name.endswith("q_proj.weight"):
            value = from_meta_rope(value, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            value = from_meta_rope(value, config["num_key_value_heads"])
        reference[name] = mx.array(value)
    model.update(tree_unflatten(list(reference.items())))
    mx.eval(model.parameters())
    return model
