"""The audit's pure parts: charge replay, over-budget reporting, JSON shape and HTML page."""

from __future__ import annotations

from personal.privacy.audit import Audit, AuditRound, compliance_checks, replay_charges
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
        rounds, eps, lifetime_epsilon=lifetime, clip_norm=1.0, policy_digest=None
    )
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
