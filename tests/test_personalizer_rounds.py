"""Personalizer rounds: gates, held-out validation charges, the round lock, SIGKILL safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

from personal.errors import BudgetExhausted, RoundInProgress, SeededNoiseWarning
from personal.model.lora import get_adapter_weights
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey
from personal.training.lock import round_lock

import numpy as np
import pytest

KEY = RawKey(bytes(range(32)))
OVERRIDES = {
    "privacy.lifetime_epsilon": 8.0,
    "privacy.noise_multiplier": 3.0,
    "training.min_new_units": 1,
    "training.steps": 2,
    "training.expected_batch_size": 4.0,
    "training.max_tokens": 24,
    "training.lora.rank": 2,
    "store.synchronous": "NORMAL",
}


def _policy(**gates):
    return load_policy("research").with_overrides({**OVERRIDES, **gates})


def _fill(p: Personalizer, n: int) -> None:
    for i in range(n):
        p.log(f"navigate to the office number {i}", f"Starting directions to office {i}.")


def _update(p: Personalizer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return p.update(noise=GaussianNoise(seed=1), sampler_seed=2)


def test_held_out_units_are_charged_for_the_personal_metric(tmp_path, tiny_model_factory):
    policy = _policy(**{
        "gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0,
        "gates.validation_noise_multiplier": 2.0,
    })  # fmt: skip
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        _fill(p, 40)
        report = _update(p)
        gates = report.gates
        assert gates["passed"] and gates["held_out_units"] >= 1, gates["reasons"]
        assert gates["personal_gain"] is not None and np.isfinite(gates["personal_gain"])
        rounds = p.ledger.rounds(with_units=True)
        validation = next(r for r in rounds if r.purpose == "validation")
        training = next(r for r in rounds if r.purpose == "training")
        assert validation.status == "completed" and validation.noise_multiplier == 2.0
        # Held-out units were not trained on in this round, and the two sets cover all units.
        assert not set(validation.units) & set(training.units)
        assert len(validation.units) + len(training.units) == 40
        assert report.candidates == 40 - len(validation.units)
        assert p.ledger.verify().ok


def test_with_the_personal_check_off_every_unit_trains_and_nothing_is_validated(
    tmp_path, tiny_model_factory
):
    policy = _policy(**{"gates.max_general_regression": 1.0, "gates.personal_check": "off"})
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        _fill(p, 40)
        report = _update(p)
        gates = report.gates
        assert gates["held_out_units"] == 0 and gates["personal_gain"] is None
        assert any('personal_check = "off"' in r for r in gates["reasons"]), gates["reasons"]
        rounds = p.ledger.rounds(with_units=True)
        assert [r.purpose for r in rounds] == ["training"]  # no validation round, no charge
        assert len(rounds[0].units) == 40 and report.candidates == 40
        assert p.ledger.verify().ok


def test_a_round_that_cannot_train_charges_no_validation_first(tmp_path, tiny_model_factory):
    """The held-out validation is charged before training and never refunded, so a round whose
    training charge fits no unit must fail before it opens the validation (ledger untouched)."""
    policy = _policy(**{
        "privacy.lifetime_epsilon": 1.0, "privacy.noise_multiplier": 0.5,  # a round costs > 1
        "gates.validation_noise_multiplier": 50.0,  # the validation alone would fit
    })  # fmt: skip
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        _fill(p, 40)
        with pytest.raises(BudgetExhausted, match="nothing was charged"):
            _update(p)
        assert p.ledger.rounds() == []
        assert set(p.ledger.epsilons().values()) <= {0.0}
        assert p.ledger.verify().ok


def _two_rounds(tmp_path, factory, reference: str) -> tuple[dict, dict, float]:
    """Two passing rounds under ``gates.general_reference = reference``: their gate reports
    and the runner's bare-base reference afterwards."""
    policy = _policy(**{
        "gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0,
        "gates.general_reference": reference,
    })  # fmt: skip
    with Personalizer.open(tmp_path / "s", factory(), policy, KEY, create=True) as p:
        _fill(p, 8)
        first = _update(p).gates
        p.log("navigate home", "Starting directions home.")
        second = _update(p).gates
        return first, second, p.rounds.bare_general_loss()


