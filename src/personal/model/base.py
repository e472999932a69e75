"""Load base models in mlx-lm format, never touching the network.

A base model is a directory holding ``config.json``, ``model*.safetensors`` and tokenizer files
(what ``mlx_lm.convert`` writes). :func:`load_base` validates the directory up front so that
every way it can be broken maps to one named :class:`~personal.errors.ModelError` with a message
saying what to do, then builds the model through mlx-lm's architecture classes.

Bundled names (``base-v1``, ``base-v2``) resolve to the models shipped inside the package; see
docs/base-models.md for how they are built.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personal.errors import (
    CorruptWeights,
    IncompleteModel,
    ModelNotFound,
    TokenizerMismatch,
    UnsupportedArchitecture,
)
from personal.model.fastmath import accelerate
from personal.model.fingerprint import fingerprint_directory
from personal.model.mlx_typing import load_arrays
from personal.runtime import device_name

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

# The bundled bases are package data (weights, tokenizers, population adapters), not code.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# Any one of these is enough for transformers to build a tokenizer.
_TOKENIZER_REQUIRED_ANY = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass
class BaseModel:
    """A loaded base model: the MLX module, its tokenizer, and its identity.

    Attributes:
        model: the mlx-lm ``Model`` (an ``mlx.nn.Module``); LoRA is injected into it in place.
        tokenizer: mlx-lm's ``TokenizerWrapper`` (forwards to the HF tokenizer).
        config: the parsed ``config.json``.
        fingerprint: ``"sha256:..."`` over config, weights and tokenizer files; adapters are
            bound to it.
        path: the model directory.
        name: the bundled name (``"base-v1"``) or the directory name.
        provenance: ``provenance.json`` of the directory, if any.
        dequantized: a quantized base runs on float32 copies of its weights (see
            :func:`load_base`).
    """

    model: nn.Module
    tokenizer: Any
    config: dict[str, Any]
    fingerprint: str
    path: Path
    name: str
    provenance: dict[str, Any] | None = field(default=None, repr=False)
    dequantized: bool = False

    @property
    def architecture(self) -> str:
        return str(self.config["model_type"])

    @property
    def vocab_size(self) -> int:
        return int(_vocab_size(self.config))

    @property
    def quantization(self) -> dict[str, Any] | None:
        return self.config.get("quantization")

    def num_parameters(self) -> int:
        """Parameters of the base (quantized weights counted unpacked; LoRA excluded)."""
        return count_base_parameters(self.model)

    def info(self) -> dict[str, Any]:
        """What ``personal info`` prints."""
        return {
            "name": self.name,
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "architecture": self.architecture,
            "parameters": self.num_parameters(),
            "vocab_size": self.vocab_size,
            "quantization": self.quantization,
            "dequantized": self.dequantized,
        }


def bundled_models() -> dict[str, Path]:
    """Names and directories of the base models shipped in the package."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model_path(path_or_name: str | Path) -> tuple[Path, str]:
    """Map a bundled or real-model name, or a directory, to ``(directory, display name)``.

    Real-model names (``smollm2-135m-instruct``, see :mod:`personal.model.catalog`) are
    converted into the cache on first use. Never touches the network.
    """
    bundled = bundled_models()
    if isinstance(path_or_name, str) and path_or_name in bundled:
        return bundled[path_or_name], path_or_name
    if isinstance(path_or_name, str):
        from personal.model.catalog import resolve_catalog_name  # real models (GGUF packages)
        from personal.model.real_v2 import resolve_v2_name  # their v2s, built locally

        if found := resolve_catalog_name(path_or_name) or resolve_v2_name(path_or_name):
            return found
    path = Path(path_or_name).expanduser()
    if not path.is_dir():
        names = ", ".join(bundled) or "none installed"
        raise ModelNotFound(
            f"No model directory at {str(path)!r}. Pass a local mlx-lm model directory "
            f"(config.json, *.safetensors, tokenizer files) or a bundled name ({names}). "
            "personal never downloads models."
        )
    return path, path.name


