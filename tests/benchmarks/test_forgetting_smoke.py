"""Smoke test of ``benchmarks/forgetting.py --quick``: it runs and prints the documented JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARMS = {"none", "replay", "ewc", "replay_ewc", "replay_ewc_nodp"}
METRICS = ("personal_gain", "general_loss_increase", "old_personal_retained")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_run_prints_every_arm_with_its_metrics() -> None:
    script = ROOT / "benchmarks" / "forgetting.py"
    run = subprocess.run(
        [sys.executable, str(script), "--json", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout)

    assert set(result["arms"]) == ARMS
    config = result["config"]
    assert config["quick"] is True and set(config["arms"]) == ARMS
    rounds = config["users"] * config["rounds"]
    for arm, values in result["arms"].items():
        for key in METRICS:
            assert isinstance(values[key], float) and math.isfinite(values[key]), (arm, key)
        # Permissive gates: every round of every arm activated its adapter.
        assert values["rounds_activated"] == rounds, arm
        assert len(values["per_user"]) == config["users"]
    # The DP arms stay within the lifetime budget; the non-private reference has its own.
    for arm in ARMS - {"replay_ewc_nodp"}:
        assert result["arms"][arm]["epsilon_max"] <= config["lifetime_epsilon"] + 1e-9
    assert isinstance(result["goals"]["replay_ewc_general_loss_increase_le_1pct"], bool)
