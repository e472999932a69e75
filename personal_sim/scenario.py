"""What a simulation runs: the policy, the arms compared, and the run's configuration.

Plain data that travels to worker processes; see :mod:`personal_sim.runner`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from typing import Any

import personal  # noqa: F401  (before mlx: the fast BLAS)
from personal.errors import ConfigError
from personal.policy import Policy, load_policy
from personal.privacy.noise import GaussianNoise

import mlx.core as mx
import numpy as np

from personal_sim.population import MAX_RATE, PUBLIC_SEED, START, User

#: The bundled policy a simulation runs unless told otherwise: what it measures is what ships
#: (no hidden overrides; an arm's overrides are its documented ablation).
DEFAULT_POLICY = "default"

#: Lifetime ε of the non-DP arm: the ledger still accounts its rounds, so it needs room.
NON_DP_EPSILON = 100.0
#: What makes an arm non-private besides ``dp=False``: a budget the ledger never reaches, and
#: the EWC Fisher from public text (there are no noised gradients to estimate it from).
NON_DP_OVERRIDES = {"privacy.lifetime_epsilon": NON_DP_EPSILON, "continual.fisher_source": "public"}
SEEDED_NOISE_NOTE = (
    "Simulated runs use seeded noise and sampling (GaussianNoise(seed=...), sampler_seed=...) "
    "so that the same seed reproduces the same metrics on every backend: seeded randomness is "
    "NOT differentially private. The library's SeededNoiseWarning was suppressed for these "
    "runs. The epsilon figures are the ledger's charges, i.e. what the same rounds cost with "
    "the library's default CSPRNG noise."
)


def default_policy() -> Policy:
    """The simulator's default: the bundled :data:`DEFAULT_POLICY`, as shipped."""
    return load_policy(DEFAULT_POLICY)


