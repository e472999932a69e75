"""Base models (mlx-lm format), LoRA, evaluation, generation and distillation."""
