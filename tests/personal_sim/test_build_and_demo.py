"""The base-model build and the demo run end to end (slow: minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from personal_sim.runner import default_policy

pytestmark = pytest.mark.slow


def test_quick_build_then_demo_on_the_built_models(tmp_path):
    out, work = tmp_path / "models", tmp_path / "work"
    subprocess.run(
        [sys.executable, "-m", "personal_sim.build_base_models", "--quick",
         "--out", str(out), "--work", str(work)],
        check=True,
    )  # fmt: skip
    provenance = json.loads((out / "base-v1" / "provenance.json").read_text())
    assert provenance["training"]["init"].startswith("width-pruned from the teacher")
    results = json.loads((work / "build-results.json").read_text())
    assert set(results["models"]) == {"teacher", "control-v1-size", "base-v1", "base-v2"}
    policy = tmp_path / "tiny.toml"
    policy.write_text(
        default_policy()
        .with_overrides(
            {"training.steps": 2, "training.min_new_units": 2, "migration.distill_steps": 2}
        )
        .to_toml()
    )
    demo = subprocess.run(
        [sys.executable, "-m", "personal_sim.demo", "--users", "1", "--days", "2",
         "--update-day", "1", "--held-out", "4", "--public-eval", "4", "--no-progress",
         "--policy", str(policy), "--base", str(out / "base-v1"),
         "--update-base", str(out / "base-v2"), "--out", str(tmp_path / "run")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "held-out loss gain" in demo.stdout and "Conclusion:" in demo.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for arm in ("dp", "drop"):
        assert metrics["users"][0]["arms"][arm]["migration"]["to"] == str(out / "base-v2")
