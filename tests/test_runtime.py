"""The fast-BLAS set-up: automatic, visible when it fails, and switchable off."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from personal.runtime import blas_status, openblas_coretype

import pytest


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )


def test_import_does_not_pull_torch():
    out = _run("import sys, personal; print('torch' in sys.modules, 'mlx.core' in sys.modules)")
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux-only fast path")
def test_fast_blas_is_loaded_on_linux():
    status = blas_status()
    assert status.fast, status.reason
    assert status.library and "blas" in status.library


def test_env_var_turns_it_off():
    out = _run(
        "import personal, json; s = personal.runtime.blas_status(); print(json.dumps(s.backend))",
        PERSONAL_BLAS="off",
    )
    assert json.loads(out.stdout) in ("disabled", "accelerate")
    assert "SlowBLASWarning" not in out.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="Linux-only fast path")
def test_warns_when_mlx_was_imported_first():
    out = _run("import mlx.core, personal", PERSONAL_BLAS="")
    assert "SlowBLASWarning" in out.stderr and "import personal first" in out.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="Linux-only fast path")
def test_warns_when_library_is_missing():
    out = _run("import personal", PERSONAL_BLAS="/nonexistent/libopenblas.so.0")
    assert "SlowBLASWarning" in out.stderr and "apt-get install libopenblas0-pthread" in out.stderr


@pytest.mark.parametrize(
    "flags,expected",
    [
        ({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx2", "fma"}, "SkylakeX"),
        ({"avx2", "fma", "avx"}, "Haswell"),
        ({"sse2", "avx"}, None),
        (set(), None),
    ],
)
def test_coretype_from_cpu_flags(flags, expected):
    assert openblas_coretype(flags) == expected


def test_explicit_coretype_is_respected():
    out = _run(
        "import personal; print(personal.runtime.blas_status().coretype)",
        OPENBLAS_CORETYPE="Haswell",
    )
    assert out.stdout.strip() in ("Haswell", "None")