@pytest.mark.parametrize("reference", ["active", "base"])
def test_general_regression_is_measured_against_the_chosen_reference(
    tmp_path, tiny_model_factory, reference
):
    first, second, _ = _two_rounds(tmp_path, tiny_model_factory, reference)
    assert first["passed"] and second["passed"]
    bare_base = first["general_loss_before"]  # before round 1 the active model is the base
    if reference == "base":
        assert second["general_loss_before"] == pytest.approx(bare_base, rel=1e-6)
        assert "vs the bare base" in second["reasons"][0]
    else:
        assert second["general_loss_before"] == pytest.approx(first["general_loss_after"], 1e-6)
        assert second["general_loss_before"] != pytest.approx(bare_base, rel=1e-6)
        assert "vs the active adapter" in second["reasons"][0]


def test_the_bare_base_reference_is_measured_once_per_base(
    tmp_path, tiny_model_factory, monkeypatch
):
    """The base is frozen and the gate's public batches are fixed: one probe of the bare base
    serves every round's reference; each round still measures its own adapter."""
    from personal.training import runner

    calls = []
    real = runner.general_loss
    monkeypatch.setattr(runner, "general_loss", lambda *a: calls.append(1) or real(*a))
    first, second, bare = _two_rounds(tmp_path, tiny_model_factory, "base")
    assert bare == first["general_loss_before"]
    assert second["general_loss_before"] == first["general_loss_before"]
    assert len(calls) == 1 + 2  # the bare base once, each round's adapter once


def test_a_failing_gate_keeps_the_previous_adapter(tmp_path, tiny_model_factory):
    strict = _policy(**{
        "gates.max_general_regression": 0.0, "gates.min_personal_gain": 1.0,
        "gates.validation_noise_multiplier": 2.0,
    })  # fmt: skip
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), strict, KEY, create=True) as p:
        _fill(p, 40)
        before = {k: np.array(v) for k, v in get_adapter_weights(p.base.model).items()}
        report = _update(p)
        assert not report.gates["passed"] and report.adapter_version is None
        assert p.active_adapter is None and p.registry.versions() == []
        live = get_adapter_weights(p.base.model)
        assert all(np.array_equal(before[k], np.array(live[k])) for k in before)
        # Both rounds stay charged although nothing was activated.
        assert sorted(r.purpose for r in p.ledger.rounds()) == ["training", "validation"]
        assert all(r.status == "completed" for r in p.ledger.rounds())


def test_one_round_at_a_time_per_store(tmp_path, tiny_model_factory):
    policy = _policy(**{"gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0})
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        _fill(p, 4)
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(tmp_path / "s")], stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout.readline().strip() == b"locked"
            with pytest.raises(RoundInProgress):
                p.update()
            assert p.ledger.rounds() == []
        finally:
            holder.kill()
            holder.wait()
        assert _update(p).status == "completed"  # the dead holder released the lock


_HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from personal.training.lock import round_lock
    with round_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)

