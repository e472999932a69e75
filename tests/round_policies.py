"""Policies for tests that run real rounds on tiny models: cheap, permissive, budget to spare."""

from __future__ import annotations

from typing import Any

from personal.policy import Policy, load_policy
from personal.public import PublicData

#: ``research`` made cheap (2 steps, rank 2) with gates that let every adapter through.
TINY_ROUNDS: dict[str, Any] = {
    "privacy.lifetime_epsilon": 20.0, "privacy.noise_multiplier": 3.0,
    "training.min_new_units": 1, "training.steps": 2, "training.expected_batch_size": 4.0,
    "training.max_tokens": 24, "training.lora.rank": 2, "store.synchronous": "NORMAL",
    "gates.max_general_regression": 1.0, "gates.min_personal_gain": -1.0,
}  # fmt: skip


def tiny_round_policy(**extra: Any) -> Policy:
    """``research`` with :data:`TINY_ROUNDS` and ``extra`` on top."""
    return load_policy("research").with_overrides({**TINY_ROUNDS, **extra})


#: Public data to pass in (``public_data=``) where the test is not about it: 6 gate examples
#: and 18 for replay, Fisher and migration prompts, where the self-generated default has ~80
#: gate examples and 64 migration prompts of 64-token answers (generating them for a base and
#: scoring them every round cost seconds a test). The default is tested end to end in
#: tests/test_personalizer_public.py, tests/public/ and every CLI test that trains or migrates.
TINY_PUBLIC = PublicData.from_examples(
    [(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(24)], name="sums"
)
