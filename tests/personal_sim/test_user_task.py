"""One user's simulation task: the general-loss probe is computed once per served adapter."""

from __future__ import annotations

from typing import Any

import pytest

from personal_sim import user_task
from personal_sim.runner import SimConfig
from personal_sim.scenario import default_policy
from personal_sim.user_task import run_user

TINY = default_policy().with_overrides(
    {"training.steps": 2, "training.min_new_units": 4, "migration.distill_steps": 2}
)
# No OS update (update_day == days): four days on one base, a round a day at most.
CONFIG = SimConfig(users=1, days=4, update_day=4, seed=0, held_out=8, public_eval=8,
                   policy=TINY.to_dict(), arms=("dp",))  # fmt: skip


def _run(monkeypatch: pytest.MonkeyPatch, cached: bool) -> tuple[dict[str, Any], int]:
    calls = []
    real = user_task.general_loss

    def counting(model: Any, batches: Any) -> float:
        calls.append(1)
        return real(model, batches)

    monkeypatch.setattr(user_task, "general_loss", counting)
    if not cached:  # the probe on every measurement, as before the cache
        monkeypatch.setattr(
            user_task._UserRun,
            "served_general",
            lambda self, p, name: counting(p.base.model, user_task._public(p.base, name, CONFIG)),
        )
    user_task._BARE.clear()  # bare bases load afresh: no state shared between the two runs
    return run_user(CONFIG, 0), len(calls)


def test_the_probe_runs_once_per_served_adapter_and_changes_no_metric(monkeypatch):
    cached, cached_calls = _run(monkeypatch, cached=True)
    with monkeypatch.context() as patch:
        fresh, fresh_calls = _run(patch, cached=False)
    days = cached["arms"]["dp"]["days"]
    for ours, theirs in zip(days, fresh["arms"]["dp"]["days"], strict=True):
        assert ours["general_loss"] == theirs["general_loss"]
        assert ours["bare_general_loss"] == theirs["bare_general_loss"]
    served = {(day["base"], day["active_version"]) for day in days}
    assert cached_calls == len(served) + 1  # each served adapter once, the bare base once
    assert fresh_calls == len(days) + 1


def test_arms_that_part_at_the_update_share_the_days_before_it(monkeypatch):
    """``dp`` and ``drop`` train once until the OS update, then each goes on from a copy of the
    store: every day measures as in a run of ``drop`` alone (the same seeds, the same rounds)."""
    import dataclasses

    config = dataclasses.replace(CONFIG, days=4, update_day=2, arms=("dp", "drop"))
    opened: list[Any] = []
    real_open = user_task.Personalizer.open

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(kwargs.get("create"))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(user_task.Personalizer, "open", counting)
    both = run_user(config, 0)
    assert opened == [True, False, False]  # one store, copied once per strategy at the update
    alone = run_user(dataclasses.replace(config, arms=("drop",)), 0)
    shared, solo = both["arms"]["drop"], alone["arms"]["drop"]
    assert solo["policy_digest"] == shared["policy_digest"] != both["arms"]["dp"]["policy_digest"]
    assert shared["migration"]["strategy"] == "drop" == solo["migration"]["strategy"]
    assert both["arms"]["dp"]["migration"]["strategy"] == "distill"
    for ours, theirs in zip(shared["days"], solo["days"], strict=True):
        assert ours["round"] is None or ours["round"]["ran"] == theirs["round"]["ran"]
        assert ours["personal_loss"] == pytest.approx(theirs["personal_loss"], rel=1e-5)
        assert ours["epsilon"] == pytest.approx(theirs["epsilon"])
    pre = config.update_day
    for ours, theirs in zip(shared["days"][:pre], both["arms"]["dp"]["days"][:pre], strict=True):
        assert ours["personal_loss"] == theirs["personal_loss"]
