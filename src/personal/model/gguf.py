"""Import a llama-family GGUF file (llama.cpp's format) as an mlx-lm model directory.

:func:`import_gguf` writes ``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` (chat template, bos/eos from the file) and ``provenance.json``;
:func:`personal.model.base.load_base` then loads the directory like any other.

Three choices a reader should know about:

* **Rope layout.** llama.cpp's converter permutes the rows of q and k into Meta's original
  layout (rotary pairs interleaved), where Hugging Face checkpoints split them in halves. The
  weights are kept as stored and the config says ``rope_traditional: true``, which is the
  rotation that layout needs (checked against a model built directly in the tests).
* **dtype.** ``"float32"`` (default) and ``"bfloat16"`` dequantize every tensor; ``"keep"``
  keeps Q4_0/Q4_1/Q8_0 tensors as MLX affine quantization (group size 32, 4 or 8 bits), with
  per-module entries in the config where widths differ (SmolLM2's embedding is 8-bit, the rest
  4-bit). Measured on 2 CPU cores: a LoRA step on SmolLM2-135M took 60 s quantized and 4.5 s
  on float32, so CPUs train on a dequantized copy; on Metal the quantized model is the fast one.
* **Atomicity.** Everything is written into a hidden temporary directory beside the
  destination, flushed to disk, then renamed into place: a failed or interrupted import leaves
  no destination directory at all.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from personal.errors import ConfigError, CorruptWeights, ModelExists, UnsupportedArchitecture
from personal.filesafety import fsync_dir, fsync_path
from personal.model.gguf_reader import BF16, QUANT_BITS, GGUFHeader, read_header
from personal.model.gguf_tokenizer import check_tokenizer, write_tokenizer
from personal.model.mlx_typing import load_arrays

import mlx.core as mx
import numpy as np

DTYPES = ("float32", "bfloat16", "keep")
CONVERTER_VERSION = 1
GROUP_SIZE = 32  # every GGUF block type MLX reads holds 32 values per scale

_TOP_LEVEL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


_REQUIRED = (
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
)


def _module_name(tensor: str, source: Path) -> str:
    """llama.cpp tensor name (without ``.weight``) -> mlx-lm module path."""
    parts = tensor.split(".")
    if len(parts) == 1 and tensor in _TOP_LEVEL:
        return _TOP_LEVEL[tensor]
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK:
        return f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}"
    raise UnsupportedArchitecture(
        f"{source} holds a tensor {tensor!r} that a plain llama has no place for (rope "
        "scaling factors, biases, experts, ...). Convert the original Hugging Face "
        "checkpoint with mlx_lm.convert instead."
    )


def _f32(value: float) -> float:
    # GGUF stores float32: write 1e-05, not its float64 widening 9.999999747378752e-06.
    return float(str(np.float32(value)))


def _config(header: GGUFHeader, source: Path) -> dict[str, Any]:
    """The mlx-lm llama config the header describes (refusing what mlx-lm's llama lacks)."""
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UnsupportedArchitecture(
            f"{source} is a {arch!r} model; personal imports llama-family GGUF files only "
            "(llama, SmolLM, ...). Convert the original Hugging Face checkpoint with "
            "mlx_lm.convert instead."
        )
    shapes = {t.name: t.shape for t in header.tensors}
    if "token_embd.weight" not in shapes:
        raise CorruptWeights(f"{source} has no token_embd.weight; use a complete GGUF file.")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CorruptWeights(
            f"{source} lacks the metadata {', '.join(missing)}; use a complete GGUF file."
        )
    heads = int(meta["llama.attention.head_count"])
    hidden = int(meta["llama.embedding_length"])
    head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
    unsupported = [
        f"{k} = {meta[k]}"
        for k in ("llama.expert_count", "llama.rope.scaling.type")
        if meta.get(k) not in (None, 0, "none")
    ]
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        unsupported.append("partial rotary embedding")
    if unsupported:
        raise UnsupportedArchitecture(
            f"{source} needs {', '.join(unsupported)}, which personal's GGUF import does not "
            "handle. Convert the original Hugging Face checkpoint with mlx_lm.convert."
        )
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(meta["llama.block_count"]),
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get("llama.context_length", 2048)),
        "vocab_size": shapes["token_embd.weight"][0],
        "tie_word_embeddings": "output.weight" not in shapes,
        # GGUF keeps Meta's interleaved rotary layout (see the module docstring).
        "rope_traditional": True,
        "attention_bias": False,
        "mlp_bias": False,
    }