_CHILD = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    from personal.personalizer import Personalizer
    from personal.policy import load_policy
    from personal.store import RawKey
    overrides = {overrides!r}
    policy = load_policy("research").with_overrides(overrides)
    with Personalizer.open(sys.argv[1], sys.argv[2], policy, RawKey(bytes(range(32)))) as p:
        print("open", flush=True)
        while True:
            p.log("drive me home", "Starting directions home.")  # a new unit each round
            p.update()
            print("round", flush=True)
    """
)


@pytest.mark.parametrize("kills", [2])
def test_sigkill_during_rounds_leaves_a_consistent_store(tmp_path, tiny_model_factory, kills):
    _sigkill_rounds(tmp_path, tiny_model_factory(), kills)


@pytest.mark.slow
def test_sigkill_during_rounds_many_times(tmp_path, tiny_model_factory):
    _sigkill_rounds(tmp_path, tiny_model_factory(), 12)


def _sigkill_rounds(tmp_path: Path, base: Path, kills: int) -> None:
    overrides = {
        **OVERRIDES, "training.steps": 6, "privacy.lifetime_epsilon": 100.0,
        "gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0,
    }  # fmt: skip
    policy = load_policy("research").with_overrides(overrides)
    store = tmp_path / "s"
    with Personalizer.open(store, base, policy, KEY, create=True) as p:
        _fill(p, 8)
    rng = np.random.default_rng(0)
    script = _CHILD.format(overrides=overrides)
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(store), str(base)],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert child.stdout.readline().strip() == b"open"
        time.sleep(float(rng.uniform(0.05, 1.5)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        with Personalizer.open(store, base, None, KEY) as p:
            assert p.ledger.verify().ok
            assert p.registry.verify().ok
            active = p.active_adapter
            if active is not None:  # the live model serves exactly the active version
                weights, _ = p.registry.load(active.version)
                live = get_adapter_weights(p.base.model)
                assert all(np.array_equal(np.array(weights[k]), np.array(live[k])) for k in live)
            interrupted = [r for r in p.ledger.rounds() if r.status == "charged"]
            assert len(interrupted) <= 2  # at most the round (and its validation) in flight
        with round_lock(store):  # a killed round never leaves the store locked
            pass


def test_a_round_on_too_few_new_units_does_not_run_and_charges_nothing(
    tmp_path, tiny_model_factory
):
    from personal.errors import NoEligibleUnits, TooFewNewUnits

    policy = _policy(**{"training.min_new_units": 5})
    with Personalizer.open(tmp_path / "s", tiny_model_factory(), policy, KEY, create=True) as p:
        _fill(p, 4)
        with pytest.raises(TooFewNewUnits, match="min_new_units = 5") as info:
            _update(p)
        assert isinstance(info.value, NoEligibleUnits)  # callers that skip those skip this
        assert p.ledger.epsilons() == {} or max(p.ledger.epsilons().values()) == 0.0
        assert p.active_adapter is None
        _fill(p, 1)
        report = _update(p)  # five new units: it runs
        assert report.status == "completed"


@pytest.mark.slow
def test_the_default_policy_helps_one_realistic_user(tmp_path: Path) -> None:
    """Issue 17, item 1: 300 interactions of one simulated user (messages, reminders, music,
    weather), one `default` round on base-v1: an adapter is activated, its loss on the user's
    next requests is below the bare base's, and general drift stays within 1 % (about 40 s)."""
    import dataclasses

    from personal.model.batching import make_batch
    from personal.model.evaluate import evaluate
    from personal.model.lora import lora_off
    from personal.model.tokenizer import encode_interaction

    from personal_sim.population import User

    user = dataclasses.replace(User.draw(7, 0), rate=30.0)
    logged: list[tuple[str, str, object]] = []
    day = 0
    while len(logged) < 300:
        logged += [(it.prompt, it.response, ts) for ts, it in user.day(day, 30)]
        day += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        with Personalizer.open(tmp_path / "s", "base-v1", "default", KEY, create=True) as p:
            for prompt, response, ts in logged[:300]:
                p.log(prompt, response, ts=ts)
            report = p.update(noise=GaussianNoise(seed=3), sampler_seed=3)
            encoded = [encode_interaction(p.base.tokenizer, it.prompt, it.response)
                       for it in user.held_out(day, 30, 64)]  # fmt: skip
            batch = [make_batch([ids for ids, _ in encoded], [start for _, start in encoded])]
            served = evaluate(p.base.model, batch).loss
            with lora_off(p.base.model):
                bare = evaluate(p.base.model, batch).loss
    gates = report.gates
    assert gates is not None and gates["passed"], gates
    assert report.adapter_version == 1
    assert served < bare, (served, bare)
    assert gates["general_regression"] <= 0.01
