"""Quantile clipping through the round runner: C carries over from round to round in the store's
sealed settings, starts at the policy's clip_norm on a new store, after a changed clip_norm or
on another base, and a fixed policy never stores one."""

from __future__ import annotations

import warnings

from personal.errors import ConfigError, SeededNoiseWarning
from personal.personalizer import Personalizer
from personal.privacy.audit import build_audit
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey
from personal.training.runner import CLIP_KEY

import pytest
from round_policies import TINY_PUBLIC, tiny_round_policy

KEY = RawKey(bytes(range(32)))
#: σ 3 at B ≈ 4 units per step: σ_b = 1.0 · 4 > 1.5 (the paper's B/20 needs far larger rounds).
QUANTILE = {"privacy.clip": "quantile", "privacy.clip_count_noise": 1.0}


def _open(path, factory, **extra) -> Personalizer:
    return Personalizer.open(
        path, factory(), tiny_round_policy(**extra), KEY, create=True, public_data=TINY_PUBLIC
    )


def _round(p: Personalizer, units: int, seed: int):
    for i in range(units):
        p.log(f"remind me about item {seed}-{i}", f"Reminder {seed}-{i} set.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SeededNoiseWarning)
        return p.update(noise=GaussianNoise(seed=seed), sampler_seed=seed)


def test_c_carries_over_from_round_to_round_and_resets(tmp_path, tiny_model_factory):
    with _open(tmp_path / "s", tiny_model_factory, **QUANTILE) as p:
        start = p.policy.privacy.clip_norm
        assert p.rounds.clip_norm() == start and p.round_plan().quantile is not None
        first = _round(p, 12, seed=1)
        assert first.clip == "quantile" and first.clip_norm == start
        assert first.clip_norm_final not in (None, start)
        assert p.rounds.clip_norm() == first.clip_norm_final  # stored, sealed
        second = _round(p, 12, seed=2)
        assert second.clip_norm == first.clip_norm_final  # the next round starts there
        training = [r for r in p.ledger.rounds() if r.purpose == "training"]
        assert [r.clip_norm for r in training] == [start, first.clip_norm_final]
        assert training[-1].summary["clip_norm_final"] == second.clip_norm_final
        manifest = p.rounds.active_adapter
        if manifest is not None:  # the gates let it through: the manifest states both Cs
            assert manifest.training["clip_norm_final"] == second.clip_norm_final
        audit = build_audit(p.ledger, policy=p.policy).to_json()
        assert audit["ok"], audit["compliance"]
    # A new store starts from the policy's clip_norm ...
    with _open(tmp_path / "t", tiny_model_factory, **QUANTILE) as fresh:
        assert fresh.rounds.clip_norm() == start
    # ... and so does a store whose policy changed clip_norm (the stored C is ignored).
    changed = {**QUANTILE, "privacy.clip_norm": 2.0}
    with _open(tmp_path / "s", tiny_model_factory, **changed) as again:
        assert again.settings.get(CLIP_KEY)["clip_norm"] == second.clip_norm_final
        assert again.rounds.clip_norm() == 2.0
        assert _round(again, 12, seed=3).clip_norm == 2.0
    # Back under the first policy, the C of the last round stands (it was under 2.0 now).
    with _open(tmp_path / "s", tiny_model_factory, **QUANTILE) as back:
        assert back.rounds.clip_norm() == start


def test_a_fixed_policy_stores_no_clip_norm_and_keeps_its_c(tmp_path, tiny_model_factory):
    with _open(tmp_path / "s", tiny_model_factory) as p:
        report = _round(p, 12, seed=1)
        assert report.clip == "fixed" and report.clip_norm_final is None
        assert "clip_norm_final" not in report.public_summary()
        assert p.settings.get(CLIP_KEY) is None
        (training,) = [r for r in p.ledger.rounds() if r.purpose == "training"]
        assert training.clip_norm == p.policy.privacy.clip_norm
        assert "clip_norm_final" not in training.summary


def test_a_quantile_round_too_small_to_split_sigma_charges_nothing(tmp_path, tiny_model_factory):
    with _open(
        tmp_path / "s", tiny_model_factory, **{**QUANTILE, "privacy.clip_count_noise": 0.4}
    ) as p:
        # policy: 0.4 · 4 = 1.6 > 1.5; the round: 3 units at q = 1, σ_b = 1.2 < 1.5
        with pytest.raises(ConfigError, match="clip_count_noise"):
            _round(p, 3, seed=1)
        assert p.ledger.rounds() == []
