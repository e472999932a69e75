"""load_base: every architecture loads; every broken directory maps to a named error."""

from __future__ import annotations

import json
import shutil

from personal.errors import (
    CorruptWeights,
    IncompleteModel,
    ModelError,
    ModelNotFound,
    PersonalError,
    TokenizerMismatch,
    UnsupportedArchitecture,
)
from personal.model.base import load_base

import pytest
from tiny_models import ARCHITECTURES


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_loads_with_fingerprint(tiny_model_factory, arch):
    base = load_base(tiny_model_factory(arch))
    assert base.fingerprint.startswith("sha256:") and len(base.fingerprint) == 71
    assert base.vocab_size == 384
    assert base.quantization is None
    logits = base.model(__import__("mlx.core").core.array([[1, 3, 10, 11]]))
    assert logits.shape == (1, 4, 384)


def test_quantized_model_reports_quantization(tiny_model_factory):
    base = load_base(tiny_model_factory("llama", quantize=True))
    assert base.quantization["bits"] == 4 and base.quantization["group_size"] == 32
    dense = load_base(tiny_model_factory("llama"))
    # Quantized weights count unpacked, so both report the same parameter count.
    assert base.num_parameters() == dense.num_parameters()


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_quantized_base_runs_dequantized_on_the_cpu(tiny_model_factory, arch):
    """On the CPU a quantized base is dequantized at load (its quantized matmul is ~40x
    slower to train); the fingerprint still names the files, and the outputs agree."""
    import mlx.core as mx
    import mlx.nn as nn

    path = tiny_model_factory(arch, quantize=True)
    kept = load_base(path, dequantize=False)
    auto = load_base(path)  # the CPU default
    assert mx.default_device().type == mx.DeviceType.cpu
    assert auto.dequantized and not kept.dequantized
    assert auto.fingerprint == kept.fingerprint and auto.quantization == kept.quantization
    quantized = [m for _, m in auto.model.named_modules() if "Quantized" in type(m).__name__]
    assert not quantized
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in kept.model.named_modules())
    tokens = mx.array([[1, 5, 9, 13, 2]])
    diff = mx.abs(auto.model(tokens) - kept.model(tokens)).max().item()
    assert diff < 1e-3
    assert load_base(path, dequantize=True).info()["dequantized"] is True


def test_parameter_count_is_exact(tiny_model_factory):
    base = load_base(tiny_model_factory("llama"))
    h, i, v, layers = 64, 128, 384, 2
    kv = 2 * 16  # 2 kv heads of head_dim 16
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h  # attn, mlp, 2 norms
    assert base.num_parameters() == 2 * v * h + layers * per_layer + h


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_directory(tmp_path):
    with pytest.raises(ModelNotFound, match="never downloads"):
        load_base(tmp_path / "nope")
    with pytest.raises(ModelNotFound):
        load_base("some-org/some-model")  # a hub id is never fetched


def test_missing_config(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(IncompleteModel, match=r"config\.json"):
        load_base(d)


def test_missing_weights_file(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(IncompleteModel, match="safetensors"):
        load_base(d)


def test_missing_tokenizer(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(IncompleteModel, match="tokenizer"):
        load_base(d)


def test_truncated_weights_are_corrupt(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeights, match="truncated or corrupt"):
        load_base(d)


def test_garbage_header_is_corrupt(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CorruptWeights):
        load_base(d)


def test_weights_missing_a_tensor(tiny_model_factory, tmp_path):
    import mlx.core as mx

    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    weights = mx.load(str(d / "model.safetensors"))
    weights.pop("model.layers.1.mlp.down_proj.weight")
    mx.save_safetensors(str(d / "model.safetensors"), weights)
    with pytest.raises(IncompleteModel, match="lack parameters"):
        load_base(d)


def test_weights_of_another_size(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptWeights, match="do not fit"):
        load_base(d)


def test_unsupported_architecture(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "perceiver_9000"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="perceiver_9000"):
        load_base(d)


def test_tokenizer_larger_than_embedding(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["vocab_size"] = 300
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        TokenizerMismatch, match=r"has \d+ tokens but the model.s embedding has 300"
    ):
        load_base(d)


def test_invalid_config_json(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(IncompleteModel, match="not valid JSON"):
        load_base(d)


def test_a_config_type_error_is_not_blamed_on_the_tokenizer(tiny_model_factory, tmp_path):
    d = _copy(tiny_model_factory("llama"), tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["vocab_size"] = "abc"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompleteModel, match=r"config\.json is malformed") as caught:
        load_base(d)
    assert "tokenizer files are not at fault" in str(caught.value)


def test_errors_share_one_hierarchy():
    for cls in (ModelNotFound, IncompleteModel, CorruptWeights, UnsupportedArchitecture):
        assert issubclass(cls, ModelError) and issubclass(cls, PersonalError)
