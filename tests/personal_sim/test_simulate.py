"""`personal simulate`: the population, the local and Ray backends, the report and the CLI."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

from personal.cli.simulate import register
from personal.errors import ConfigError

import click
import pytest
from click.testing import CliRunner

from personal_sim.population import HEAVY_RATE, Population, User
from personal_sim.runner import (
    ARMS,
    SEEDED_NOISE_NOTE,
    SimConfig,
    comparable,
    default_policy,
    simulate,
)

# Tiny rounds: the point is the plumbing, not the numbers.
TINY = default_policy().with_overrides(
    {"training.steps": 2, "training.min_new_units": 4, "migration.distill_steps": 2}
)
TINY_RUN = {"users": 2, "days": 3, "update_day": 2, "seed": 0, "held_out": 8, "public_eval": 8}


def _cli() -> click.Group:
    @click.group()
    def group() -> None:
        pass

    register(group)
    return group


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A 2-user, 3-day run end to end through the CLI (local backend, 2 workers).

    With a small --public-data file (10 gate examples, 30 migration prompts): the corpus's 128
    and 64 took half of each user's time. The corpus in rounds, migration and measures is run
    by tests/personal_sim/test_memory_arms.py and test_demo.py."""
    tmp = tmp_path_factory.mktemp("simulate")
    policy = tmp / "tiny.toml"
    policy.write_text(TINY.to_toml())
    public = tmp / "public.jsonl"
    public.write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}) + "\n"
        for i in range(40)
    ))  # fmt: skip
    out = tmp / "out"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items()]
    args = ["simulate", "--policy", str(policy), "--out", str(out), "--workers", "2",
            "--public-data", str(public), "--no-progress", *options]  # fmt: skip
    started = time.perf_counter()
    result = CliRunner().invoke(_cli(), args, catch_exceptions=False)
    return result, out, time.perf_counter() - started


def test_end_to_end_run_writes_the_report(cli_run):
    result, out, _ = cli_run
    assert result.exit_code == 0, result.output
    assert "final gain" in result.output and f"report: {out / 'report.html'}" in result.output
    assert "NOT differentially private" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeded_noise"] is True and metrics["privacy_note"] == SEEDED_NOISE_NOTE
    assert metrics["config"]["arms"] == ["dp"] and metrics["runtime"]["backend"] == "local"
    assert metrics["config"]["public_data"] == str(out.parent / "public.jsonl")
    assert [u["user"] for u in metrics["users"]] == [0, 1]
    for user in metrics["users"]:
        arm = user["arms"]["dp"]
        assert [d["day"] for d in arm["days"]] == [0, 1, 2]
        assert [d["base"] for d in arm["days"]] == ["base-v1", "base-v1", "base-v2"]
        for day in arm["days"]:
            assert 0 <= day["epsilon"] <= day["epsilon_budget"] == 8.0
            assert 0 <= day["personal_accuracy"] <= 1 and math.isfinite(day["personal_gain"])
            assert math.isfinite(day["general_drift"])
        last = arm["days"][-1]  # slot accuracy: served and bare base, on the last day only
        assert "slot_accuracy" not in arm["days"][0]
        if last["slot_requests"]:
            assert 0 <= last["slot_accuracy"] <= 1 and 0 <= last["bare_slot_accuracy"] <= 1
        migration = arm["migration"]
        assert migration["day"] == 2 and migration["strategy"] == "distill"
        assert migration["epsilon_charged"] == 0.0 and not migration["charged"]
        rounds = [d["round"] for d in arm["days"] if d["round"] and d["round"]["ran"]]
        assert rounds, "every user should train at least once"
        for r in rounds:
            assert r["seconds"] > 0 and r["peak_memory_bytes"] > 0
            assert isinstance(r["gate"]["passed"], bool) and r["gate"]["reasons"]
            # The step guard's record: 1.0 exactly when it undid nothing.
            assert 0 < r["step_scale"] <= 1.0
            assert (r["guard_rejections"] == 0) == (r["step_scale"] == 1.0)
    summary = metrics["summary"]["dp"]
    assert len(summary["gain_by_day"]) == 3 and summary["rounds"] >= 2
    assert 0 <= summary["guarded"] <= summary["rounds"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Not private" in html
    assert all((out / f"{name}.png").stat().st_size > 1000 for name in
               ("personal_gain", "general_drift", "epsilon", "os_update"))  # fmt: skip


# A Ray cluster started and a user simulated again: ~30 s on 2 shared cores (the slowest test).
# Fast coverage: the same run_user through the local backend (test_end_to_end_run_writes_the_
# report) and run_ray's driver on a stand-in Ray (test_ray_backend_runs_every_user_as_a_task).
@pytest.mark.slow
def test_ray_backend_matches_the_local_backend(cli_run, tmp_path):
    """User 0 on a local Ray cluster gives the local backend's metrics for the same seed."""
    pytest.importorskip("ray")
    local = json.loads((cli_run[1] / "metrics.json").read_text())
    public = local["config"]["public_data"]
    config = SimConfig(**{**TINY_RUN, "users": 1}, policy=TINY.to_dict(), public_data=public)
    ray_metrics = json.loads(json.dumps(simulate(config, backend="ray", workers=1)))
    assert ray_metrics["runtime"]["backend"] == "ray"
    _assert_close(comparable(ray_metrics["users"][0]), comparable(local["users"][0]))


class _StandInRay:
    """What run_ray uses of Ray, run in this process: tasks are calls, refs their results."""

    def __init__(self, initialized: bool = False) -> None:
        self.initialized, self.calls, self.results = initialized, [], []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **options) -> None:
        self.calls.append(("init", options))
        self.initialized = True

    def shutdown(self) -> None:
        self.calls.append(("shutdown", {}))
        self.initialized = False

    def remote(self, num_cpus: int):
        self.calls.append(("remote", {"num_cpus": num_cpus}))
        return lambda fn: SimpleNamespace(remote=lambda *args: self._submit(fn(*args)))

    def _submit(self, result) -> int:
        self.results.append(result)
        return len(self.results) - 1  # the "object ref"

    def wait(self, refs, num_returns: int, timeout: float):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref: int):
        return self.results[ref]


