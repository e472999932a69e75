"""The base-model build and the demo run end to end (slow: minutes on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quick_build_then_demo(tmp_path):
    out, work = tmp_path / "models", tmp_path / "work"
    subprocess.run(
        [sys.executable, "-m", "simulators.build_base_models", "--quick",
         "--out", str(out), "--work", str(work)],
        check=True,
    )  # fmt: skip
    assert (out / "base-v1" / "provenance.json").is_file()
    assert (work / "build-results.json").is_file()
    demo = subprocess.run(
        [sys.executable, "-m", "simulators.demo", "--base", str(out / "base-v1"), "--steps", "3"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "held-out personal requests" in demo.stdout
