"""`make demo`: the demo preset end to end on a tiny scale, its summary and its conclusion."""

from __future__ import annotations

import json
from typing import Any

from personal.errors import ConfigError

import pytest
from click.testing import CliRunner

from personal_sim import demo
from personal_sim.contrast import BARE, COLUMNS, conclusion, contrast_rows, label
from personal_sim.population import HEAVY_RATE, User
from personal_sim.scenario import DEFAULT_POLICY, SimConfig


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The demo preset with ``--quick`` sizes and one day: a few seconds, no round yet."""
    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(
        demo.demo_command, ["--quick", "--days", "1", "--out", str(out), "--no-progress"],
        catch_exceptions=False,
    )  # fmt: skip
    return result, json.loads((out / "metrics.json").read_text())


def _summary_lines(output: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    return lines[start:]


def test_the_quick_demo_prints_every_arm_and_column(quick_run):
    result, metrics = quick_run
    assert result.exit_code == 0, result.output
    lines = _summary_lines(result.output)
    header = lines[0]
    for column in COLUMNS:
        assert column in header
    rows = [line for line in lines[2:] if line and not line.startswith(("Conclusion", "note"))]
    labels = [BARE, *(label(a) for a in demo.ARMS)]
    assert [r.split("  ")[0] for r in rows[: len(labels)]] == labels
    # The demo runs the policy as shipped, on heavy users, with its arms.
    config = metrics["config"]
    assert config["policy"]["name"] == DEFAULT_POLICY and config["arms"] == list(demo.ARMS)
    assert config["min_rate"] == HEAVY_RATE and config["users"] == demo.QUICK["users"]
    assert all(u["profile"]["rate_per_day"] >= HEAVY_RATE for u in metrics["users"])


def test_the_quick_demo_conclusion_matches_its_numbers(quick_run):
    result, metrics = quick_run
    line = next(x for x in result.output.splitlines() if x.startswith("Conclusion:"))
    assert line == conclusion(metrics)
    # One day of logging is below the shipped trigger: nothing trained, and it says so.
    assert all(s["rounds"] == 0 for s in metrics["summary"].values())
    waits = metrics["config"]["policy"]["training"]["min_new_units"]
    assert "no round ran" in line and f"{waits} new interactions" in line


def _arm(gain: float, slots: float, *, eps: float = 7.6, pre: float | None = 0.03,
         post: float | None = 0.01, drift: float = 0.001) -> dict[str, Any]:  # fmt: skip
    return {
        "final_gain": gain, "final_slot_accuracy": slots, "bare_slot_accuracy": 0.25,
        "final_general_drift": drift, "epsilon_max": eps, "epsilon_budget": 8.0,
        "rounds": 6, "passed": 5, "pre_update_gain": pre, "post_update_gain": post,
        "migrations_accepted": 2, "intervals": {},
    }  # fmt: skip


def _metrics(**arms: dict[str, Any]) -> dict[str, Any]:
    names = [a.replace("_", "-").replace("-and-", "+") for a in arms]
    strategy = {"non-dp": "distill", "dp": "distill", "dp+memory": "distill", "drop": "drop"}
    arm = {"days": [{"slot_requests": 10}]}
    users = [{"arms": {n: {**arm, "migration": {"strategy": strategy[n]}} for n in names}}] * 2
    return {
        "config": {"arms": names, "policy": {"training": {"min_new_units": 64}}},
        "users": users,
        "summary": {n: s for n, s in zip(names, arms.values(), strict=True)},
    }


def test_the_conclusion_is_derived_from_the_numbers():
    metrics = _metrics(
        non_dp=_arm(0.0166, 0.25, eps=7.6),
        dp=_arm(0.0119, 0.30, pre=0.021, post=0.007, drift=0.004),
        drop=_arm(0.008, 0.25, pre=0.021, post=0.0),
    )
    line = conclusion(metrics)
    assert "with DP (ε ≤ 7.60) the held-out loss is 1.2% below the bare base's" in line
    assert "without DP 1.7% below (DP keeps 72% of the gain)" in line
    assert "slot accuracy rose (25.0% bare, 30.0% with DP; 20 slot requests)" in line
    assert "general drift at most +0.4%" in line
    assert "from +2.1% to +0.7% by distillation, to +0.0% by dropping the adapter" in line
    rows = {r[0]: r for r in contrast_rows(metrics)}
    assert rows[BARE][1:3] == ["0 (reference)", "25.0%"]
    assert rows[label("dp")][1:] == ["+1.2%", "30.0% (+5.0 pts)", "+0.4%", "7.60 / 8", "6 (5)",
                                     "+2.1% → +0.7% (2/2 kept)"]  # fmt: skip
    assert rows[label("non-dp")][4] == "∞ (no noise)"
    assert rows[label("drop")][6] == "+2.1% → +0.0% (dropped)"

    served = _metrics(dp=_arm(0.0119, 0.30), dp_and_memory=_arm(0.044, 0.62))
    line = conclusion(served)
    assert ("served with personal memory as by default, the DP adapter's held-out loss is 4.4% "
            "below the bare base's and slot accuracy 62.0%") in line  # fmt: skip
    assert label("dp+memory") in [r[0] for r in contrast_rows(served)]

    worse = _metrics(non_dp=_arm(-0.0004, 0.25), dp=_arm(-0.003, 0.20))
    line = conclusion(worse)
    assert "the held-out loss is 0.3% above the bare base's, without DP level with" in line
    assert "keeps" not in line and "slot accuracy fell (25.0% bare, 20.0% with DP;" in line
    assert "OS update" not in line  # no drop arm to contrast with


def test_heavy_users_are_recruited_from_the_same_population():
    heavy = SimConfig(users=3, min_rate=HEAVY_RATE).user_indices()
    assert heavy == sorted(heavy) and len(heavy) == 3
    assert all(User.draw(0, i).rate >= HEAVY_RATE for i in heavy)
    skipped = set(range(heavy[-1])) - set(heavy)
    assert all(User.draw(0, i).rate < HEAVY_RATE for i in skipped)
    assert SimConfig(users=3).user_indices() == [0, 1, 2]
    with pytest.raises(ConfigError, match="min_rate"):
        SimConfig(min_rate=-1.0)