@pytest.mark.parametrize("joined", [False, True])
def test_ray_backend_runs_every_user_as_a_task(monkeypatch, joined):
    """run_ray's driver: every user one task (heaviest first), results by user, and only a
    cluster it started is shut down (the real cluster: the slow test above)."""
    from personal_sim import backends

    ray = _StandInRay(initialized=joined)
    ran = []
    monkeypatch.setattr(backends, "_import_ray", lambda: ray)
    monkeypatch.setattr(backends, "_ray_user", lambda _, i, queue: ran.append(i) or {"user": i})
    config = SimConfig(users=4, seed=0)
    assert backends.run_ray(config, workers=2) == [{"user": i} for i in range(4)]
    assert ran == backends._order(config) and sorted(ran) == [0, 1, 2, 3]
    names = [name for name, _ in ray.calls]
    if joined:
        assert names == ["remote"] and ray.initialized  # a joined cluster is left running
    else:
        assert names == ["init", "remote", "shutdown"] and not ray.initialized
        options = ray.calls[0][1]
        assert options["num_cpus"] == 2
        assert options["runtime_env"] == {"env_vars": backends.WORKER_ENV}
    assert ray.calls[names.index("remote")][1] == {"num_cpus": 1}


def _assert_close(a, b, path="metrics"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_population_is_reproducible():
    a, b = Population.draw(5, seed=3), Population.draw(5, seed=3)
    assert a == b
    assert [u.day(1, 4) for u in a.users] == [u.day(1, 4) for u in b.users]
    other = Population.draw(5, seed=4)
    assert other.rates != a.rates
    assert [u.day(1, 4) for u in other.users] != [u.day(1, 4) for u in a.users]
    # User i does not depend on how many users are drawn.
    assert Population.draw(2, seed=3).users == a.users[:2]


def test_population_is_heavy_tailed_and_drifts():
    users = Population.draw(200, seed=0).users
    heavy = [u for u in users if u.kind == "heavy"]
    assert 0 < len(heavy) < len(users) / 4  # few heavy users, most light
    assert sorted(u.rate for u in users)[100] < HEAVY_RATE
    user = users[0]
    start, end = user.persona_at(0.0), user.persona_at(1.0)
    assert start.intent_boost != end.intent_boost
    assert start.boost["artist"] != end.boost["artist"]
    assert start.contact_for == end.contact_for  # who "mom" is does not drift


def test_held_out_examples_can_exclude_what_was_logged():
    user = User.draw(0, 4)
    logged = user.logged_pairs(3)
    held = user.held_out(1, 3, 32, exclude=logged)
    assert len(held) == 32
    assert not {(it.prompt, it.response) for it in held} & logged
    assert user.held_out(1, 3, 32) == user.held_out(1, 3, 32)  # its own seed stream
    timestamps = [ts for ts, _ in user.day(2, 3)]
    assert timestamps == sorted(timestamps) and all(ts.day == 4 for ts in timestamps)


def test_invalid_configurations_are_refused():
    with pytest.raises(ConfigError, match="arms"):
        SimConfig(arms=("nope",))
    with pytest.raises(ConfigError, match="update_day"):
        SimConfig(update_day=0)
    with pytest.raises(ConfigError, match="backend"):
        simulate(SimConfig(), backend="spark")
    from personal_sim.scenario import (
        ABLATION_ARMS,
        CANDIDATE_ARMS,
        COMPARE_ARMS,
        MEMORY_CONTEXT_ARMS,
    )

    assert set(COMPARE_ARMS) == {"dp", "non-dp", "no-replay-ewc", "drop", "memory", "dp+memory"}
    assert set(ARMS) == {*COMPARE_ARMS, *ABLATION_ARMS, *CANDIDATE_ARMS, *MEMORY_CONTEXT_ARMS}


def test_ray_missing_gives_an_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    result = CliRunner().invoke(_cli(), ["simulate", "--backend", "ray", "--users", "1",
                                         "--out", "unused", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    assert "pip install 'personal[ray]'" in result.output


def test_comparable_drops_machine_measurements():
    metrics = {"runtime": {"seconds": 1}, "users": [{"seconds": 2, "x": [{"wall_seconds": 3,
               "peak_memory_bytes": 4, "y": 5}]}]}  # fmt: skip
    assert comparable(metrics) == {"users": [{"x": [{"y": 5}]}]}


def test_cli_help_lists_the_options():
    result = CliRunner().invoke(_cli(), ["simulate", "--help"])
    assert result.exit_code == 0
    for option in ("--users", "--days", "--update-day", "--policy", "--backend", "--workers",
                   "--seed", "--out", "--compare", "--address", "--min-rate"):  # fmt: skip
        assert option in result.output


def test_demo_runs_the_simulate_code():
    from personal.cli.simulate import run_simulation

    from personal_sim import demo

    assert demo.run_simulation is run_simulation
    assert Path(demo.__file__).name == "demo.py"
