"""The audit a privacy reviewer verifies on their own (issue 21): per-unit rounds, round outcomes,
compliance by purpose under every bundled policy, --policy against a stricter one."""

from __future__ import annotations

import json
import warnings

from personal.cli import cli
from personal.errors import SeededNoiseWarning
from personal.personalizer import Personalizer
from personal.policy import Policy, load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import Passphrase

import pytest
from click.testing import CliRunner
from round_policies import TINY_PUBLIC

PASS = "correct horse battery staple"


def _train(path, base, policy: Policy, n: int = 40, rounds: int = 1) -> None:
    """Rounds on the public data passed in (TINY_PUBLIC: the audit does not depend on it)."""
    key = Passphrase(PASS)
    with Personalizer.open(path, base, policy, key, create=True, public_data=TINY_PUBLIC) as p:
        for r in range(rounds):
            for i in range(n):
                p.log(f"text Ana that I'm {r * n + i} minutes late", f"Sent to Ana: {i} late.")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SeededNoiseWarning)
                p.update(noise=GaussianNoise(seed=r), sampler_seed=r)


def _audit(path, *args: str) -> tuple[int, dict]:
    result = CliRunner(env={"PERSONAL_PASSPHRASE": PASS}).invoke(
        cli, ["audit", str(path), "--json", *args], catch_exceptions=False
    )
    return result.exit_code, json.loads(result.output)


def _simulator_policy() -> Policy:
    from personal_sim.scenario import default_policy

    return default_policy()


POLICIES = {
    "default": lambda: load_policy("default"),
    "strict": lambda: load_policy("strict"),
    "research": lambda: load_policy("research"),
    "simulator": _simulator_policy,
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[] if n == "simulator" else [pytest.mark.slow])
        for n in sorted(POLICIES)
    ],
)
def test_a_store_trained_under_each_policy_passes_its_audit(name, tmp_path, tiny_model_factory):
    policy = POLICIES[name]().with_overrides({"store.synchronous": "NORMAL"})
    n = max(40, policy.training.min_new_units)  # enough for the trigger and a held-out set
    _train(tmp_path / "s", tiny_model_factory(), policy, n=n)
    code, data = _audit(tmp_path / "s")
    assert code == 0, [c for c in data["compliance"] if not c["ok"]]
    assert data["ok"] and data["policy"] == policy.name
    assert data["policy_digest"] == policy.digest()
    assert data["store_id"] and data["base_fingerprint"] and data["report_time"]
    purposes = {r["purpose"] for r in data["rounds"]}
    assert "training" in purposes  # and, with a held-out set drawn (CSPRNG), "validation"
    checks = {c["name"]: c for c in data["compliance"]}
    assert checks["rounds_follow_policy"]["ok"]
    for r in data["rounds"]:
        assert r["policy_digest"] == policy.digest()
        if r["purpose"] == "training":
            assert r["gate"] in ("passed", "refused")
            assert r["status"] == ("completed" if r["gate"] == "passed" else "refused")
            assert (r["adapter_produced"] is not None) == (r["gate"] == "passed")
            if r.get("validation_round"):
                assert r["validation_round"] in {x["round_id"] for x in data["rounds"]}


def test_unit_detail_lists_the_rounds_that_charged_each_unit(tmp_path, tiny_model_factory):
    policy = load_policy("research").with_overrides(
        {"store.synchronous": "NORMAL", "training.steps": 2, "gates.min_personal_gain": -1.0,
         "gates.max_general_regression": 1.0, "continual.replay_share": 0.0}
    )  # fmt: skip
    _train(tmp_path / "s", tiny_model_factory(), policy, n=24, rounds=2)
    code, data = _audit(tmp_path / "s")
    assert code == 0
    detail = data["units"]["detail"]
    assert len(detail) == data["units"]["count"] == 48
    by_id = {r["round_id"]: r for r in data["rounds"]}
    seen_rounds = set()
    for d in detail:
        assert d["unit"].startswith("u") and "Ana" not in d["unit"]
        assert d["rounds"] and set(d["rounds"]) <= set(by_id)
        seen_rounds.update(d["rounds"])
    # Every charged round charged some unit; no unit is charged by every round.
    assert seen_rounds == {r["round_id"] for r in data["rounds"] if r["steps"] > 0}
    assert all(len(d["rounds"]) < len(seen_rounds) for d in detail)
    assert data["units"]["epsilon_max"] == pytest.approx(max(d["epsilon"] for d in detail), 1e-3)
    assert "group privacy" in data["group_privacy"] and "k·ε" in data["group_privacy"]


def test_policy_option_fails_a_store_that_exceeds_that_policy(tmp_path, tiny_model_factory):
    policy = load_policy("default").with_overrides({"store.synchronous": "NORMAL"})
    _train(tmp_path / "s", tiny_model_factory(), policy, n=max(40, policy.training.min_new_units))
    assert _audit(tmp_path / "s")[0] == 0
    code, data = _audit(tmp_path / "s", "--policy", "strict")
    assert code == 1 and not data["ok"]
    failed = {c["name"] for c in data["compliance"] if not c["ok"]}
    assert {"units_within_policy_budget", "rounds_follow_policy"} <= failed
    assert data["policy"] == "strict"


def _doc_block(title: str) -> str:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "privacy.md").read_text("utf-8")
    section = doc[doc.index(title) :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_reviewers_recomposition_in_privacy_md_runs(tmp_path, tiny_model_factory):
    import os
    import sys
    from pathlib import Path

    policy = load_policy("research").with_overrides(
        {"store.synchronous": "NORMAL", "training.steps": 2, "gates.min_personal_gain": -1.0,
         "gates.max_general_regression": 1.0}
    )  # fmt: skip
    _train(tmp_path / "s", tiny_model_factory(), policy, n=24, rounds=2)
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PERSONAL_PASSPHRASE": PASS,
        "PATH": bindir + os.pathsep + os.environ["PATH"],
    }
    namespace = {"STORE": str(tmp_path / "s"), "ENV": env}
    exec(compile(_doc_block("### Recomposing a unit's ε"), "privacy.md", "exec"), namespace)
