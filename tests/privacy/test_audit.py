"""The audit's pure parts: charge replay, over-budget reporting, JSON shape and HTML page."""

from __future__ import annotations

import math

from personal.privacy.audit import (
    Audit,
    AuditRound,
    RoundRules,
    compliance_checks,
    histogram_edges,
    replay_charges,
)
from personal.privacy.audit.page import render_html
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


# --- the filter rule the store is bound to ------------------------------------------------------


_SCHEDULE = [((1.0, 1.6, 4), ["a", "b"]), ((0.5, 3.0, 5), ["a"]), ((1.0, 10.0, 1), ["a"])]


def _gaussian_store(tmp_path, filter_rule: str, schedule=_SCHEDULE):
    from personal.privacy.contract import Contract
    from personal.privacy.filter import Charge
    from personal.privacy.ledger import Ledger
    from personal.store import RawKey, Store

    store = Store.create(tmp_path / "store", RawKey(bytes(range(32))))
    ledger = Ledger.open(store, Contract(8.0, 1e-6, "interaction", "rdp", filter_rule))
    context = {"base_fingerprint": "sha256:b", "clip_norm": 0.5, "policy_digest": "sha256:p"}
    for (q, sigma, steps), units in schedule:
        charge = Charge(purpose="training", sample_rate=q, noise_multiplier=sigma, steps=steps)
        ledger.finish_round(ledger.begin_round(charge, units, accountant="rdp", **context))
    return store, ledger, schedule


def test_the_audit_states_and_recomputes_with_the_gaussian_filter(tmp_path):
    import math

    from personal.privacy.audit import build_audit
    from personal.privacy.gdp import gaussian_epsilon

    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    store, ledger, schedule = _gaussian_store(tmp_path, "gaussian")
    with store:
        audit = build_audit(ledger)
    data = audit.to_json()
    assert data["ok"] and data["filter"] == "gaussian" and "Gaussian-DP" in data["filter_note"]
    # Unit a: μ² = 4/1.6² + 5/3² + 1/10² (q = 0.5 charged as q = 1); b: the first round only.
    mu_a = math.sqrt(4 / 1.6**2 + 5 / 3.0**2 + 1 / 10.0**2)
    assert audit.unit_epsilons["a"] == pytest.approx(gaussian_epsilon(mu_a, 1e-6), rel=1e-12)
    assert audit.unit_epsilons["b"] == pytest.approx(gaussian_epsilon(2 / 1.6, 1e-6), rel=1e-12)
    assert data["rounds"][0]["epsilon"] == pytest.approx(6.312, abs=1e-3)
    assert "Gaussian-DP filter" in render_html(audit)
    # dp-accounting's PLD of the same composed Gaussian mechanisms brackets the audit's ε.
    bounds = []
    for pessimistic in (False, True):
        total = None
        for (_, sigma, steps), _units in schedule:
            one = pld_lib.from_gaussian_mechanism(
                standard_deviation=sigma, pessimistic_estimate=pessimistic,
                value_discretization_interval=1e-3, use_connect_dots=pessimistic,
            ).self_compose(steps)  # fmt: skip
            total = one if total is None else total.compose(one)
        bounds.append(total.get_epsilon_for_delta(1e-6))
    optimistic, pessimistic_eps = bounds
    assert optimistic <= audit.unit_epsilons["a"] + 1e-9
    assert pessimistic_eps <= audit.unit_epsilons["a"] + 0.005


def test_the_audit_of_a_renyi_store_says_so(tmp_path):
    from personal.privacy.audit import build_audit

    # The Rényi filter would refuse unit a the gaussian test's second round (ε > 8).
    store, ledger, _ = _gaussian_store(tmp_path, "renyi", [_SCHEDULE[0], _SCHEDULE[2]])
    with store:
        data = build_audit(ledger).to_json()
    assert data["ok"] and data["filter"] == "renyi" and "Rényi filter" in data["filter_note"]
    b = sgm_rdp(sample_rate=1.0, noise_multiplier=1.6, steps=4)
    assert data["units"]["epsilon_min"] == pytest.approx(filter_epsilon(b, delta=1e-6))


