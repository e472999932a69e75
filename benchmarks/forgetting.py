"""Forgetting under continual DP personalization: replay and EWC arms on the bundled base v1.

An experiment, not a test. A few synthetic users (personas of :mod:`personal_sim.world`, strength
3) each log interactions into a real encrypted store and call
:meth:`personal.Personalizer.update` once per round. Their topics drift: in phase A (the first
half of the rounds) they ask about one set of intents, in phase B about another. Five arms, each
a variant of the ``research`` policy, see exactly the same users, interactions, Poisson coins
and noise draws (common random numbers; the replay buffer's coins are the library's CSPRNG):

* ``none``: no private replay, no public replay, no EWC;
* ``replay``: private replay from the reservoir buffer (charged) + public replay (free) as
  distillation to the base: every step adds ``public_distill_weight``·∇KL(p_base ‖ p_adapted)
  on a public-corpus batch;
* ``ewc``: online EWC only;
* ``replay_ewc``: both;
* ``replay_ewc_nodp``: ``replay_ewc`` without noise -- a **non-private reference**. Gradients are
  still clipped per unit and the ledger still charges the nominal σ, but the noise source (the
  simulator's ``PassThroughNoise``) releases the clipped sums and the gate's personal metric
  unchanged, and the lifetime ε is raised to 100 so that no unit is ever
  excluded. Its ε numbers mean nothing: nothing it trains is private.

Measured with :func:`personal.model.evaluate.evaluate` (token-weighted loss on response tokens):

* ``personal_gain``: relative drop, at the end, of the loss on the user's held-out personal
  examples of both phases against the bare base (no adapter);
* ``general_loss_increase``: relative rise of the loss on held-out public-corpus examples (the
  base's own test stream) against the bare base, at the end;
* ``old_personal_retained``: gain on phase-A held-out examples at the end / gain on them right
  after phase A (over the mean of the users' gains; per-user values are in ``per_user``).

Gates are made permissive (``max_general_regression = 1``, ``min_personal_gain = -1``) so that
every arm's adapters activate and the arms stay comparable.

    python benchmarks/forgetting.py --json            # default run (~25 min on 2 cores)
    python benchmarks/forgetting.py --json --quick    # smoke run (~1-2 min)

Progress goes to stderr, the JSON to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.errors import SeededNoiseWarning
from personal.model.batching import Batch, make_batch
from personal.model.evaluate import evaluate
from personal.model.tokenizer import encode_interaction
from personal.personalizer import Personalizer
from personal.policy import Policy, load_policy
from personal.privacy.noise import GaussianNoise
from personal.store import RawKey

from personal_sim.public_corpus import Interaction, sample_interaction, split
from personal_sim.public_data import corpus_public_data
from personal_sim.scenario import PassThroughNoise
from personal_sim.world import SlotSkew, World

ARMS = ("none", "replay", "ewc", "replay_ewc", "replay_ewc_nodp")
#: Phase A and phase B topics (disjoint; "question" is left out: it carries no persona).
INTENTS_A = ("call", "message", "music", "navigation")
INTENTS_B = ("calendar", "reminder", "weather", "smalltalk")
#: Seed of the public held-out stream: the base's own test stream (split(0, ...).test, with
#: everything in the base's 24000 training interactions excluded).
PUBLIC_SEED, BASE_TRAIN = 0, 24000
NODP_LIFETIME_EPSILON = 100.0


@dataclass(frozen=True)
class Config:
    """Everything that defines a run (printed in the JSON)."""

    # Six: the personal gain of groups of three users swings too much (docs/continual.md).
    users: int = 6
    rounds: int = 10
    per_round: int = 48
    eval_per_phase: int = 48
    public_eval: int = 128
    seed: int = 0
    base: str = "base-v1"
    lifetime_epsilon: float = 8.0
    noise_multiplier: float = 2.8
    clip_norm: float = 0.5
    steps: int = 4
    # Plain SGD: Adam rescales every coordinate to a step of ~lr, so when DP noise dominates
    # most coordinates it turns the noise into a random walk of the whole adapter.
    learning_rate: float = 0.3
    optimizer: str = "sgd"
    expected_batch_size: float = 4096.0
    max_tokens: int = 40
    # Few trainable parameters: the noise norm grows with their number, the clipped signal
    # does not (all-linear rank 2 on two blocks was noise-dominated on base-v1).
    lora_rank: int = 1
    lora_targets: str = "self_attn.o_proj,mlp.down_proj"  # or "all-linear"
    lora_num_layers: str = "2"
    replay_share: float = 0.25
    # Public replay as distillation to the base (free): g + w * grad KL(base || adapted) on
    # public text. Cross-entropy replay on the public corpus's labels (public_replay_share) is
    # off: on the 256 public replay examples it pulls towards fitting them, not towards the base.
    public_replay_share: float = 0.0
    public_distill_weight: float = 5.0
    public_batch_size: int = 32
    ewc_lambda: float = 10.0
    fisher_source: str = "public"
    arms: tuple[str, ...] = ARMS

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "arms": list(self.arms)}


QUICK = {"users": 1, "rounds": 4, "per_round": 24, "eval_per_phase": 16, "public_eval": 32}


# --- users -----------------------------------------------------------------------------------


@dataclass
class User:
    """One persona's rounds of interactions and held-out examples per phase."""

    index: int
    rounds: list[list[Interaction]]
    held_out_a: list[Interaction]
    held_out_b: list[Interaction]


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def _draw(
    rng: random.Random, world: World, skew: SlotSkew, intents: Sequence[str], n: int
) -> list[Interaction]:
    """``n`` interactions of the persona restricted to ``intents`` (its own mix among them)."""
    weights = [world.intent_weights[i] * skew.intent_boost.get(i, 1.0) for i in intents]
    return [
        sample_interaction(rng, world, intent=rng.choices(intents, weights=weights)[0], skew=skew)
        for _ in range(n)
    ]