def _read_config(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise IncompleteModel(
            f"{path} has no config.json. Copy the complete model directory (as written by "
            "mlx_lm.convert or save_base)."
        )
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise IncompleteModel(f"{config_file} is not valid JSON ({exc}); restore it.") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise IncompleteModel(f"{config_file} has no 'model_type'; it is not an mlx-lm config.")
    return config


def _vocab_size(config: dict[str, Any]) -> int:
    if "vocab_size" in config:
        return int(config["vocab_size"])
    return int(config.get("text_config", {}).get("vocab_size", 0))


def model_classes(config: dict[str, Any]) -> tuple[type, type]:
    """mlx-lm's ``Model`` and ``ModelArgs`` for ``config``, through its public module layout.

    mlx-lm keeps one module per architecture, ``mlx_lm.models.<model_type>``, each defining
    ``Model`` and ``ModelArgs``, and public remapping tables (``MODEL_REMAPPING``, e.g.
    ``mistral`` -> ``llama``). We resolve the classes here rather than through mlx-lm's
    private ``_get_classes``, which any release may rename, and hand them to ``load_model``'s
    public ``get_model_classes`` hook.
    """
    import mlx_lm.utils as mlx_lm_utils

    model_type = str(config["model_type"])
    architectures = config.get("architectures") or ()
    if isinstance(architectures, str):
        architectures = (architectures,)
    by_architecture = getattr(mlx_lm_utils, "MODEL_ARCHITECTURE_REMAPPING", {})
    remapped = next(
        (
            by_architecture[(model_type, a)]
            for a in architectures
            if (model_type, a) in by_architecture
        ),
        None,
    )
    if remapped is None:
        remapped = getattr(mlx_lm_utils, "MODEL_REMAPPING", {}).get(model_type, model_type)
    try:
        module = importlib.import_module(f"mlx_lm.models.{remapped}")
    except ImportError as exc:
        raise UnsupportedArchitecture(
            f"Architecture {config['model_type']!r} is not supported by mlx-lm "
            "(and so not by personal). Convert the model to a supported architecture "
            "(llama, qwen2, qwen3, gemma3, mixtral, qwen2_moe, qwen3_moe, ...)."
        ) from exc
    return module.Model, module.ModelArgs


def _load_weights(path: Path) -> dict[str, mx.array]:
    files = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if not files:
        raise IncompleteModel(f"{path} has no *.safetensors weights; copy them from the model.")
    weights: dict[str, mx.array] = {}
    for file in files:
        try:
            weights.update(load_arrays(file))
        except Exception as exc:  # mlx raises RuntimeError/ValueError with C++ text
            raise CorruptWeights(
                f"{file} cannot be read as safetensors ({exc}). The file is truncated or "
                "corrupt: restore it from the original model."
            ) from exc
    return weights


def _build_model(path: Path, config: dict[str, Any], lazy: bool) -> nn.Module:
    from mlx_lm.utils import load_model

    model_classes(config)  # fail early with a clear message
    weights = _load_weights(path)  # validates every file before mlx-lm touches them
    del weights
    try:
        model, _ = load_model(path, lazy=lazy, strict=True, get_model_classes=model_classes)
    except ValueError as exc:
        text = str(exc)
        if "Missing" in text:
            raise IncompleteModel(
                f"The weights in {path} lack parameters the config requires ({text}). "
                "The download or copy is incomplete: restore all weight shards."
            ) from exc
        raise CorruptWeights(
            f"The weights in {path} do not fit its config.json ({text}). "
            "Use the config that was saved with these weights."
        ) from exc
    return model


def _load_tokenizer(path: Path, config: dict[str, Any]) -> Any:
    from mlx_lm.utils import load_tokenizer

    if not any((path / name).is_file() for name in _TOKENIZER_REQUIRED_ANY):
        raise IncompleteModel(
            f"{path} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json). "
            "Copy the tokenizer files that came with the model."
        )
    try:
        tokenizer = load_tokenizer(
            path, {"local_files_only": True}, eos_token_ids=config.get("eos_token_id")
        )
    except Exception as exc:
        if "Validation error for field" in str(exc):  # transformers validating config.json
            raise IncompleteModel(
                f"{path / 'config.json'} is malformed ({exc}): the tokenizer files are not at "
                "fault. Use the config that was saved with these weights."
            ) from exc
        raise IncompleteModel(f"The tokenizer in {path} cannot be loaded: {exc}") from exc
    vocab = _vocab_size(config)
    if vocab and len(tokenizer.get_vocab()) > vocab:
        raise TokenizerMismatch(
            f"The tokenizer in {path} has {len(tokenizer.get_vocab())} tokens but the model's "
            f"embedding has {vocab} rows: the tokenizer belongs to another model. Use the "
            "tokenizer files saved with these weights."
        )
    return tokenizer


def load_base(
    path_or_name: str | Path, *, lazy: bool = False, dequantize: bool | None = None
) -> BaseModel:
    """Load a base model from a local mlx-lm directory or a bundled name.

    Args:
        path_or_name: a directory, or ``"base-v1"`` / ``"base-v2"`` for the bundled models.
        lazy: leave weights unevaluated until first use (mlx-lm semantics).
        dequantize: run a quantized base on float32 copies of its weights. ``None`` (the
            default) does so on the CPU, where MLX's quantized matmul made a LoRA step 40x
            slower than float32 (``benchmarks/dp_step.py``, docs/performance.md), and keeps
            the quantized weights on a GPU (Metal), where they are the fast path, and for a
            real model named with ``:keep``. The
            fingerprint is the directory's either way: it names the weights, not their
            in-memory form.

    Returns:
        A :class:`BaseModel` with the model in eval mode and its fingerprint. On a Linux CPU
        its attention and SwiGLU run through :mod:`personal.kernels`
        (:func:`personal.model.fastmath.accelerate`).

    Raises:
        ModelNotFound, IncompleteModel, CorruptWeights, UnsupportedArchitecture,
        TokenizerMismatch: each with a message saying what to fix.
    """
    path, name = resolve_model_path(path_or_name)
    config = _read_config(path)
    tokenizer = _load_tokenizer(path, config)
    model = _build_model(path, config, lazy)
    if dequantize is None:  # a real model asked for as ``NAME:keep`` stays quantized
        explicit_keep = isinstance(path_or_name, str) and path_or_name.endswith(":keep")
        dequantize = device_name() == "cpu" and not explicit_keep
    dequantized = bool(dequantize and config.get("quantization"))
    if dequantized:
        from mlx_lm.utils import dequantize_model

        model = dequantize_model(model)
    model.eval()
    # Attention and SwiGLU through the fast CPU kernels (same function; see personal.kernels).
    accelerate(model)
    provenance = None
    if (path / "provenance.json").is_file():
        provenance = json.loads((path / "provenance.json").read_text())
    return BaseModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        fingerprint=fingerprint_directory(path),
        path=path,
        name=name,
        provenance=provenance,
        dequantized=dequantized,
    )


def count_base_parameters(model: nn.Module) -> int:
    """Parameter count of the base weights: quantized tensors unpacked, LoRA tensors skipped.

    LoRA wrappers are not leaf modules (they hold the base linear as a child), so counting
    leaf modules as mlx-lm does leaves their ``lora_a``/``lora_b`` out.
    """
    from mlx_lm.utils import get_total_parameters

    return int(get_total_parameters(model))


def save_base(
    model: nn.Module,
    config: dict[str, Any],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an mlx-lm directory: config, one safetensors file, tokenizer files.

    Used by the base-model build and by tests that make tiny models of each architecture.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in TOKENIZER_FILES:
        source = Path(tokenizer_dir) / name
        if source.is_file():
            shutil.copyfile(source, out / name)
    if provenance is not None:
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return out
