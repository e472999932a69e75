"""The reference configuration of the step benchmarks, as plain data (no imports).

The PyTorch + Opacus peer (``opacus_peer.py``) runs in a process of its own that must not import
``personal`` or MLX, so the shared numbers live here and ``reference.py`` builds the MLX model.
"""

REFERENCE = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "vocab_size": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# LoRA rank and scale (mlx-lm's scale; PEFT's lora_alpha = scale * rank).
RANK, SCALE = 8, 20.0
# DP-SGD: noise multiplier and clip norm; Adam's learning rate.
SIGMA, CLIP, LEARNING_RATE = 1.0, 1.0, 1e-4
