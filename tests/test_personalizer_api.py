"""The app-facing API follows what developers expect (issue 21): a failed create leaves
nothing, log() takes import's ts forms and refuses empty exchanges, budget() summarises."""

from __future__ import annotations

from datetime import UTC, datetime

from personal.errors import InvalidInteraction, PersonalError
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import InteractionLog, RawKey

import pytest

KEY = RawKey(bytes(range(32)))


def test_a_failed_create_leaves_nothing_behind(tmp_path):
    with pytest.raises(PersonalError):
        Personalizer.open(tmp_path / "new", "no-such-base", None, KEY, create=True)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(PersonalError):
        Personalizer.open(existing, "no-such-base", None, KEY, create=True)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_log_takes_the_ts_forms_of_import_and_refuses_empty_exchanges(tmp_path, tiny_model_factory):
    policy = load_policy("research").with_overrides({"store.synchronous": "NORMAL"})
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        p.log("call Ana", "Calling Ana.", ts="2024-05-01T10:00:00Z")
        p.log("text Bo", "Sent.", ts=1714557600)
        for prompt, response in (("", ""), ("  ", "x"), ("x", "")):
            with pytest.raises(InvalidInteraction, match="empty"):
                p.log(prompt, response)
        budget = p.budget()
    with InteractionLog.open(tmp_path / "s", KEY) as log:
        stamps = [r.ts for r in log.iter_records()]
    assert stamps == [datetime(2024, 5, 1, 10, tzinfo=UTC)] * 2
    assert budget["units"] == 2 and budget["spent_max"] == 0.0
    assert budget["remaining_min"] == budget["lifetime_epsilon"] == 8.0
    # Two units at q = 1 over 10 steps would cost more than 8: the next round leaves them out.
    assert budget["excluded_next_round"] == 2 and budget["unit"] == "interaction"
    assert budget["filter"] == "renyi"


def test_the_plan_and_the_round_agree_on_sigma_and_q(tmp_path, tiny_model_factory):
    import warnings

    from personal.errors import SeededNoiseWarning

    policy = load_policy("research").with_overrides(
        {"store.synchronous": "NORMAL", "privacy.noise_multiplier": None,
         "privacy.round_epsilon": 2.0, "training.steps": 2, "gates.min_personal_gain": -1.0,
         "gates.max_general_regression": 1.0}
    )  # fmt: skip
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        for i in range(40):  # enough for a held-out set: the round draws from fewer units
            p.log(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} late.")
        plan = p.round_plan()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.update()
    assert report.noise_multiplier == plan.noise_multiplier
    assert report.sample_rate == pytest.approx(plan.sample_rate(report.candidates))


def test_a_gaussian_policy_calibrates_and_reports_with_its_filter(tmp_path, tiny_model_factory):
    """privacy.filter = "gaussian": round_epsilon calibrates σ exactly (σ = sqrt(steps)/μ, q
    ignored) and budget() names the filter the store is bound to."""
    from personal.privacy.gdp import mu_budget

    policy = load_policy("research").with_overrides(
        {"store.synchronous": "NORMAL", "privacy.noise_multiplier": None,
         "privacy.round_epsilon": 2.0, "training.steps": 2, "privacy.filter": "gaussian"}
    )  # fmt: skip
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        for i in range(12):
            p.log(f"text Ana that I'm {i} minutes late", f"Sent to Ana: {i} late.")
        plan = p.round_plan()
        budget = p.budget()
    assert plan.noise_multiplier == pytest.approx(2**0.5 / mu_budget(2.0, 1e-5), rel=1e-9)
    assert budget["filter"] == "gaussian" and budget["excluded_next_round"] == 0
