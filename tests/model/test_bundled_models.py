"""The bundled base models ship complete, small, and with matching provenance."""

from __future__ import annotations

import json

from personal.model.base import bundled_models, load_base
from personal.model.generate import generate

import pytest

pytestmark = pytest.mark.skipif(
    set(bundled_models()) < {"base-v1", "base-v2"},
    reason="bundled models not built (make build-models)",
)


@pytest.mark.parametrize("name", ["base-v1", "base-v2"])
def test_bundled_model_loads_by_name(name):
    base = load_base(name)
    assert base.name == name and base.architecture == "llama"
    assert base.provenance is not None
    assert base.provenance["fingerprint"] == base.fingerprint
    # Built before the simulators were renamed personal_sim: the provenance keeps the old name.
    assert base.provenance["corpus"]["generator"] == "simulators.public_corpus"
    out = generate(base.model, base.tokenizer, "What's the weather like today?", max_tokens=24)
    assert out.text and 0 < out.confidence <= 1


def test_v2_differs_from_v1():
    v1, v2 = load_base("base-v1"), load_base("base-v2")
    assert v1.fingerprint != v2.fingerprint
    assert v2.num_parameters() > v1.num_parameters()


def test_bundled_models_are_small():
    total = sum(f.stat().st_size for d in bundled_models().values() for f in d.iterdir())
    assert total < 25 * 1024 * 1024


def test_provenance_is_plain_json():
    for path in bundled_models().values():
        data = json.loads((path / "provenance.json").read_text())
        assert {"config", "training", "test", "fingerprint"} <= set(data)