# --- quantile clipping: C adapts, σ is still checked ---------------------------------------------


def _quantile_rules(clip: str = "quantile") -> RoundRules:
    return RoundRules(clip_norm=0.5, noise_multiplier=1.6, validation_noise_multiplier=4.0,
                      lifetime_epsilon=8.0, clip=clip)  # fmt: skip


def _train(i: int, clip: float, sigma: float = 1.6) -> AuditRound:
    return AuditRound(i, f"2026-11-2{i}T00:00:00Z", "training", sigma, 1.0, 4, clip, 2,
                      "completed")  # fmt: skip


def _follows(rounds, rules):
    checks = compliance_checks(rounds, {}, lifetime_epsilon=8.0, rules=rules)
    return next(c for c in checks if c.name == "rounds_follow_policy")


def test_a_quantile_policy_accepts_any_finite_c_and_says_clipping_is_adaptive():
    rounds = [_train(1, 0.5), _train(2, 0.13), _train(3, 7.9), _validation(4, sigma=4.0)]
    check = _follows(rounds, _quantile_rules())
    assert check.ok and "C adaptive (quantile clipping from C=0.5" in check.detail
    fixed = _follows(rounds, _quantile_rules("fixed"))  # the fixed rule is unchanged
    assert not fixed.ok and "round 2: training at C=0.13, not 0.5" in fixed.detail
    bad = _follows([_train(1, math.inf), _train(2, 0.2, sigma=1.2)], _quantile_rules())
    assert not bad.ok and "round 1: training at C=inf" in bad.detail
    assert "round 2: training σ=1.2 below the policy's 1.6" in bad.detail


def test_the_audit_of_a_quantile_store_passes_and_still_catches_a_low_sigma(tmp_path):
    from personal.policy import load_policy
    from personal.privacy.audit import build_audit
    from personal.privacy.contract import Contract
    from personal.privacy.filter import Charge
    from personal.privacy.ledger import Ledger
    from personal.store import RawKey, Store

    policy = load_policy("default").with_overrides({"privacy.clip": "quantile"})
    store = Store.create(tmp_path / "store", RawKey(bytes(range(32))))
    ledger = Ledger.open(store, Contract.of_policy(policy))
    context = {"base_fingerprint": "sha256:b", "policy_digest": policy.digest()}
    for clip, sigma, units in ((0.5, 1.6, ["a"]), (0.31, 1.6, ["b"]), (1.7, 1.6, ["c"])):
        charge = Charge(purpose="training", sample_rate=1.0, noise_multiplier=sigma, steps=4)
        round_id = ledger.begin_round(charge, units, accountant="rdp", clip_norm=clip, **context)
        ledger.finish_round(round_id, "completed", {"clip": "quantile", "clip_norm_final": clip})
    with store:
        audit = build_audit(ledger, policy=policy, policy_given=True).to_json()
        assert audit["ok"], audit["compliance"]
        as_fixed = build_audit(ledger, policy=load_policy("default")).to_json()
        assert not as_fixed["ok"]  # the same rounds under a fixed clip norm of 0.5: C differs
        # a round below the policy's σ (a tampered engine) fails whatever C did
        charge = Charge(purpose="training", sample_rate=1.0, noise_multiplier=1.2, steps=2)
        round_id = ledger.begin_round(charge, ["d"], accountant="rdp", clip_norm=0.4, **context)
        ledger.finish_round(round_id)
        tampered = build_audit(ledger, policy=policy).to_json()
    (check,) = [c for c in tampered["compliance"] if c["name"] == "rounds_follow_policy"]
    assert not check["ok"] and "round 4: training σ=1.2 below the policy's 1.6" in check["detail"]