def _weights(header: GGUFHeader, source: Path, dtype: str) -> tuple[dict, dict[str, int]]:
    """mlx-lm weights and, for ``keep``, the bits of each quantized module."""
    try:
        raw = load_arrays(source)
    except (RuntimeError, ValueError) as exc:
        raise CorruptWeights(f"{source} cannot be read as GGUF ({exc}); copy it again.") from exc
    target = {"float32": mx.float32, "bfloat16": mx.bfloat16}.get(dtype)
    out: dict[str, mx.array] = {}
    bits: dict[str, int] = {}
    for info in header.tensors:
        stem, _, leaf = info.name.rpartition(".")
        if leaf != "weight":
            _module_name(info.name, source)  # raises: a llama has weights only
        module = _module_name(stem, source)
        array = raw[info.name]
        if info.ggml_type == BF16 and not mx.isfinite(array).all().item():
            # MLX reads BF16 through float16, whose range is far smaller.
            raise CorruptWeights(f"{info.name} in {source} overflows float16; use an F16 GGUF.")
        if info.ggml_type in QUANT_BITS:
            scales, biases = raw[f"{stem}.scales"], raw[f"{stem}.biases"]
            if target is None:
                bits[module] = QUANT_BITS[info.ggml_type]
                out[f"{module}.scales"], out[f"{module}.biases"] = scales, biases
            else:  # float32 scales: float16 ones would round every dequantized value
                array = mx.dequantize(
                    array,
                    scales.astype(mx.float32),
                    biases.astype(mx.float32),
                    group_size=GROUP_SIZE,
                    bits=QUANT_BITS[info.ggml_type],
                )
        out[f"{module}.weight"] = array if target is None else array.astype(target)
    return out, bits


def _quantization(bits: dict[str, int]) -> dict[str, Any] | None:
    """mlx-lm's config entry: the commonest width by default, per-module entries otherwise."""
    if not bits:
        return None
    default = Counter(bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default, "mode": "affine"}
    for module, width in sorted(bits.items()):
        if width != default:
            config[module] = {"group_size": GROUP_SIZE, "bits": width}
    return config


def _fsync_tree(directory: Path) -> None:
    """Flush every file of ``directory``, then the directory (full fsync on macOS)."""
    for path in directory.iterdir():
        fsync_path(path)
    fsync_dir(directory)


def _write(
    header: GGUFHeader, source: Path, tmp: Path, *, config: dict, dtype: str, template: str
) -> None:
    ids = write_tokenizer(
        header.metadata, tmp, chat_template=template, vocab_rows=config["vocab_size"]
    )
    config.update({f"{k}_token_id": v for k, v in ids.items() if v is not None})
    weights, bits = _weights(header, source, dtype)
    if quantization := _quantization(bits):
        config["quantization"] = quantization
    mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
    del weights
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    meta = header.metadata
    provenance = {
        "source": "gguf",
        "gguf_file": source.name,
        "model_name": meta.get("general.name"),
        "license": meta.get("general.license"),
        "dtype": dtype,
        "converter_version": CONVERTER_VERSION,
    }
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    _check_loads(tmp, source)
    _fsync_tree(tmp)


def _check_loads(tmp: Path, source: Path) -> None:
    """Build the model from the new directory (lazily): a file whose tensor shapes contradict
    its metadata fails here, not at the user's next ``load_base``."""
    from mlx_lm.utils import load_model

    try:
        load_model(tmp, lazy=True, strict=True)
    except ValueError as exc:
        raise CorruptWeights(
            f"{source}'s tensors do not fit its own metadata ({exc}); use another copy."
        ) from exc


def import_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    chat_template: str | None = None,
) -> Path:
    """Convert a llama-family GGUF file into an mlx-lm model directory at ``out_dir``.

    Args:
        gguf_path: the ``.gguf`` file (F32, F16, BF16, Q4_0, Q4_1 or Q8_0 tensors).
        out_dir: the directory to create; it must not exist yet (an empty one is replaced).
        dtype: ``"float32"`` or ``"bfloat16"`` (dequantize everything), or ``"keep"`` (keep
            quantized tensors quantized, as MLX affine quantization).
        chat_template: a Jinja chat template; required when the file carries none, and
            replaces the file's own otherwise.

    Returns:
        ``out_dir``, complete: nothing is ever left half-written there.

    Raises:
        ConfigError: an unknown ``dtype``.
        ModelNotFound, ModelExists, CorruptWeights, UnsupportedArchitecture,
        UnsupportedQuantization, UnsupportedTokenizer, MissingChatTemplate: each saying
        what to do.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    source, out = Path(gguf_path), Path(out_dir)
    header = read_header(source)
    try:  # other architectures are refused before anything else
        config = _config(header, source)
    except (TypeError, ValueError) as exc:  # metadata of the wrong type (a list, a string)
        raise CorruptWeights(f"{source} has malformed llama metadata ({exc}).") from exc
    template = check_tokenizer(header.metadata, chat_template, source)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ModelExists(f"{out} already exists; remove it or choose another directory.")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its 0700 mode would stick to the model directory; mkdir honours the umask.
    tmp = out.parent / f".{out.name}.importing-{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        _write(header, source, tmp, config=config, dtype=dtype, template=template)
        try:
            # rename(2) is atomic and replaces at most an empty directory.
            os.rename(tmp, out)
        except OSError as exc:
            raise ModelExists(
                f"{out} appeared while importing (another import?); remove it or choose "
                "another directory."
            ) from exc
        fsync_dir(out.parent)  # make the rename itself durable
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
