"""Shared test set-up: keep caches and the network out of the tests."""

from __future__ import annotations

import os

import pytest

# Never reach for a model hub from tests, whatever the code under test does.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import personal  # noqa: F401  (loads the fast BLAS before anything imports mlx)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PERSONAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


_TOKENIZER_TEXTS = [
    f"{verb} {who} about the {thing} at {hour} o'clock, please."
    for verb in ("Remind", "Tell", "Ask", "Call", "Message", "Text")
    for who in ("Anna", "Bruno", "Chloé", "Dmitri", "Eva", "Farah", "mum", "the team")
    for thing in ("meeting", "dentist", "groceries", "concert", "flight")
    for hour in ("7", "9", "noon", "5")
] + ["What's the weather in Zürich tomorrow?", "Play some jazz by Nina Simone."]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    """A byte-level BPE tokenizer (vocab 384) in the product's chat format."""
    from personal.model.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(_TOKENIZER_TEXTS, 384, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir):
    """make(arch, quantize=False, seed=0) -> directory of a tiny random mlx-lm model (cached)."""
    from tiny_models import save_tiny_model

    made: dict[tuple, object] = {}

    def make(arch: str = "llama", *, quantize: bool = False, seed: int = 0):
        key = (arch, quantize, seed)
        if key not in made:
            out = tmp_path_factory.mktemp(f"{arch}-{'q4' if quantize else 'f32'}-{seed}")
            made[key] = save_tiny_model(
                out, arch, tiny_tokenizer_dir, 384, quantize=quantize, seed=seed
            )
        return made[key]

    return make
