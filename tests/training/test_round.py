"""One DP round end to end on a real encrypted store, a real ledger and a tiny model."""

from __future__ import annotations

import warnings

from personal.errors import (
    BudgetExhausted,
    ConfigError,
    NoEligibleUnits,
    SamplerMismatch,
    SeededNoiseWarning,
)
from personal.model.base import load_base
from personal.model.lora import LoRAConfig, get_adapter_weights, inject_lora
from personal.privacy.ledger import Ledger
from personal.privacy.noise import GaussianNoise
from personal.privacy.sampler import PoissonSampler
from personal.store import InteractionLog, RawKey
from personal.training.round import RoundPlan, run_round

import mlx.core as mx
import numpy as np
import pytest

KEY = RawKey(bytes(range(32)))
CONTEXT = {"base_fingerprint": "sha256:test", "accountant": "rdp", "policy_digest": "sha256:p"}


@pytest.fixture
def setup(tmp_path, tiny_model_factory):
    log = InteractionLog.create(tmp_path / "store", KEY, synchronous="NORMAL")
    for i in range(12):
        log.append(f"remind me about the dentist at {i}", f"Reminder set for {i}.")
    ledger = Ledger.open(log.store, epsilon=4.0, delta=1e-6)
    base = load_base(tiny_model_factory("llama"))
    inject_lora(base.model, LoRAConfig(rank=2, scale=4.0))
    yield log, ledger, base
    log.close()


def _plan(**overrides) -> RoundPlan:
    values = dict(noise_multiplier=2.0, clip_norm=1.0, expected_batch_size=4, steps=3,
                  learning_rate=1e-2, max_tokens=32)  # fmt: skip
    return RoundPlan(**{**values, **overrides})


