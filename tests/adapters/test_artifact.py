"""Adapter artifacts: round trips, header metadata, strict manifests, tamper detection."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

from personal.adapters import AdapterRegistry, Manifest, codec, read_artifact
from personal.adapters.artifact import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    _checked_lora,
    header_metadata,
    manifest_digest,
)
from personal.errors import (
    AdapterCorrupt,
    AdapterFormatTooNew,
    AdapterNotFound,
    ConfigError,
    InvalidManifest,
)

import mlx.core as mx
import numpy as np
import pytest
from adapter_helpers import FP, LORA, same, save, weights_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters")


def _vdir(registry: AdapterRegistry, version: int) -> Path:
    return registry.path / f"v{version:06d}"


def _manifest_json(registry: AdapterRegistry, version: int) -> dict:
    return json.loads((_vdir(registry, version) / MANIFEST_NAME).read_text())


def _write_manifest(registry: AdapterRegistry, version: int, data: dict) -> None:
    (_vdir(registry, version) / MANIFEST_NAME).write_text(json.dumps(data))


# --- round trips ---------------------------------------------------------------------------


def test_round_trip_is_bit_identical_and_manifest_complete(registry):
    weights = weights_for(3)
    v = registry.save(
        weights,
        base_fingerprint=FP,
        base_name="base-v1",
        lora=LORA,
        policy_digest="sha256:policy",
        ledger_head="head-123",
        training={"steps": 10, "epsilon_spent": 0.5},
        gates={"public_loss_delta": 0.01, "accepted": True},
    )
    loaded, manifest = registry.load(v)
    assert same(loaded, weights)
    assert manifest.version == v == 1 and manifest.parent is None
    assert manifest.base_fingerprint == FP and manifest.base_name == "base-v1"
    assert manifest.lora == LORA and manifest.lora_config().rank == 4
    assert manifest.policy_digest == "sha256:policy" and manifest.ledger_head == "head-123"
    assert manifest.training == {"steps": 10, "epsilon_spent": 0.5}
    assert manifest.gates == {"public_loss_delta": 0.01, "accepted": True}
    assert manifest.tensors == 4 and manifest.parameters == 4 * 64
    assert manifest.created.endswith("Z")
    assert {p.name for p in _vdir(registry, v).iterdir()} == {MANIFEST_NAME, WEIGHTS_NAME}


def test_header_metadata_names_base_and_version(registry):
    v = save(registry, base_name="base-v2")
    _, meta = mx.load(str(_vdir(registry, v) / WEIGHTS_NAME), return_metadata=True)
    assert meta == {
        "format": "personal-adapter",
        "format_version": "1",
        "version": "1",
        "base_fingerprint": FP,
        "base_name": "base-v2",
        "manifest_sha256": manifest_digest(registry.manifest(v)),  # the whole manifest
    }


def test_lora_config_object_is_accepted(registry):
    from personal.model.lora import LoRAConfig

    config = LoRAConfig(rank=4, targets=("self_attn.q_proj",))
    v = registry.save(weights_for(1), base_fingerprint=FP, base_name="b", lora=config)
    assert registry.manifest(v).lora_config() == config


@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_dtypes_round_trip(registry, dtype):
    weights = {k: (v * 0.37).astype(dtype) for k, v in weights_for(2).items()}
    v = registry.save(weights, base_fingerprint=FP, base_name="b", lora=LORA)
    assert same(registry.load(v)[0], weights)


_finite32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=6),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_finite32, b=_finite32)
def test_any_finite_values_round_trip_bit_identically(a, b):
    weights = {"x.lora_a": mx.array(a), "y.z.lora_b": mx.array(b)}
    with tempfile.TemporaryDirectory() as tmp:
        registry = AdapterRegistry(tmp)
        v = registry.save(weights, base_fingerprint=FP, base_name="b", lora=LORA)
        loaded, _ = registry.load(v)
    assert same(loaded, weights)  # -0.0 and subnormals included


def test_no_pickle_on_the_load_path(registry, monkeypatch):
    v = save(registry)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on a load path")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(np, "load", refuse)
    registry.load(v)
    registry.verify()
    read_artifact(_vdir(registry, v))


# --- what save refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "fields", "match"),
    [
        ({}, {}, "at least one tensor"),
        ({"model.embed.weight": mx.zeros((2, 2))}, {}, "not a LoRA tensor"),
        ({"a.lora_a": mx.array([[float("nan")]])}, {}, "NaN"),
        (None, {"base_fingerprint": ""}, "base_fingerprint"),
        (None, {"gates": {"loss": float("inf")}}, "finite"),
        (None, {"gates": {"loss": object()}}, "JSON"),
        (None, {"lora": {"rank": 0}}, "rank"),
        (None, {"parent": 5}, "parent"),
        (None, {"created": "2024-01-01T00:00:00+02:00"}, "created"),
    ],
)
def test_save_refuses_bad_input(registry, weights, fields, match):
    kwargs = {"base_fingerprint": FP, "base_name": "b", "lora": LORA, **fields}
    with pytest.raises(ConfigError, match=match):
        registry.save(weights if weights is not None else weights_for(1), **kwargs)
    assert registry.versions() == []


# --- tampering -----------------------------------------------------------------------------


def test_flipped_weight_byte_is_detected(registry):
    v = save(registry)
    path = _vdir(registry, v) / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterCorrupt, match="SHA-256"):
        registry.load(v)


def test_truncated_weights_are_detected(registry):
    v = save(registry)
    path = _vdir(registry, v) / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterCorrupt, match="SHA-256"):
        registry.load(v)


def test_missing_weights_file(registry):
    v = save(registry)
    (_vdir(registry, v) / WEIGHTS_NAME).unlink()
    with pytest.raises(AdapterNotFound, match=WEIGHTS_NAME):
        registry.load(v)


def test_manifest_base_fingerprint_edit_is_detected(registry):
    """Pointing a manifest at another base does not make the adapter load there."""
    v = save(registry)
    data = _manifest_json(registry, v)
    data["base_fingerprint"] = "sha256:" + "c" * 64
    _write_manifest(registry, v, data)
    registry.manifest(v)  # still well-formed ...
    with pytest.raises(AdapterCorrupt, match="header metadata"):
        registry.load(v)  # ... but contradicts the hashed header


def test_consistently_forged_non_lora_tensor_is_refused(registry):
    """Even with a matching hash, an artifact carrying non-LoRA tensors never loads."""
    v = save(registry)
    data = _manifest_json(registry, v)
    forged = {**weights_for(1), "model.embed_tokens.weight": mx.zeros((2, 2))}
    blob = codec.encode(forged, header_metadata(v, FP, "base-test"))
    (_vdir(registry, v) / WEIGHTS_NAME).write_bytes(blob)
    import hashlib

    data.update(weights_sha256=hashlib.sha256(blob).hexdigest(), weights_bytes=len(blob))
    _write_manifest(registry, v, data)
    with pytest.raises(AdapterCorrupt, match="non-LoRA"):
        registry.load(v)


def test_version_in_manifest_must_match_directory(registry):
    save(registry)
    v = save(registry, 2)
    data = _manifest_json(registry, v)
    data["version"] = 7
    _write_manifest(registry, v, data)
    with pytest.raises(InvalidManifest, match="says version 7"):
        registry.load(v)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("gates"), "missing fields"),
        (lambda d: d.update(extra=1), "unknown fields"),
        (lambda d: d.update(version="1"), "'version'"),
        (lambda d: d.update(tensors=True), "'tensors'"),
        (lambda d: d.update(parent=1), "parent"),
        (lambda d: d.update(created="yesterday"), "created"),
        (lambda d: d.update(weights_sha256="ABC"), "weights_sha256"),
        (lambda d: d.update(base_fingerprint=""), "base_fingerprint"),
        (lambda d: d.update(format="something-else"), "format"),
        (lambda d: d["lora"].update(rank=-1), "LoRA"),
        (lambda d: d["lora"].pop("scale"), "lora"),
        (lambda d: d.update(training=[]), "'training'"),
    ],
)
def test_manifest_is_validated_strictly(registry, edit, match):
    v = save(registry)
    data = _manifest_json(registry, v)
    edit(data)
    _write_manifest(registry, v, data)
    with pytest.raises(InvalidManifest, match=match):
        registry.load(v)


def test_manifest_not_json_or_with_nan(registry):
    v = save(registry)
    path = _vdir(registry, v) / MANIFEST_NAME
    path.write_text(path.read_text().replace('"tensors": 4', '"tensors": NaN'))
    with pytest.raises(InvalidManifest, match="not valid JSON"):
        registry.load(v)
    path.write_text("{")
    with pytest.raises(InvalidManifest, match="not valid JSON"):
        registry.load(v)


def test_newer_format_says_upgrade(registry):
    v = save(registry)
    data = _manifest_json(registry, v)
    data["format_version"] = 99
    _write_manifest(registry, v, data)
    with pytest.raises(AdapterFormatTooNew, match="upgrade personal"):
        registry.load(v)


def test_manifest_dict_round_trip(registry):
    v = save(registry, training={"a": [1, 2]})
    manifest = registry.manifest(v)
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest


# --- the manifest's LoRA check agrees with LoRAConfig --------------------------------------

_lora_dicts = st.fixed_dictionaries(
    {
        "rank": st.one_of(st.integers(-2, 64), st.booleans(), st.floats(-1, 10)),
        "scale": st.one_of(st.floats(allow_nan=True), st.integers(-3, 3)),
        "dropout": st.one_of(st.floats(-0.5, 1.5), st.just(0)),
        "targets": st.one_of(st.none(), st.lists(st.sampled_from(["q_proj", "mlp.up_proj"]))),
        "num_layers": st.one_of(st.none(), st.integers(-1, 8)),
    }
)


@settings(max_examples=150, deadline=None)
@given(data=_lora_dicts)
def test_manifest_lora_check_accepts_exactly_what_loraconfig_accepts(data):
    from personal.model.lora import LoRAConfig

    try:
        LoRAConfig.from_dict(data)
        config_ok = True
    except (ConfigError, TypeError):
        config_ok = False
    try:
        _checked_lora(data, "m")
        ours = True
    except InvalidManifest:
        ours = False
    # LoRAConfig does not type-check rank=True or float ranks/num_layers as strictly; the
    # manifest check may be stricter, never looser.
    assert not ours or config_ok
    strict_types = not isinstance(data["rank"], bool | float) and not isinstance(
        data["num_layers"], bool
    )
    if strict_types:
        assert ours == config_ok


@pytest.mark.parametrize(
    "blob",
    [
        b"\xff" * 8 + b"{}",
        len(b'{"x.lora_a": 1}').to_bytes(8, "little") + b'{"x.lora_a": 1}',
        (
            len(h := b'{"x.lora_a":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}').to_bytes(
                8, "little"
            )
            + h
            + b"\0" * 16
        ),
    ],
)
def test_malformed_safetensors_with_a_matching_hash_is_refused(registry, blob):
    import hashlib

    v = save(registry)
    (_vdir(registry, v) / WEIGHTS_NAME).write_bytes(blob)
    data = _manifest_json(registry, v)
    data.update(weights_sha256=hashlib.sha256(blob).hexdigest(), weights_bytes=len(blob))
    _write_manifest(registry, v, data)
    with pytest.raises(AdapterCorrupt, match="not a valid safetensors"):
        registry.load(v)
