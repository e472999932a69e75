"""A round survives ``erase --unit`` from another process: units whose records vanish are
dropped from the steps and the validation, nothing raises, their charges stand (issue 19,
item 10)."""

from __future__ import annotations

import warnings

from personal.errors import SeededNoiseWarning
from personal.personalizer import Personalizer
from personal.privacy.noise import GaussianNoise
from personal.store import InteractionLog, RawKey
from personal.training.gates import noised_gain
from personal.training.round import _unit_sequences

import numpy as np
import pytest
from round_policies import tiny_round_policy

KEY = RawKey(bytes(range(32)))


@pytest.mark.slow  # a real round (~15 s on 2 shared cores); the fast checks are below
def test_a_round_survives_the_erasure_of_every_unit_it_draws(tmp_path, tiny_model_factory):
    path = tmp_path / "s"
    policy = tiny_round_policy(**{"training.steps": 3, "gates.validation_noise_multiplier": 2.0})
    with Personalizer.open(path, tiny_model_factory(), policy, KEY, create=True) as p:
        for i in range(40):
            p.log(f"navigate to the office number {i}", f"Starting directions to office {i}.")
        erased: list[int] = []

        def erase_everything(step: int, _report: object) -> None:
            if step == 0:  # another process erases every unit during the round
                with InteractionLog.open(path, KEY) as other:
                    erased.append(other.erase(other.units()).records)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = p.update(
                progress=erase_everything, noise=GaussianNoise(seed=1), sampler_seed=2
            )
        assert erased == [40] and len(p.interactions) == 0
        assert report.status == "completed" and len(report.train_loss) == 3
        gates = report.gates  # the erased held-out units count as no gain
        assert gates["held_out_units"] >= 1 and gates["personal_gain"] is not None, gates
        rounds = p.ledger.rounds()
        assert {r.purpose for r in rounds} == {"training", "validation"}
        assert all(r.status == "completed" for r in rounds)  # charged, and closed truly
        assert p.ledger.verify().ok


class _Log:
    """A log whose records of unit ``gone`` were erased."""

    def iter_records(self, units):
        from types import SimpleNamespace

        for i, unit in enumerate(units):
            if unit != "gone":
                yield SimpleNamespace(unit=unit, ts=i, id=i, prompt="p", response="r")


class _Tokenizer:
    pass


def test_units_erased_during_a_round_are_dropped_from_its_steps(monkeypatch) -> None:
    from personal.training import round as round_module

    monkeypatch.setattr(round_module, "encode_interaction", lambda tok, p, r: ([1, 2, 3], 1))
    units, sequences, _ = _unit_sequences(_Log(), _Tokenizer(), ["a", "gone", "b"], 2)
    assert units == ["a", "b"] and sequences == [[[1, 2, 3]], [[1, 2, 3]]]
    assert _unit_sequences(_Log(), _Tokenizer(), ["gone"], 2) == ([], [], [])


def test_an_erased_held_out_unit_counts_as_no_gain() -> None:
    before, after = np.array([2.0, 2.0]), np.array([1.0, np.nan])
    zero = type("Zero", (), {"sample": lambda self, n, sigma: np.zeros(n)})()
    assert noised_gain(before, after, 1.0, zero) == 0.25  # (0.5 + 0) / 2
