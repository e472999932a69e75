"""The quality gate's decision: thresholds, the unmeasured case and the disabled personal check."""

from __future__ import annotations

from personal.training.gates import decide

from hypothesis import given
from hypothesis import strategies as st


def _decide(personal_gain: float | None, min_gain: float = 0.0, after: float = 2.0):
    return decide(
        general_before=2.0,
        general_after=after,
        max_regression=0.02,
        personal_gain=personal_gain,
        min_gain=min_gain,
        held_out=5,
    )


def test_general_regression_beyond_the_threshold_refuses():
    assert _decide(0.1, after=2.02).passed
    result = _decide(0.1, after=2.1)
    assert not result.passed and "general loss rose" in result.reasons[0]


def test_personal_gain_below_the_minimum_refuses():
    assert _decide(0.0).passed
    result = _decide(-0.01)
    assert not result.passed and "below" in result.reasons[1]


def test_unmeasured_personal_gain_is_reported_not_refused():
    result = _decide(None)
    assert result.passed and "not measured" in result.reasons[1]


@given(st.floats(min_value=-1e6, max_value=1.0, allow_nan=False))
def test_minimum_of_minus_one_disables_the_personal_check(gain):
    """A noised gain can fall below -1; min_personal_gain = -1 must still accept it."""
    result = _decide(gain, min_gain=-1.0)
    assert result.passed and "check disabled" in result.reasons[1]


def test_a_non_finite_general_loss_refuses():
    assert not _decide(0.5, after=float("nan")).passed
    assert not _decide(0.5, after=float("inf")).passed


def test_the_reason_names_the_reference():
    kwargs = {"general_before": 2.0, "general_after": 2.01, "max_regression": 0.02,
              "personal_gain": None, "min_gain": 0.0, "held_out": 0}  # fmt: skip
    assert "vs the active adapter" in decide(**kwargs).reasons[0]
    assert "vs the bare base" in decide(**kwargs, reference="base").reasons[0]


def test_unit_losses_batch_units_together_and_equal_one_pass_per_unit(
    tmp_path, tiny_model_factory, monkeypatch
):
    """Held-out units are scored in shared batches (here of 3 rows, so units straddle
    batches): each unit's mean over its `keep` most recent examples equals a pass over that
    unit alone, and a unit with no records left is NaN."""
    import warnings
    from datetime import UTC, datetime, timedelta

    from personal import Personalizer, RawKey
    from personal.model.batching import make_batch
    from personal.model.evaluate import per_example_loss
    from personal.model.tokenizer import encode_interaction
    from personal.policy import load_policy
    from personal.training import gates

    import numpy as np
    import pytest

    monkeypatch.setattr(gates, "EVAL_BATCH", 3)
    policy = load_policy("research").with_overrides({"privacy.unit": "day"})  # 3 per unit
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = Personalizer.open(
            tmp_path / "s", tiny_model_factory(), policy, RawKey(bytes(32)), create=True
        )
    with p:
        for i in range(9):  # three days, three interactions each
            when = start + timedelta(days=i // 3, minutes=i)
            p.log(f"remind me to call {i}", f"I will remind you to call {i}.", ts=when)
        units = [*p.interactions.units(), "no-such-unit"]
        model, tokenizer = p.base.model, p.base.tokenizer
        got = gates.unit_losses(model, tokenizer, p.interactions, units, keep=2)
        for i, unit in enumerate(units[:-1]):
            recent = sorted(p.interactions.iter_records(units=[unit]), key=lambda r: (r.ts, r.id))
            encoded = [encode_interaction(tokenizer, r.prompt, r.response) for r in recent[-2:]]
            alone = per_example_loss(
                model, make_batch([e for e, _ in encoded], [s for _, s in encoded])
            )
            assert got[i] == pytest.approx(float(np.mean(np.array(alone))), rel=1e-5)
    assert len(units) == 4 and np.isnan(got[-1])  # three days, and the missing unit