def _quiet(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return GaussianNoise(**kwargs)


def test_round_charges_every_eligible_unit_and_trains(setup):
    log, ledger, base = setup
    before = {k: np.array(v) for k, v in get_adapter_weights(base.model).items()}
    report = run_round(base.model, base.tokenizer, log, ledger, _plan(), context=CONTEXT)
    assert report.status == "completed"
    assert report.eligible == report.candidates == 12
    assert report.sample_rate == pytest.approx(4 / 12)
    assert len(report.sampled_units) == 3
    after = get_adapter_weights(base.model)
    assert any(not np.array_equal(before[k], np.array(after[k])) for k in before)
    eps = ledger.epsilons()
    assert set(eps) == set(log.units())
    assert len(set(eps.values())) == 1 and 0 < report.epsilon_max <= 4.0
    (entry,) = ledger.rounds()
    assert (entry.status, entry.noise_multiplier, entry.steps) == ("completed", 2.0, 3)
    assert ledger.verify().ok


def test_units_over_budget_are_excluded_then_exhausted(setup):
    log, ledger, base = setup
    plan = _plan(noise_multiplier=3.0, steps=3, expected_batch_size=12)
    rounds = 0
    with pytest.raises(BudgetExhausted, match="lifetime budget"):
        for _ in range(20):
            run_round(base.model, base.tokenizer, log, ledger, plan, context=CONTEXT)
            rounds += 1
    assert rounds >= 1
    assert max(ledger.epsilons().values()) <= 4.0
    charged = len(ledger.rounds())
    assert charged == rounds  # the refused round charged nothing


def test_new_units_stay_eligible_when_old_ones_are_spent(setup):
    log, ledger, base = setup
    plan = _plan(noise_multiplier=3.0, steps=3, expected_batch_size=12)
    with pytest.raises(BudgetExhausted):
        for _ in range(20):
            run_round(base.model, base.tokenizer, log, ledger, plan, context=CONTEXT)
    log.append("play jazz", "Playing jazz.")
    report = run_round(base.model, base.tokenizer, log, ledger, plan, context=CONTEXT)
    assert report.eligible == 1 and report.excluded == 12


def test_empty_store_is_refused_without_a_charge(tmp_path, tiny_model_factory):
    with InteractionLog.create(tmp_path / "s", KEY, synchronous="NORMAL") as log:
        ledger = Ledger.open(log.store, epsilon=4.0, delta=1e-6)
        base = load_base(tiny_model_factory("llama"))
        inject_lora(base.model, LoRAConfig(rank=2))
        with pytest.raises(NoEligibleUnits):
            run_round(base.model, base.tokenizer, log, ledger, _plan(), context=CONTEXT)
        assert ledger.rounds() == []


def test_a_crash_mid_round_stays_charged(setup, monkeypatch):
    log, ledger, base = setup
    import personal.training.round as round_module

    def boom(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(round_module, "pack_token_units", boom)
    with pytest.raises(RuntimeError, match="power cut"):
        run_round(base.model, base.tokenizer, log, ledger, _plan(), context=CONTEXT)
    (entry,) = ledger.rounds()
    assert entry.status == "aborted"
    assert min(ledger.epsilons().values()) > 0  # charged, never refunded


def _seeded_round(path, model_dir, records, lora: LoRAConfig, plan: RoundPlan, epsilon: float):
    """One round with seeded noise and draws on a new store of ``records`` ``(prompt,
    response, unit)``: the trained adapter's weights and the round's report."""
    with InteractionLog.create(path, KEY, synchronous="NORMAL") as log:
        for prompt, response, unit in records:
            log.append(prompt, response, unit=unit)
        ledger = Ledger.open(log.store, epsilon=epsilon, delta=1e-6)
        base = load_base(model_dir)
        inject_lora(base.model, lora, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SeededNoiseWarning)
            report = run_round(
                base.model, base.tokenizer, log, ledger, plan, context=CONTEXT,
                noise=_quiet(seed=3), sampler_seed=4,
            )  # fmt: skip
        weights = {k: np.array(v) for k, v in get_adapter_weights(base.model).items()}
    mx.clear_cache()
    return weights, report


MOM = [(f"call mom at {i}", f"Calling mom at {i}.", f"u{i}") for i in range(6)]


def test_seeded_rounds_are_reproducible(tmp_path, tiny_model_factory):
    model_dir = tiny_model_factory("llama")
    results = [
        _seeded_round(tmp_path / f"s{attempt}", model_dir, MOM, LoRAConfig(rank=2), _plan(), 4.0)[0]
        for attempt in range(2)
    ]
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])


class ShuffledSampler(PoissonSampler):
    """Fixed-size shuffled batches dressed up as a Poisson sampler: must be refused."""


@pytest.mark.parametrize("kind, rate", [(ShuffledSampler, 1 / 3), (PoissonSampler, 0.5)])
def test_a_sampler_that_does_not_match_the_charge_is_refused(setup, kind, rate):
    log, ledger, base = setup
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        sampler = kind(rate, seed=1)
    with pytest.raises(SamplerMismatch):
        run_round(
            base.model, base.tokenizer, log, ledger, _plan(), context=CONTEXT, sampler=sampler
        )
    assert ledger.rounds() == []


# --- quantile clipping (privacy.clip = "quantile") ----------------------------------------------


def test_a_quantile_round_moves_c_and_charges_as_a_fixed_one(setup):
    from personal.privacy.quantile import QuantileClipping

    log, ledger, base = setup
    quantile = QuantileClipping(count_noise=0.5)  # σ_b = 0.5 · 12 = 6 > σ/2 at q = 1
    plan = _plan(noise_multiplier=3.0, expected_batch_size=12, quantile=quantile)
    report = run_round(base.model, base.tokenizer, log, ledger, plan, context=CONTEXT)
    assert report.clip == "quantile" and report.clip_norm == 1.0
    assert report.clip_norm_final is not None and report.clip_norm_final != 1.0
    assert report.public_summary()["clip_norm_final"] == report.clip_norm_final
    (entry,) = ledger.rounds()
    assert entry.clip_norm == 1.0  # the first C is in the hash chain
    assert entry.summary == {
        "completed_steps": 3, "clip": "quantile", "clip_norm_final": report.clip_norm_final
    }  # fmt: skip
    fixed = Ledger.open(InteractionLog.create(log.store.path.parent / "b", KEY).store,
                        epsilon=4.0, delta=1e-6)  # fmt: skip
    fixed_plan = _plan(noise_multiplier=3.0, expected_batch_size=12)
    charge = fixed_plan.charge(12)
    assert plan.charge(12) == charge  # the same σ, q, steps: the same charge
    round_id = fixed.begin_round(charge, log.units(), clip_norm=1.0, **CONTEXT)
    fixed.finish_round(round_id)
    assert fixed.epsilons() == pytest.approx(ledger.epsilons())


