"""The whole manifest is covered by a hash, loads refuse non-finite weights, and a ledger entry
never fails on a non-finite summary after charging (issue 19, item 11)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from personal.adapters import AdapterRegistry
from personal.adapters.artifact import MANIFEST_NAME, WEIGHTS_NAME
from personal.adapters.codec import decode, encode
from personal.errors import AdapterCorrupt
from personal.privacy.ledger.chain import encode_body

import mlx.core as mx
import numpy as np
import pytest
from adapter_helpers import save


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(tmp_path / "adapters")


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_an_edited_training_summary_fails_verify_and_load(registry: AdapterRegistry) -> None:
    version = save(registry, training={"epsilon_max": 0.7, "steps": 3})
    assert registry.verify().ok
    _edit_manifest(registry.path / f"v{version:06d}", lambda d: d["training"].update(
        epsilon_max=0.07))  # fmt: skip
    report = registry.verify()
    assert not report.ok and "manifest_sha256" in report.problems[0]
    with pytest.raises(AdapterCorrupt, match="manifest was edited"):
        registry.load(version)


def test_nan_weights_with_a_recomputed_hash_are_refused(registry: AdapterRegistry) -> None:
    version = save(registry)
    directory = registry.path / f"v{version:06d}"
    weights, meta = decode((directory / WEIGHTS_NAME).read_bytes(), where="test")
    name = sorted(weights)[0]
    weights[name] = mx.full(weights[name].shape, math.nan)
    data = encode(weights, meta)
    (directory / WEIGHTS_NAME).write_bytes(data)
    _edit_manifest(directory, lambda d: d.update(
        weights_sha256=hashlib.sha256(data).hexdigest(), weights_bytes=len(data)))  # fmt: skip
    with pytest.raises(AdapterCorrupt, match="NaN or infinity"):
        registry.load(version)
    assert not registry.verify().ok
    with pytest.raises(AdapterCorrupt):
        registry.activate(version)


def test_a_ledger_entry_records_a_non_finite_summary_as_null() -> None:
    body = {"completed_steps": 3, "loss": math.nan, "eps": np.float32(0.5), "x": [math.inf]}
    assert json.loads(encode_body(body)) == {
        "completed_steps": 3, "eps": 0.5, "loss": None, "x": [None]}  # fmt: skip
    plain = {"a": 1.5, "b": [1, "x"]}  # entries as before: the encoding is unchanged
    assert encode_body(plain) == b'{"a":1.5,"b":[1,"x"]}'
