"""The simulator's personal-memory arms (issue 18): ``memory`` trains nothing and charges no ε,
``dp+memory`` serves the ``dp`` arm's adapters, and both are measured with what memory recalls
(a token cache by default, earlier turns in the ``-context`` arms)."""

from __future__ import annotations

import math

from personal.memory import CACHE_K
from personal.model.evaluate import evaluate
from personal.model.token_cache import evaluate_with_caches
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import RawKey

import pytest

from personal_sim.public_corpus import Interaction
from personal_sim.report import goal_lines, summary_table
from personal_sim.runner import SimConfig, summarize
from personal_sim.scenario import ARMS, COMPARE_ARMS, MEMORY_ARMS, default_policy
from personal_sim.slots import slot_accuracy
from personal_sim.user_task import _batches, _shared, run_user

TINY = default_policy().with_overrides(
    {"training.steps": 2, "training.min_new_units": 4, "migration.distill_steps": 2}
)
ARMS_RUN = ("dp", "memory", "dp+memory")


@pytest.fixture(scope="module")
def user():
    """User 0 (15 interactions a day) for 3 days, the OS update on day 2, in this process."""
    config = SimConfig(users=1, days=3, update_day=2, seed=0, held_out=16, public_eval=8,
                       policy=TINY.to_dict(), arms=ARMS_RUN)  # fmt: skip
    return config, run_user(config, 0)


def test_the_memory_arms_are_compared():
    assert set(MEMORY_ARMS) <= set(COMPARE_ARMS)
    assert ARMS["memory"].memory and not ARMS["memory"].train
    assert ARMS["dp+memory"].memory and ARMS["dp+memory"].training() == ARMS["dp"].training()
    assert ARMS["memory"].memory_mode == ARMS["dp+memory"].memory_mode == "cache"
    assert ARMS["memory-context"].memory_mode == "context" and not ARMS["memory-context"].train
    assert ARMS["dp+memory-context"].training() == ARMS["dp"].training()
    # dp and dp+memory share one store (the same rounds); memory has its own.
    groups = _shared([ARMS[a] for a in ARMS_RUN])
    assert [[a.name for a in g] for g in groups] == [["dp", "dp+memory"], ["memory"]]


def test_the_memory_arm_trains_nothing_and_charges_no_epsilon(user):
    _, result = user
    arm = result["arms"]["memory"]
    assert arm["memory"] and not arm["train"]
    for day in arm["days"]:
        assert day["round"] is None and day["active_version"] is None
        assert day["epsilon"] == 0.0
        assert math.isfinite(day["personal_gain"]) and 0 <= day["personal_accuracy"] <= 1
        assert 0 <= day["memory_share"] <= 1 and day["memory_turns"] <= CACHE_K
        assert day["general_drift"] == pytest.approx(0.0, abs=1e-6)  # the bare base's
    assert [d["base"] for d in arm["days"]] == ["base-v1", "base-v1", "base-v2"]
    migration = arm["migration"]
    assert migration["old_version"] is None and not migration["accepted"]
    assert migration["epsilon_charged"] == 0.0
    last = arm["days"][-1]
    assert {"slot_accuracy", "bare_slot_accuracy", "slot_requests", "slot_recall"} <= set(last)
    if last["slot_requests"]:
        assert 0 <= last["slot_accuracy"] <= 1 and 0 <= last["slot_recall"] <= 1


def test_memory_changes_the_scored_input_exactly_when_something_is_recalled(user):
    _, result = user
    days = result["arms"]["memory"]["days"]
    assert any(d["memory_share"] > 0 for d in days), "the log should share words with requests"
    for d in days:  # no adapter: memory is the only difference from the bare base
        if d["memory_share"] > 0:
            assert d["personal_loss"] != pytest.approx(d["bare_personal_loss"], rel=1e-6)
        else:
            assert d["personal_loss"] == pytest.approx(d["bare_personal_loss"], rel=1e-6)


def test_dp_plus_memory_serves_the_dp_rounds_with_memory(user):
    config, result = user
    dp, both = result["arms"]["dp"], result["arms"]["dp+memory"]
    assert "memory_share" not in dp["days"][0] and "slot_recall" not in dp["days"][-1]
    assert any(d["round"] and d["round"]["ran"] for d in dp["days"])
    for a, b in zip(dp["days"], both["days"], strict=True):
        assert a["round"] == b["round"] and a["active_version"] == b["active_version"]
        assert a["epsilon"] == b["epsilon"] and a["general_loss"] == b["general_loss"]
        assert a["bare_personal_loss"] == b["bare_personal_loss"]  # a memory-free reference
        if b["memory_share"] > 0:
            assert a["personal_loss"] != b["personal_loss"]
    assert dp["migration"]["new_version"] == both["migration"]["new_version"]
    summary = summarize(config, [result])
    assert summary["memory"]["memory"] and not summary["memory"]["train"]
    assert summary["memory"]["epsilon_max"] == 0.0 and summary["memory"]["rounds"] == 0
    assert summary["dp+memory"]["rounds"] == summary["dp"]["rounds"]