def test_a_quantile_round_that_cannot_split_sigma_is_refused_uncharged(setup):
    from personal.errors import ConfigError
    from personal.privacy.quantile import QuantileClipping

    log, ledger, base = setup
    plan = _plan(expected_batch_size=4, quantile=QuantileClipping(count_noise=0.05))
    with pytest.raises(ConfigError, match="clip_count_noise"):  # σ_b = 0.2 < σ/2 = 1
        run_round(base.model, base.tokenizer, log, ledger, plan, context=CONTEXT)
    assert ledger.rounds() == []


def test_a_round_from_the_cached_trunk_trains_the_same_adapter(tmp_path, tiny_model_factory,
                                                                monkeypatch):  # fmt: skip
    """LoRA on the last block only: the first block's output is computed once per row and
    round (personal.model.trunk), and the round ends with the adapter the full forward gives."""
    import personal.model.trunk as trunk_module
    from personal.model.trunk import TrunkCache

    computed: list[int] = []
    hidden = TrunkCache.hidden

    def spy(self, inputs):
        out = hidden(self, inputs)
        computed.append(self.computed)
        return out

    monkeypatch.setattr(TrunkCache, "hidden", spy)
    results = []
    for attempt, cached in enumerate((True, False)):
        if not cached:
            monkeypatch.setattr(trunk_module, "trunk_depth", lambda model: None)
        weights, _ = _seeded_round(
            tmp_path / f"s{attempt}", tiny_model_factory("llama"), MOM,
            LoRAConfig(rank=2, num_layers=1), _plan(expected_batch_size=6), 8.0,
        )  # fmt: skip
        results.append(weights)
    # every unit is drawn at every step (q = 1): its rows' trunk ran at the first step only
    assert computed[0] >= 6 and computed == [computed[0]] * 3
    for name, value in results[1].items():
        np.testing.assert_allclose(results[0][name], value, rtol=1e-4, atol=1e-6)


def test_a_round_in_chunks_of_whole_units_trains_the_same_adapter(tmp_path, tiny_model_factory):
    """``RoundPlan.max_rows``: each step's sample in chunks of at most 3 rows (whole units of
    2 examples each), the same adapter and report as one pass."""
    records = [
        (f"call mom at {i}:{j}", f"Calling mom at {i}.", f"u{i}")
        for i in range(7)
        for j in range(2)
    ]
    results = [
        _seeded_round(
            tmp_path / f"s{attempt}",
            tiny_model_factory("llama"),
            records,
            LoRAConfig(rank=2),
            _plan(expected_batch_size=7, examples_per_unit=2, max_rows=max_rows),
            8.0,
        )
        for attempt, max_rows in enumerate((None, 3))
    ]
    (whole, whole_report), (chunked, chunked_report) = results
    assert chunked_report.sampled_units == whole_report.sampled_units
    assert chunked_report.clipped_fraction == whole_report.clipped_fraction
    np.testing.assert_allclose(chunked_report.train_loss, whole_report.train_loss, rtol=1e-5)
    for name, value in whole.items():
        np.testing.assert_allclose(chunked[name], value, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="max_rows"):
        _plan(max_rows=0)
