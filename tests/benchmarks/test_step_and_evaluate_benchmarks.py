"""Smoke tests of ``benchmarks/evaluate.py``, ``benchmarks/dp_step.py --noise-baseline`` and
``benchmarks/round_trunk.py`` on the bundled base: small runs print the documented JSON keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> dict:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_evaluate_benchmark_compares_both_paths_on_the_same_loss(tmp_path: Path) -> None:
    public = tmp_path / "public.jsonl"  # not the self-generated set: no generation here
    public.write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}) + "\n"
        for i in range(40)
    ))  # fmt: skip
    result = _run("evaluate.py", "--examples", "4", "--repeats", "1", "--public-data", str(public))
    assert result["base"] == "base-v1" and result["examples"] == 4
    assert result["full_s"] > 0 and result["scored_s"] > 0 and result["speedup"] > 0
    assert 0 < result["scored_share"] < 1
    assert result["loss_scored"] == pytest.approx(result["loss_full"], rel=1e-5)


@pytest.mark.slow  # ~1 minute: compiles five DP steps; the noise itself is tested in tests/privacy
@pytest.mark.timeout(600)
def test_dp_step_noise_baseline_times_every_way_of_drawing() -> None:
    args = ["--base", "base-v1", "--batch", "2", "--seq", "16", "--steps", "1", "--no-torch"]
    result = _run("dp_step.py", *args, "--noise-baseline")
    keys = [
        "dp_noise_1thread_step_s", "dp_noise_threads_step_s", "dp_noise_threads_prefetch_step_s",
        "dp_noise_1thread_prefetch_step_s", "noise_draw_s", "noise_draw_1thread_s",
    ]  # fmt: skip
    for key in ("nondp_step_s", "dp_step_s", *keys):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["trainable_parameters"] > 0


@pytest.mark.slow  # ~1 minute: two rounds of the default policy on base-v1, each in a process
@pytest.mark.timeout(900)
def test_round_trunk_benchmark_gives_the_same_round_both_ways() -> None:
    result = _run("round_trunk.py", "--repeats", "1", "--days", "2")
    assert result["base"] == "base-v1" and result["eligible_units"] > 0
    assert result["trunk_s"] > 0 and result["full_s"] > 0
    assert result["same_outcome"] is True
    assert result["max_train_loss_diff"] < 1e-4
