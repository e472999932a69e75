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
