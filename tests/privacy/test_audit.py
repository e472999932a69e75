"""The audit's pure parts: charge replay, over-budget reporting, JSON shape and HTML page."""

from __future__ import annotations

from personal.privacy.audit import (
    Audit,
    AuditRound,
    RoundRules,
    compliance_checks,
    histogram_edges,
    replay_charges,
)
from personal.privacy.audit_html import render_html
from personal.privacy.rdp import filter_epsilon, sgm_rdp

import pytest


def _round(i: int, sigma: float = 2.0, q: float = 0.5, steps: int = 10) -> AuditRound:
    return AuditRound(
        i, f"2026-11-2{i}T00:00:00Z", "training", sigma, q, steps, 1.0, 2, "completed"
    )


def test_replay_sums_rdp_per_unit_and_tracks_the_maximum():
    rounds = [_round(1), _round(2)]
    eps, timeline = replay_charges(rounds, {1: ["a", "b"], 2: ["a"]}, epsilon=8.0, delta=1e-6)
    one = sgm_rdp(sample_rate=0.5, noise_multiplier=2.0, steps=10)
    assert eps["b"] == pytest.approx(filter_epsilon(one, delta=1e-6))
    assert eps["a"] == pytest.approx(filter_epsilon(2 * one, delta=1e-6))
    assert [t for _, t in timeline] == pytest.approx([eps["b"], eps["a"]])


def _audit(rounds, eligible, lifetime: float) -> Audit:
    eps, timeline = replay_charges(rounds, eligible, epsilon=lifetime, delta=1e-6)
    audit = Audit("interaction", "rdp", 1e-6, lifetime, rounds, eps, timeline, True, [])
    audit.checks = compliance_checks(
        rounds, eps, lifetime_epsilon=lifetime, policy_digest=None,
        rules=RoundRules(clip_norm=1.0, noise_multiplier=None, validation_noise_multiplier=10.0,
                         lifetime_epsilon=lifetime),
    )  # fmt: skip
    return audit


def test_an_over_charged_unit_is_reported_not_raised():
    rounds = [_round(i, sigma=0.8, q=1.0, steps=50) for i in range(1, 4)]
    audit = _audit(rounds, {i: ["victim"] for i in range(1, 4)}, lifetime=1.0)
    assert audit.over_budget == ["victim"]
    data = audit.to_json()
    assert not data["ok"] and data["units"]["over_budget"] == 1
    assert not next(c for c in data["compliance"] if c["name"] == "units_within_budget")["ok"]


def test_json_and_html_of_a_sound_ledger():
    audit = _audit([_round(1)], {1: ["a", "b"]}, lifetime=8.0)
    data = audit.to_json()
    assert data["ok"] and data["units"]["count"] == 2
    assert sum(data["units"]["histogram"]["counts"]) == 2
    assert data["rounds"][0]["noise_multiplier"] == 2.0
    page = render_html(audit)
    assert "PASS" in page and page.count("<svg") == 2


def test_an_empty_ledger_audits_clean():
    audit = _audit([], {}, lifetime=8.0)
    assert audit.ok and audit.to_json()["units"]["count"] == 0
    assert "<svg" in render_html(audit)


def _validation(i: int, sigma: float = 10.0, clip: float = 1.0) -> AuditRound:
    return AuditRound(i, f"2026-11-2{i}T00:00:00Z", "validation", sigma, 1.0, 1, clip, 2,
                      "completed")  # fmt: skip


def test_each_round_is_checked_by_its_purpose():
    rules = RoundRules(clip_norm=0.5, noise_multiplier=1.6, validation_noise_multiplier=10.0,
                       lifetime_epsilon=8.0)  # fmt: skip
    train = AuditRound(2, "2026-11-22T00:00:00Z", "training", 1.6, 0.5, 4, 0.5, 2, "completed")
    ok = compliance_checks([_validation(1), train], {}, lifetime_epsilon=8.0, rules=rules)
    assert all(c.ok for c in ok)  # validation at its own C = 1.0 is not a clip-norm breach
    weak = AuditRound(3, "2026-11-23T00:00:00Z", "training", 1.0, 0.5, 4, 1.0, 2, "completed")
    bad = compliance_checks(
        [_validation(1, sigma=2.0), weak], {}, lifetime_epsilon=8.0, rules=rules
    )
    (check,) = [c for c in bad if c.name == "rounds_follow_policy"]
    assert not check.ok
    assert "round 1: validation σ=2" in check.detail and "round 3: training at C=1" in check.detail


def test_histogram_bins_fit_the_data():
    edges = histogram_edges([7.61, 7.62, 7.64, 7.9])
    assert edges[0] <= 7.61 and edges[-1] > 7.9 and edges[-1] - edges[0] < 1
    assert all(len(repr(e)) < 8 for e in edges)  # rounded: no 17-digit floats
    one = histogram_edges([7.6] * 5)
    assert len(one) == 2 and one[0] <= 7.6 < one[1] and one[1] - one[0] < 0.5