# --- arms ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One way to run the library; ``--compare`` runs several on the same users.

    Attributes:
        name: short label used in metrics and plots.
        description: one sentence for the report.
        dp: real (seeded) Gaussian noise; ``False`` releases gradients and gate metrics as is.
        overrides: policy overrides applied on top of the base policy.
        memory: serve with personal memory: every measurement of the served model (held-out
            loss, slot accuracy) uses the interactions the store recalls for each held-out
            request, as ``generate(memory=True, memory_mode=memory_mode)`` does: in
            ``"cache"`` mode as a token cache mixed into each next-token distribution
            (``Personalizer.memory_cache``), in ``"context"`` mode as earlier turns before it
            (``Personalizer.memory_context``). The bare-base reference stays memory-free.
        memory_mode: ``"cache"`` (the library's default) or ``"context"``.
        train: run the policy's rounds; ``False`` never trains (no round, ε 0): the arm serves
            the base of the day (after the OS update, the new one), bare, with its population
            adapter (``training.warm_start``) or with memory.
    """

    name: str
    description: str
    dp: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)
    memory: bool = False
    train: bool = True
    memory_mode: str = "cache"

    def policy(self, base: Policy) -> Policy:
        """The arm's policy derived from the run's base policy."""
        return base.with_overrides(self.overrides) if self.overrides else base

    def training(self) -> tuple[bool, bool, str]:
        """What the arm's store goes through (noise, rounds, policy): arms that agree on it
        get the same rounds and adapters, so a run trains them once and measures each arm
        (with or without memory) on the same store."""
        return self.dp, self.train, json.dumps(self.overrides, sort_keys=True)

    def before_update(self) -> tuple[bool, bool, str]:
        """:meth:`training` up to the OS update: the same but for ``migration.strategy``
        (``dp`` and ``drop`` go through the same days until then; a run shares them)."""
        overrides = {k: v for k, v in self.overrides.items() if k != "migration.strategy"}
        return self.dp, self.train, json.dumps(overrides, sort_keys=True)


def _rate_arms(rate: float, why: str) -> tuple[Arm, Arm]:
    """``dp-lr{rate}`` and its non-DP reference ``non-dp-lr{rate}`` (the DP share's
    denominator at that rate)."""
    dp = Arm(f"dp-lr{rate}", f"DP at {why}", overrides={"training.learning_rate": rate})
    reference = Arm(
        f"non-dp-lr{rate}",
        f"non-dp at learning rate {rate}: the reference for dp-lr{rate}'s share of the gain",
        dp=False,
        overrides={**NON_DP_OVERRIDES, "training.learning_rate": rate},
    )
    return dp, reference


#: A round on the base's adapter bank (personal.model.bank): 32 members of rank 1, so the
#: served mixture has LoRA rank 32; coefficients start at 0 (no warm start), no EWC (it anchors
#: LoRA tensors); plain SGD at 2.0 with the pull to the base at 1, the pilot's recipe
#: (docs/dp-utility.md, "The adapter bank").
BANK_OVERRIDES: dict[str, Any] = {
    "training.update": "bank",
    "training.lora.rank": 32,
    "training.warm_start": "none",
    "continual.ewc_lambda": 0.0,
    "training.learning_rate": 2.0,
    "continual.public_distill_weight": 1.0,
}


def _bank_arms() -> tuple[Arm, ...]:
    return (
        Arm(
            "dp-bank",
            "DP on the mixing coefficients of the base's public adapter bank (32 public users' "
            "own adapters) instead of the adapter's weights",
            overrides=BANK_OVERRIDES,
        ),
        Arm(
            "dp-bank-min16",
            "dp-bank with rounds from 16 new units on: 128 coefficients need fewer units than "
            "1,472 weights for the same noise-to-signal ratio",
            overrides={**BANK_OVERRIDES, "training.min_new_units": 16},
        ),
        Arm(
            "dp-bank-lr1",
            "dp-bank at half the learning rate (1.0): less drift a round, fewer gate refusals",
            overrides={**BANK_OVERRIDES, "training.learning_rate": 1.0},
        ),
        Arm(
            "dp-bank-pull5",
            "dp-bank with the default policy's pull to the base (weight 5 instead of 1)",
            overrides={**BANK_OVERRIDES, "continual.public_distill_weight": 5.0},
        ),
        Arm(
            "dp-bank-no-gain-gate",
            "dp-bank without the noised personal-gain gate (gates.min_personal_gain = -1): only "
            "the general-drift gate decides; the validation release is still made and charged",
            overrides={**BANK_OVERRIDES, "gates.min_personal_gain": -1.0},
        ),
        Arm(
            "non-dp-bank",
            "dp-bank without noise: the reference for its share of the gain",
            dp=False,
            overrides={**NON_DP_OVERRIDES, **BANK_OVERRIDES},
        ),
    )


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("dp", "DP-SGD with the policy as given: replay + EWC, distill at the OS update"),
        Arm(
            "non-dp",
            "no noise at all (gradients and gate metrics released as is); lifetime ε "
            f"{NON_DP_EPSILON:g} so the ledger never stops it; EWC Fisher from public text",
            dp=False,
            overrides=NON_DP_OVERRIDES,
        ),
        Arm(
            "no-replay-ewc",
            "DP, without private replay, public replay, distillation to the base or EWC",
            overrides={
                "continual.replay_share": 0.0,
                "continual.public_replay_share": 0.0,
                "continual.public_distill_weight": 0.0,
                "continual.ewc_lambda": 0.0,
            },
        ),
        Arm(
            "drop",
            "DP, dropping the adapter at the OS update",
            overrides={"migration.strategy": "drop"},
        ),
        # The ablation of benchmarks/dp_utility.py: each arm undoes one technique of the policy.
        Arm(
            "dp-sigma2.8",
            "DP at the noise of the earlier recipe (σ 2.8: ε 4.1 per unit, half the budget)",
            overrides={"privacy.noise_multiplier": 2.8},
        ),
        Arm(
            "dp-min16",
            "DP with rounds from 16 new units on (the earlier trigger) instead of 64",
            overrides={"training.min_new_units": 16},
        ),
        Arm(
            "dp-private-replay",
            "DP plus private replay (25 % of each batch replayed, charged again), σ 2.8 so that "
            "a replayed unit stays within its budget",
            overrides={
                "continual.replay_share": 0.25,
                "privacy.noise_multiplier": 2.8,
            },
        ),
        Arm(
            "dp-no-distill",
            "DP without the distillation to the base on public text",
            overrides={"continual.public_distill_weight": 0.0},
        ),
        Arm(
            "dp-wide",
            "DP with the earlier shipped adapter: rank 8 on every linear of every block",
            overrides={
                "training.lora.rank": 8,
                "training.lora.targets": "all-linear",
                "training.lora.num_layers": "all",
            },
        ),
        Arm(
            "dp-cold",
            'DP without the public population warm start (training.warm_start = "none"): '
            "the bare base is served until the first round, which starts from a zero adapter",
            overrides={"training.warm_start": "none"},
        ),
        Arm(
            "dp-no-guard",
            'DP without the step-size guard (training.step_guard = "off"): every step at the '
            "policy's learning rate, whatever it does to the public loss",
            overrides={"training.step_guard": "off"},
        ),
        # A candidate recipe, measured against "dp" before it may become the default.
        Arm(
            "dp-gaussian",
            "DP under the Gaussian-DP filter at σ 1.35 (ε 7.82 per unit with the validation "
            "release, as much as σ 1.6 costs under the Rényi filter; docs/dp-utility.md)",
            overrides={"privacy.filter": "gaussian", "privacy.noise_multiplier": 1.35},
        ),
        Arm(
            "dp-no-gain-gate",
            "DP without the noised personal-gain gate (gates.min_personal_gain = -1): only the "
            "general-drift gate decides; the validation release is still made and charged",
            overrides={"gates.min_personal_gain": -1.0},
        ),
        Arm(
            "dp-no-holdout",
            'DP with gates.personal_check = "off": no unit held out (all train), no personal '
            "metric released or charged; the general-drift gate alone decides",
            overrides={"gates.personal_check": "off"},
        ),
        Arm(
            "dp-quantile",
            'DP with quantile clipping (privacy.clip = "quantile": C starts at clip_norm and '
            "each step's noisy unclipped count steers it to the median unit gradient norm; "
            "same charge; Andrew et al. 2021; docs/dp-utility.md)",
            overrides={"privacy.clip": "quantile"},
        ),
        # The learning rate: the ablation (the earlier 0.3) and a larger candidate (1.2).
        *_rate_arms(
            0.3,
            "the learning rate shipped before the step-size guard (half the default's): what "
            "the doubled rate buys (docs/dp-utility.md)",
        ),
        *_rate_arms(1.2, "twice the default learning rate, the step-size guard on"),
        # The public adapter bank (docs/dp-utility.md): DP on 32 mixing coefficients per adapted
        # layer instead of the adapter's 1,472 weights on base-v1.
        *_bank_arms(),
        # The public population warm start (docs/dp-utility.md): public, so it charges nothing.
        Arm(
            "dp-warm",
            "DP starting from the base's public population adapter (training.warm_start = "
            '"population", the default since measured: the same as dp under it): served from '
            "day 0, the first round starts from its weights",
            overrides={"training.warm_start": "population"},
        ),
        Arm(
            "warm-only",
            "no training at all (no round, ε 0): the base's public population adapter served",
            overrides={"training.warm_start": "population"},
            train=False,
        ),
        # Personal memory (docs/memory.md): retrieval from the log instead of, or beside, DP.
        Arm(
            "memory",
            "no training at all (no round, ε 0): the bare base of the day (no warm start) "
            "served with personal memory, the 8 logged interactions most relevant to each "
            "request as a token cache",
            overrides={"training.warm_start": "none"},
            memory=True,
            train=False,
        ),
        Arm(
            "dp+memory",
            "the dp arm's rounds (the same adapters), served with personal memory",
            memory=True,
        ),
        Arm(
            "memory-context",
            "as memory, the 3 most relevant interactions as earlier chat turns instead",
            overrides={"training.warm_start": "none"},
            memory=True,
            train=False,
            memory_mode="context",
        ),
        Arm(
            "dp+memory-context",
            "the dp arm's rounds, served with memory as earlier chat turns",
            memory=True,
            memory_mode="context",
        ),
    )
}
DEFAULT_ARMS = ("dp",)
COMPARE_ARMS = ("dp", "non-dp", "no-replay-ewc", "drop", "memory", "dp+memory")
#: The arms served with personal memory (issue 18's goals compare them with dp and non-dp).
MEMORY_ARMS = ("memory", "dp+memory")
#: The same arms with memory as earlier chat turns instead of a token cache (the road not taken).
MEMORY_CONTEXT_ARMS = ("memory-context", "dp+memory-context")
ABLATION_ARMS = (
    "dp-min16",
    "dp-sigma2.8",
    "dp-private-replay",
    "dp-no-distill",
    "dp-wide",
    "dp-cold",
    "dp-no-guard",
    "dp-lr0.3",
    "non-dp-lr0.3",
)
#: Recipes measured against the shipped one before they may replace it.
CANDIDATE_ARMS = (
    "dp-gaussian",
    "dp-no-gain-gate",
    "dp-no-holdout",
    "dp-quantile",
    "dp-warm",
    "warm-only",
    "dp-lr1.2",
    "non-dp-lr1.2",
    "dp-bank",
    "dp-bank-min16",
    "dp-bank-lr1",
    "dp-bank-pull5",
    "dp-bank-no-gain-gate",
    "non-dp-bank",
)


class PassThroughNoise(GaussianNoise):
    """The non-DP arm's "noise": every release is the exact value (no privacy whatsoever)."""

    def privatize_tree(
        self, values: Any, std: float, *, bound: float | None = None
    ) -> dict[str, mx.array]:
        return {name: mx.array(value) for name, value in values.items()}

    def sample(self, size: int, std: float) -> np.ndarray:
        return np.zeros(size, dtype=np.float64)


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What to simulate (plain data: it travels to workers).

    Attributes:
        users, days: population size and timeline length.
        update_day: the day the OS update ships ``update_base`` (before that day's logging); a
            value >= ``days`` means no update during the run.
        seed: population, noise and sampler seeds all derive from it.
        policy: the base policy as a dict (``None``: :func:`default_policy`).
        arms: names from :data:`ARMS`.
        held_out: personal evaluation examples per user and day.
        public_eval: held-out public examples for the general loss.
        base, update_base: bundled names or model directories.
        public_data: a JSONL file of public data passed to the library (``None``: the
            simulator's public corpus, :mod:`personal_sim.public_data`).
        min_rate: recruit only users who log at least this many interactions a day on average:
            the seed's first ``users`` such users (:meth:`user_indices`; each is the same user
            as in an unfiltered run). 0: everyone, i.e. users ``0 .. users-1``.
    """

    users: int = 5
    days: int = 7
    update_day: int = 4
    seed: int = 0
    policy: dict[str, Any] | None = None
    arms: tuple[str, ...] = DEFAULT_ARMS
    held_out: int = 48
    public_eval: int = 64
    base: str = "base-v1"
    update_base: str = "base-v2"
    public_data: str | None = None
    min_rate: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.users < 1:
            problems.append(f"users must be >= 1, not {self.users}")
        if self.days < 1:
            problems.append(f"days must be >= 1, not {self.days}")
        if self.update_day < 1:
            problems.append(
                f"update_day must be >= 1 (day 0 runs on the old base), not {self.update_day}"
            )
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            problems.append(f"arms must be among {', '.join(ARMS)}, not {list(self.arms)}")
        if self.held_out < 1 or self.public_eval < 1:
            problems.append("held_out and public_eval must be >= 1")
        if self.seed == PUBLIC_SEED:
            problems.append(
                f"seed {PUBLIC_SEED} is the public population the population adapters were "
                "trained on: evaluate another seed"
            )
        if not 0 <= self.min_rate <= MAX_RATE:
            problems.append(f"min_rate must be in [0, {MAX_RATE:g}], not {self.min_rate}")
        if problems:
            raise ConfigError("invalid simulation: " + "; ".join(problems))

    def user_indices(self) -> list[int]:
        """Population indices of the simulated users: the first ``users`` whose mean rate is
        at least ``min_rate`` (``0 .. users-1`` when ``min_rate`` is 0)."""
        if self.min_rate <= 0:
            return list(range(self.users))
        found: list[int] = []
        index = 0
        while len(found) < self.users:
            if User.draw(self.seed, index).rate >= self.min_rate:
                found.append(index)
            index += 1
        return found

    def base_policy(self) -> Policy:
        """The run's policy (before each arm's overrides)."""
        return default_policy() if self.policy is None else Policy.from_dict(self.policy)

    @property
    def has_update(self) -> bool:
        return self.update_day < self.days

    def base_on(self, day: int) -> str:
        """The base model serving on ``day``."""
        return self.update_base if self.has_update and day >= self.update_day else self.base


def day_end(day: int) -> datetime:
    """When the day's round runs: late evening of simulated day ``day`` (UTC)."""
    return datetime.combine(START + timedelta(days=day), clock(23, 30), tzinfo=UTC)