def make_user(index: int, config: Config) -> User:
    """A persona with topic drift: phase A intents, then phase B intents (seeded)."""
    world = World.default()
    skew = SlotSkew.random(random.Random(_seed(config.seed, "persona", index)), world, strength=3.0)
    rng = random.Random(_seed(config.seed, "interactions", index))
    half = config.rounds // 2
    rounds = [
        _draw(rng, world, skew, INTENTS_A if r < half else INTENTS_B, config.per_round)
        for r in range(config.rounds)
    ]
    seen = {(it.prompt, it.response) for batch in rounds for it in batch}

    def held_out(intents: Sequence[str], name: str) -> list[Interaction]:
        held_rng, out = random.Random(_seed(config.seed, name, index)), []
        while len(out) < config.eval_per_phase:
            (it,) = _draw(held_rng, world, skew, intents, 1)
            if (it.prompt, it.response) not in seen:  # never seen in training
                out.append(it)
        return out

    return User(index, rounds, held_out(INTENTS_A, "held-out-a"), held_out(INTENTS_B, "held-out-b"))


def public_held_out(n: int) -> list[Interaction]:
    """Public-corpus examples the base never trained on (its test stream)."""
    return split(PUBLIC_SEED, BASE_TRAIN, 0, n, exclude_seen=True).test


def batches(tokenizer: Any, items: Sequence[Interaction], size: int = 32) -> list[Batch]:
    """Response-token batches (as :func:`personal.public.public_batches` builds them)."""
    encoded = [encode_interaction(tokenizer, it.prompt, it.response) for it in items]
    return [
        make_batch([ids for ids, _ in encoded[i : i + size]], [s for _, s in encoded[i : i + size]])
        for i in range(0, len(encoded), size)
    ]


# --- arms ------------------------------------------------------------------------------------


def arm_policy(arm: str, config: Config) -> Policy:
    """The ``research`` policy with the run's knobs and the arm's mitigations."""
    replay = arm in ("replay", "replay_ewc", "replay_ewc_nodp")
    ewc = arm in ("ewc", "replay_ewc", "replay_ewc_nodp")
    nodp = arm == "replay_ewc_nodp"
    return load_policy("research").with_overrides({
        "privacy.lifetime_epsilon": NODP_LIFETIME_EPSILON if nodp else config.lifetime_epsilon,
        "privacy.noise_multiplier": config.noise_multiplier,
        "privacy.clip_norm": config.clip_norm,
        "training.min_new_units": 1,
        "training.max_rounds_per_day": 1440,
        "training.steps": config.steps,
        "training.learning_rate": config.learning_rate,
        "training.optimizer": config.optimizer,
        "training.expected_batch_size": config.expected_batch_size,
        "training.max_tokens": config.max_tokens,
        "training.examples_per_unit": 1,
        "training.lora.rank": config.lora_rank,
        "training.lora.targets": (
            config.lora_targets if config.lora_targets == "all-linear"
            else config.lora_targets.split(",")
        ),
        "training.lora.num_layers": (
            config.lora_num_layers if config.lora_num_layers == "all"
            else int(config.lora_num_layers)
        ),
        "continual.replay_share": config.replay_share if replay else 0.0,
        "continual.public_replay_share": config.public_replay_share if replay else 0.0,
        "continual.public_distill_weight": config.public_distill_weight if replay else 0.0,
        "continual.public_batch_size": config.public_batch_size,
        "continual.ewc_lambda": config.ewc_lambda if ewc else 0.0,
        "continual.fisher_source": config.fisher_source,
        "gates.max_general_regression": 1.0,
        "gates.min_personal_gain": -1.0,
    })  # fmt: skip


