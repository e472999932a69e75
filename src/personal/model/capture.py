"""Run an mlx-lm decoder once and keep what distillation needs: logits, hidden states, attention.

mlx-lm models return logits only. :func:`capture` walks the same modules the model's own
``__call__`` does (embedding, every block with the causal mask, final norm, head), so its logits
are the model's logits, and keeps each block's output on the way. Attention probabilities never
exist in mlx-lm (``mx.fast.scaled_dot_product_attention`` fuses them away), so for the blocks
asked for they are recomputed from the block's own projections, ``q_norm``/``k_norm`` and RoPE:
this costs one extra ``q``/``k`` projection and a ``(B, H, T, T)`` array per block, which is
why it is opt-in.

Supported: the llama family (llama, mistral), qwen2, qwen3, mixtral, qwen2_moe and qwen3_moe,
without sliding-window layers. Others raise :class:`~personal.errors.UnsupportedArchitecture`
rather than capture something subtly different from what the model computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from personal.errors import ConfigError, UnsupportedArchitecture

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask

# mlx-lm modules whose forward pass is exactly: embed -> blocks(h, mask) -> norm -> head.
_SUPPORTED_MODULES = frozenset(
    f"mlx_lm.models.{name}"
    for name in ("llama", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")
)


@dataclass(frozen=True)
class Capture:
    """What one forward pass of a decoder computed.

    Attributes:
        logits: ``(B, T, V)`` next-token logits, as ``model(inputs)`` returns them.
        hidden_states: one ``(B, T, D)`` array per block: the residual stream after block ``i``
            (before the final norm), ``len == num_layers``.
        attentions: block index -> ``(B, H, T, T)`` attention probabilities (rows sum to 1,
            zero above the diagonal), only for the blocks asked for.
    """

    logits: mx.array
    hidden_states: list[mx.array]
    attentions: dict[int, mx.array] = field(default_factory=dict)


def _decoder(model: nn.Module) -> nn.Module:
    """The inner decoder (``model.model``) after checking we know its forward pass."""
    module = type(model).__module__
    if module not in _SUPPORTED_MODULES or not hasattr(model, "model"):
        raise UnsupportedArchitecture(
            f"Distillation capture does not support {module}.{type(model).__name__}; "
            "supported mlx-lm families: llama/mistral, qwen2, qwen3, mixtral, qwen2_moe, "
            "qwen3_moe. Logit-only or sequence-level distillation works with any model."
        )
    decoder = model.model
    if getattr(decoder, "swa_idx", None) is not None:
        raise UnsupportedArchitecture(
            "Distillation capture does not support sliding-window attention layers; "
            "use a model whose layer_types are all full_attention."
        )
    return decoder


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks of a supported decoder."""
    return len(_decoder(model).layers)


def hidden_size(model: nn.Module) -> int:
    """Width ``D`` of the residual stream of a supported decoder."""
    return int(_decoder(model).embed_tokens.weight.shape[-1])


def num_heads(model: nn.Module) -> int:
    """Number of query heads per block of a supported decoder."""
    return _heads(_decoder(model).layers[0].self_attn)[0]


def _heads(attn: nn.Module) -> tuple[int, int]:
    # mixtral names them num_heads / num_key_value_heads, the others n_heads / n_kv_heads.
    n_heads = getattr(attn, "n_heads", None) or attn.num_heads
    n_kv = getattr(attn, "n_kv_heads", None) or attn.num_key_value_heads
    return int(n_heads), int(n_kv)


def attention_probs(attn: nn.Module, x: mx.array) -> mx.array:
    """Causal attention probabilities of one attention module on its (normed) input.

    Args:
        attn: a block's ``self_attn`` (llama/qwen style: q/k projections, optional
            ``q_norm``/``k_norm``, ``rope``, ``scale``).
        x: ``(B, T, D)`` the input the block feeds its attention (after ``input_layernorm``).

    Returns:
        ``(B, H, T, T)`` float32 probabilities; key heads are repeated for grouped-query
        attention, as the fused kernel does.
    """
    B, T, _ = x.shape
    n_heads, n_kv = _heads(attn)
    queries = attn.q_proj(x).reshape(B, T, n_heads, -1)  # (B, T, H, d)
    keys = attn.k_proj(x).reshape(B, T, n_kv, -1)  # (B, T, Hkv, d)
    if hasattr(attn, "q_norm"):
        queries, keys = attn.q_norm(queries), attn.k_norm(keys)
    queries = attn.rope(queries.transpose(0, 2, 1, 3))  # (B, H, T, d)
    keys = attn.rope(keys.transpose(0, 2, 1, 3))  # (B, Hkv, T, d)
    if n_kv != n_heads:
        keys = mx.repeat(keys, n_heads // n_kv, axis=1)  # (B, H, T, d)
    scores = (queries * attn.scale) @ keys.transpose(0, 1, 3, 2)  # (B, H, T, T)
    causal = mx.tril(mx.ones((T, T), dtype=mx.bool_))
    scores = mx.where(causal, scores.astype(mx.float32), -mx.inf)
    return mx.softmax(scores, axis=-1)


def capture(
    model: nn.Module,
    inputs: mx.array,
    *,
    attention_layers: Sequence[int] = (),
) -> Capture:
    """Run ``model`` on ``inputs`` once, keeping logits, hidden states and attention maps.

    Differentiable: use it inside a loss to train the student, or wrap the teacher's result in
    ``mx.stop_gradient``.

    Args:
        model: an mlx-lm decoder of a supported family (LoRA layers and quantization are fine).
        inputs: ``(B, T)`` int32 token ids (right-padded batches are fine: the mask is causal,
            so padding never changes the positions before it).
        attention_layers: block indices whose attention probabilities to recompute
            (negative indices count from the end).

    Returns:
        A :class:`Capture`.

    Raises:
        UnsupportedArchitecture: the model is not of a supported family.
        ConfigError: a block index is out of range.
    """
    decoder = _decoder(model)
    wanted = _normalise_layers(attention_layers, len(decoder.layers))
    h = decoder.embed_tokens(inputs)  # (B, T, D)
    mask = create_attention_mask(h, None)
    hidden: list[mx.array] = []
    attentions: dict[int, mx.array] = {}
    for index, block in enumerate(decoder.layers):
        if index in wanted:
            attentions[index] = attention_probs(block.self_attn, block.input_layernorm(h))
        h = block(h, mask, None)
        hidden.append(h)
    out = decoder.norm(h)
    head = getattr(model, "lm_head", None)
    logits = head(out) if head is not None else decoder.embed_tokens.as_linear(out)
    return Capture(logits, hidden, attentions)


def _normalise_layers(layers: Sequence[int], count: int) -> set[int]:
    result = set()
    for layer in layers:
        if not -count <= layer < count:
            raise ConfigError(
                f"Block index {layer} is out of range for a model with {count} blocks."
            )
        result.add(layer % count)
    return result
