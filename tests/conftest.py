"""Shared test set-up: keep caches and the network out of the tests."""

from __future__ import annotations

import os

import pytest

# Never reach for a model hub from tests, whatever the code under test does.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import personal  # noqa: E402,F401  (loads the fast BLAS before anything imports mlx)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PERSONAL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