# --- one user under one arm ------------------------------------------------------------------


def _losses(model: Any, sets: Mapping[str, list[Batch]]) -> dict[str, float]:
    """Token-weighted losses per set, plus ``personal``: old and recent pooled."""
    results = {name: evaluate(model, b) for name, b in sets.items()}
    old, recent = results["old"], results["recent"]
    pooled = (old.loss * old.tokens + recent.loss * recent.tokens) / (old.tokens + recent.tokens)
    return {"personal": pooled, **{name: r.loss for name, r in results.items()}}


def run_user(
    arm: str, user: User, config: Config, public: list[Interaction], every_round: bool = False
) -> dict[str, Any]:
    """Run ``config.rounds`` rounds for ``user`` under ``arm``; the losses it needs.

    The held-out sets are scored before the first round (the bare base: LoRA's B starts at
    zero), after phase A and at the end (``every_round``: after every round). The gate's own
    public loss (another public held-out set, scored by every round anyway) gives the general
    loss after every round for free.
    """
    policy = arm_policy(arm, config)
    started = time.perf_counter()
    half = config.rounds // 2
    trajectory: list[dict[str, Any]] = []
    scored: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="forgetting-") as tmp:
        key = RawKey(os.urandom(32))
        with Personalizer.open(
            Path(tmp) / "store", config.base, policy, key, create=True,
            public_data=corpus_public_data(),  # the corpus its figures were measured with
        ) as p:  # fmt: skip
            model, tokenizer = p.base.model, p.base.tokenizer
            sets = {
                "old": batches(tokenizer, user.held_out_a),
                "recent": batches(tokenizer, user.held_out_b),
                "general": batches(tokenizer, public),
            }
            scored[0] = _losses(model, sets)
            for r, interactions in enumerate(user.rounds, 1):
                for it in interactions:
                    p.log(it.prompt, it.response)
                seed = _seed(config.seed, "round", user.index, r)
                noise = PassThroughNoise() if arm == "replay_ewc_nodp" else GaussianNoise(seed=seed)
                report = p.update(noise=noise, sampler_seed=seed % 2**31)
                gate = report.gates or {}
                if every_round or r in (half, config.rounds):
                    scored[r] = _losses(model, sets)
                trajectory.append({
                    "round": r, **{k: round(v, 5) for k, v in scored.get(r, {}).items()},
                    "gate_general_before": gate.get("general_loss_before"),
                    "gate_general_after": gate.get("general_loss_after"),
                    "train_loss": _mean(report.train_loss), "replayed": report.replayed,
                    "clipped_fraction": round(report.clipped_fraction, 3),
                    "eligible": report.eligible, "excluded": report.excluded,
                    "activated": report.adapter_version is not None,
                })  # fmt: skip
                losses = " ".join(f"{k} {v:.4f}" for k, v in scored.get(r, {}).items())
                print(
                    f"  [{arm}] user {user.index} round {r}/{config.rounds}: {losses} "
                    f"gate-general {gate.get('general_loss_after', float('nan')):.4f} "
                    f"({report.eligible} eligible, {report.excluded} excluded, "
                    f"{report.replayed} replayed, {time.perf_counter() - started:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            epsilons = p.ledger.epsilons()
    base, mid, end = scored[0], scored[half], scored[config.rounds]
    gain = lambda key, at: 1.0 - at[key] / base[key]  # noqa: E731
    gate_base = trajectory[0]["gate_general_before"]
    gate_max = max(t["gate_general_after"] for t in trajectory)
    return {
        "user": user.index,
        "base": base,
        "personal_gain": gain("personal", end),
        "recent_personal_gain": gain("recent", end),
        "old_gain_after_phase_a": gain("old", mid),
        "old_gain_end": gain("old", end),
        "general_loss_increase": end["general"] / base["general"] - 1.0,
        "general_loss_increase_after_phase_a": mid["general"] / base["general"] - 1.0,
        "gate_general_increase_max": gate_max / gate_base - 1.0,
        "epsilon_max": max(epsilons.values(), default=0.0),
        "rounds_activated": sum(t["activated"] for t in trajectory),
        "units_excluded": sum(t["excluded"] for t in trajectory),
        "units_replayed": sum(t["replayed"] for t in trajectory),
        "seconds": time.perf_counter() - started,
        "trajectory": trajectory,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and v == v]
    return round(sum(finite) / len(finite), 4) if finite else None


def summarize(per_user: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over users; ``old_personal_retained`` as a ratio of mean gains."""
    mean = lambda key: sum(u[key] for u in per_user) / len(per_user)  # noqa: E731
    after_a = mean("old_gain_after_phase_a")
    return {
        "personal_gain": mean("personal_gain"),
        "general_loss_increase": mean("general_loss_increase"),
        "old_personal_retained": mean("old_gain_end") / after_a if after_a else None,
        "recent_personal_gain": mean("recent_personal_gain"),
        "old_gain_after_phase_a": after_a,
        "old_gain_end": mean("old_gain_end"),
        "general_loss_increase_after_phase_a": mean("general_loss_increase_after_phase_a"),
        "gate_general_increase_max": mean("gate_general_increase_max"),
        "epsilon_max": max(u["epsilon_max"] for u in per_user),
        "rounds_activated": sum(u["rounds_activated"] for u in per_user),
        "units_excluded": sum(u["units_excluded"] for u in per_user),
        "units_replayed": sum(u["units_replayed"] for u in per_user),
        "seconds": sum(u["seconds"] for u in per_user),
        "per_user": per_user,
    }


def goals(arms: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's goals, as far as the arms run allow checking them."""
    out: dict[str, Any] = {}
    if "replay_ewc" in arms:
        increase = arms["replay_ewc"]["general_loss_increase"]
        out["replay_ewc_general_loss_increase"] = increase
        out["replay_ewc_general_loss_increase_le_1pct"] = increase <= 0.01
        if "none" in arms and arms["none"]["personal_gain"] > 0:
            share = arms["replay_ewc"]["personal_gain"] / arms["none"]["personal_gain"]
            out["replay_ewc_gain_share_of_none"] = share
            out["replay_ewc_gain_ge_90pct_of_none"] = share >= 0.9
        if "replay_ewc_nodp" in arms and arms["replay_ewc_nodp"]["personal_gain"] > 0:
            share = arms["replay_ewc"]["personal_gain"] / arms["replay_ewc_nodp"]["personal_gain"]
            out["dp_gain_share_of_nodp"] = share
            out["dp_gain_ge_70pct_of_nodp"] = share >= 0.7
    return out


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> tuple[Config, bool, bool, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 user, 4 rounds")
    parser.add_argument(
        "--verbose", action="store_true", help="score after every round, keep per-round data"
    )
    defaults = Config()
    for name, value in defaults.__dict__.items():
        if name == "arms":
            parser.add_argument("--arms", nargs="+", choices=ARMS, default=None)
            continue
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=None, help=f"default {value}")
    args = parser.parse_args(argv)
    chosen = {**(QUICK if args.quick else {})}
    chosen.update({k: v for k, v in vars(args).items() if k in defaults.__dict__ and v is not None})
    if "arms" in chosen:
        chosen["arms"] = tuple(chosen["arms"])
    config = Config(**chosen)
    if config.rounds < 2:
        parser.error("--rounds must be at least 2 (phase A and phase B)")
    return config, args.json, args.verbose, args.quick


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    config, as_json, verbose, quick = parse_args(argv)
    started = time.perf_counter()
    warnings.simplefilter("ignore", SeededNoiseWarning)  # common random numbers, on purpose
    users = [make_user(i, config) for i in range(config.users)]
    public = public_held_out(config.public_eval)
    print(
        f"forgetting: {config.users} users x {config.rounds} rounds x {config.per_round} "
        f"interactions, arms {', '.join(config.arms)}",
        file=sys.stderr,
        flush=True,
    )
    arms: dict[str, Any] = {}
    for arm in config.arms:
        per_user = [run_user(arm, user, config, public, verbose) for user in users]
        if not verbose:
            for u in per_user:
                u.pop("trajectory")
        arms[arm] = summarize(per_user)
        a = arms[arm]
        print(
            f"{arm}: personal_gain {a['personal_gain']:+.4f} general_loss_increase "
            f"{a['general_loss_increase']:+.4f} old_personal_retained "
            f"{a['old_personal_retained']} ({a['seconds']:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    result = {
        "arms": arms,
        "goals": goals(arms),
        "config": {
            **config.to_dict(),
            "quick": quick,
            "policy": "research + overrides (see arm_policy)",
            "intents_phase_a": list(INTENTS_A),
            "intents_phase_b": list(INTENTS_B),
            "gates": "permissive: max_general_regression=1.0, min_personal_gain=-1.0 (the "
            "personal check is off) so every adapter activates",
            "noise": "seeded GaussianNoise per user and round, the same across DP arms "
            "(common random numbers); replay_ewc_nodp: no noise, lifetime epsilon "
            f"{NODP_LIFETIME_EPSILON} (non-private reference)",
            "public_held_out": f"split({PUBLIC_SEED}, {BASE_TRAIN}, 0, n, exclude_seen=True).test",
        },
        "seconds": time.perf_counter() - started,
    }
    if as_json:
        print(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
