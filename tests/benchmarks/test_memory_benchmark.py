"""Smoke test of ``benchmarks/memory.py``: a small run prints the documented JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_a_small_run_prints_the_goals() -> None:
    script = ROOT / "benchmarks" / "memory.py"
    args = ["--json", "--interactions", "300", "--repeats", "1", "--rounds", "1", "--requests", "2"]
    run = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout)
    assert result["interactions"] == 300
    for key in ("build_per_s", "latency_ratio", "index_bytes_ratio", "load_average_1m"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert set(result["goals_met"]) == {"build_per_s", "latency_ratio", "index_bytes_ratio"}
    assert result["prompt_tokens_context"] >= result["prompt_tokens_plain"]
    assert result["latency_ratio_context"] > 0
