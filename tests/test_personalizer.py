"""The app-facing Personalizer: log, trigger, private update, serve, reopen."""

from __future__ import annotations

from datetime import datetime

from personal.errors import LifetimeContractFixed
from personal.model.lora import get_adapter_weights
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import RawKey

import numpy as np
import pytest

KEY = RawKey(bytes(range(32)))


def _policy(**overrides):
    values = {
        "privacy.lifetime_epsilon": 6.0,
        "privacy.noise_multiplier": 2.0,
        "training.min_new_units": 3,
        "training.max_rounds_per_day": 1,
        "training.steps": 2,
        "training.expected_batch_size": 2.0,
        "training.max_tokens": 24,
        "training.lora.rank": 2,
        "store.synchronous": "NORMAL",
        "gates.max_general_regression": 1.0,
        "gates.min_personal_gain": -1.0,
        **overrides,
    }
    return load_policy("research").with_overrides(values)


def test_log_update_serve_and_reopen(tmp_path, tiny_model_factory):
    base_dir = tiny_model_factory("llama")
    day = datetime(2026, 11, 23, 9)
    with Personalizer.open(tmp_path / "s", base_dir, _policy(), KEY, create=True) as p:
        assert p.active_adapter is None and not p.should_update(now=day)
        for i in range(4):
            p.log(f"call Ana at {i}", f"Calling Ana at {i}.")
        assert p.should_update(now=day)
        report = p.update(now=day)
        assert report.status == "completed" and report.adapter_version == 1
        assert p.active_adapter.version == 1
        assert not p.should_update(now=day)  # no new units, and today's round is used
        weights = {k: np.array(v) for k, v in get_adapter_weights(p.base.model).items()}
        answer = p.generate("call Ana", max_tokens=4)
        assert np.isfinite(answer.confidence)
    with Personalizer.open(tmp_path / "s", base_dir, None, KEY) as p:  # the recorded policy
        assert p.policy.privacy.lifetime_epsilon == 6.0
        assert p.active_adapter.version == 1
        live = get_adapter_weights(p.base.model)
        assert all(np.array_equal(weights[k], np.array(live[k])) for k in weights)


def test_the_lifetime_budget_is_bound_to_the_store(tmp_path, tiny_model_factory):
    base_dir = tiny_model_factory("llama")
    raised = _policy(**{"privacy.lifetime_epsilon": 60.0})
    with Personalizer.open(tmp_path / "s", base_dir, raised, KEY, create=True):
        pass  # nothing recorded yet: the next policy may still set another budget
    with Personalizer.open(tmp_path / "s", base_dir, _policy(), KEY) as p:
        for i in range(4):
            p.log(f"call Ana at {i}", f"Calling Ana at {i}.")
        p.update()
    with pytest.raises(LifetimeContractFixed, match="lifetime contract"):
        Personalizer.open(tmp_path / "s", base_dir, raised, KEY)
    # Anything else may change (here: the number of steps).
    with Personalizer.open(tmp_path / "s", base_dir, _policy(**{"training.steps": 5}), KEY) as p:
        assert p.policy.training.steps == 5