def test_the_goal_lines_are_computed_from_the_numbers():
    def arm(gain: float, slots: float | None) -> dict:
        return {"final_gain": gain, "final_slot_accuracy": slots}

    metrics = {"summary": {"dp": arm(0.002, 0.2), "non-dp": arm(0.01, 0.25),
                           "memory": arm(0.05, 0.40), "dp+memory": arm(0.051, 0.41)}}  # fmt: skip
    slots, gain = goal_lines(metrics)
    assert slots.endswith("met: memory 40.0%, non-dp 25.0% (+15.00 pts)")
    assert "NOT" not in gain and "dp +0.2% (+4.90 pts), memory +5.0% (+0.10 pts)" in gain
    metrics["summary"]["dp+memory"] = arm(0.04, 0.3)
    metrics["summary"]["memory"] = arm(0.05, 0.2)
    slots, gain = goal_lines(metrics)
    assert "NOT met" in slots and "(-5.00 pts)" in slots
    assert "NOT met" in gain and "memory +5.0% (-1.00 pts)" in gain
    assert goal_lines({"summary": {"dp": arm(0.0, None)}}) == []


def test_the_summary_table_shows_the_memory_arms(user):
    config, result = user
    metrics = {"config": {"arms": list(config.arms)}, "users": [result],
               "summary": summarize(config, [result])}  # fmt: skip
    table = summary_table(metrics)
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert "— (no training)" in rows["memory"] and "0.00 / 8" in rows["memory"]
    assert "slot accuracy" in table.splitlines()[0]


def test_recalled_turns_go_into_the_scored_input_and_the_greedy_replies(tmp_path):
    """A logged "call my mom" is recalled for a held-out "call mom": the scored sequence holds
    it, the loss moves, and the slot's value is in the recalled turns."""
    policy = load_policy("default")
    held = Interaction("please call mom", "Calling Maria now.", "call", {"contact": "Maria"})
    with Personalizer.open(tmp_path / "s", "base-v1", policy, RawKey(bytes(32)), create=True,
                           memory=True) as p:  # fmt: skip
        p.log("call my mom", "Calling Maria (mom) now.")
        p.log("what's the weather", "Sunny.")
        turns, ids = p.memory_context(held.prompt)
        assert turns == [("call my mom", "Calling Maria (mom) now.")] and ids == [1]
        tokenizer, model = p.base.tokenizer, p.base.model
        plain = _batches(tokenizer, [held])
        recalled = _batches(tokenizer, [held], histories=[turns])
        text = tokenizer.decode(recalled[0].inputs[0].tolist())
        assert "call my mom" in text and text.index("call my mom") < text.index("please call mom")
        assert "call my mom" not in tokenizer.decode(plain[0].inputs[0].tolist())
        assert recalled[0].num_tokens == plain[0].num_tokens  # only the reply is scored
        assert evaluate(model, recalled).loss != evaluate(model, plain).loss
        with_memory = slot_accuracy(model, tokenizer, [held], histories=[turns])
        without = slot_accuracy(model, tokenizer, [held])
        assert with_memory["slot_requests"] == without["slot_requests"] == 1
        assert with_memory["slot_recall"] == 1.0 and "slot_recall" not in without
        with pytest.raises(ValueError, match="recalls for 1 requests"):
            slot_accuracy(model, tokenizer, [held], histories=[])


def test_a_recalled_reply_becomes_the_token_cache_of_the_scores_and_replies(tmp_path):
    """The default mode: the recalled "Calling Maria" is a token cache that lowers the held-out
    reply's loss, and the slot's value is in what it was built from."""
    held = Interaction("please call mom", "Calling Maria now.", "call", {"contact": "Maria"})
    with Personalizer.open(tmp_path / "s", "base-v1", load_policy("default"), RawKey(bytes(32)),
                           create=True, memory=True) as p:  # fmt: skip
        p.log("call my mom", "Calling Maria (mom) now.")
        p.log("what's the weather", "Sunny.")
        cache, ids = p.memory_cache(held.prompt)
        assert ids == [1] and cache is not None
        model, tokenizer = p.base.model, p.base.tokenizer
        exchange = [(held.prompt, held.response)]
        alone = evaluate_with_caches(model, tokenizer, exchange, [None])
        assert evaluate_with_caches(model, tokenizer, exchange, [cache]).loss < alone.loss
        with_memory = slot_accuracy(model, tokenizer, [held], caches=[cache])
        assert with_memory["slot_requests"] == 1 and with_memory["slot_recall"] == 1.0
        with pytest.raises(ValueError, match="not both"):
            slot_accuracy(model, tokenizer, [held], histories=[()], caches=[cache])
