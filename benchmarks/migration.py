"""How much personalization survives a base-model update, per migration strategy.

    python benchmarks/migration.py --json [--users 3] [--quick]

A few synthetic users (personas from the public corpus's world) are personalized with DP rounds
on the bundled base-v1; then each user's store is copied once per strategy and migrated to
base-v2 with ``distill``, ``retrain``, ``both`` and ``drop``. For each strategy it prints
``retained`` -- the personal gain on v2 after migration divided by the personal gain on v1
before (gain = relative drop of held-out personal loss vs the bare base of that version) --
and ``epsilon_charged``, the largest per-unit ε the migration itself added. Goal (issue 6):
distill retains >= 90% with zero ε charged.

``--train-noise none`` personalizes without noise (a non-private reference adapter with a
clear gain, so that ``retained`` measures the migration rather than the noise of a tiny DP
gain); ``dp`` (default) uses the library's CSPRNG noise. Migration is post-processing either way.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import personal  # noqa: F401  (must precede mlx: loads the fast BLAS)
from personal.errors import SeededNoiseWarning
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.evaluate import evaluate
from personal.model.tokenizer import encode_interaction
from personal.personalizer import Personalizer
from personal.store import RawKey

from personal_sim.public_corpus import generate_corpus
from personal_sim.public_data import corpus_public_data
from personal_sim.scenario import PassThroughNoise, default_policy
from personal_sim.world import SlotSkew, World

STRATEGIES = ("distill", "retrain", "both", "drop")


def persona(seed: int, n_train: int, n_test: int) -> tuple[list, list]:
    """A persona's training interactions and held-out requests (not seen in training)."""
    world = World.default()
    skew = SlotSkew.random(random.Random(seed), world, strength=3.0)
    data = generate_corpus(n_train + 4 * n_test, seed + 1, world, skew=skew)
    train = data[:n_train]
    seen = {(it.prompt, it.response) for it in train}
    test = [it for it in data[n_train:] if (it.prompt, it.response) not in seen][:n_test]
    return train, test


def personal_loss(model, tokenizer, examples) -> float:
    encoded = [encode_interaction(tokenizer, it.prompt, it.response) for it in examples]
    batches = [
        make_batch([e for e, _ in encoded[i : i + 16]], [s for _, s in encoded[i : i + 16]])
        for i in range(0, len(encoded), 16)
    ]
    return evaluate(model, batches).loss


def bare_loss(name: str, examples) -> float:
    base = load_base(name)
    return personal_loss(base.model, base.tokenizer, examples)


def policy(args: argparse.Namespace):
    """The simulator's default policy (``personal_sim.scenario``) with the run's knobs."""
    return default_policy().with_overrides({
        "privacy.noise_multiplier": args.sigma,
        "training.min_new_units": 1,
        "training.max_rounds_per_day": 1440,
        "training.steps": args.steps,
        "training.expected_batch_size": args.batch,
        "training.learning_rate": args.lr,
        "gates.max_general_regression": 1.0,  # permissive: compare strategies, not gates
        "gates.min_personal_gain": -1.0,
        "continual.replay_share": 0.0,
        "continual.public_replay_share": 0.0,
        "continual.ewc_lambda": 0.0,
        "migration.distill_steps": args.distill_steps,
        "store.synchronous": "NORMAL",
    })  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_user(user: int, args: argparse.Namespace, work: Path, bare: dict) -> dict:
    train, test = persona(1000 + user, args.train, args.test)
    key = RawKey(os.urandom(32))
    home = work / f"user{user}"
    chunk = max(1, len(train) // args.rounds)
    public = corpus_public_data()  # the corpus its figures were measured with
    with Personalizer.open(
        home, "base-v1", policy(args), key, create=True, public_data=public
    ) as p:
        for r in range(args.rounds):
            for it in train[r * chunk : (r + 1) * chunk]:
                p.log(it.prompt, it.response)
            p.update(**({"noise": PassThroughNoise()} if args.train_noise == "none" else {}))
        v1 = personal_loss(p.base.model, p.base.tokenizer, test)
        spent = dict(p.ledger.epsilons())
    v1_bare = bare.setdefault(("base-v1", user), bare_loss("base-v1", test))
    v2_bare = bare.setdefault(("base-v2", user), bare_loss("base-v2", test))
    gain_v1 = (v1_bare - v1) / v1_bare
    out = {"gain_v1": gain_v1}
    for strategy in STRATEGIES:
        copy = work / f"user{user}-{strategy}"
        shutil.copytree(home, copy)
        start = time.perf_counter()
        with Personalizer.open(copy, "base-v1", None, key, public_data=public) as p:
            p.on_base_update("base-v2", strategy=strategy)
            v2 = personal_loss(p.base.model, p.base.tokenizer, test)
            after = p.ledger.epsilons()
        charged = max((after[u] - spent.get(u, 0.0) for u in after), default=0.0)
        gain_v2 = (v2_bare - v2) / v2_bare
        out[strategy] = {
            "retained": gain_v2 / gain_v1 if gain_v1 > 0 else None,  # no gain to retain
            "gain_v2": gain_v2,
            "epsilon_charged": max(0.0, charged),
            "seconds": round(time.perf_counter() - start, 1),
        }
        log(f"user {user} {strategy}: {out[strategy]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--test", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=float, default=4096.0, help="expected batch (q = 1)")
    parser.add_argument("--lr", type=float, default=0.3, help="SGD learning rate")
    parser.add_argument("--sigma", type=float, default=2.8)
    parser.add_argument("--distill-steps", type=int, default=200)
    parser.add_argument("--train-noise", choices=("dp", "none"), default="dp")
    parser.add_argument("--quick", action="store_true", help="a smoke run (1 user, tiny)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.users, args.train, args.test, args.rounds = 1, 24, 12, 1
        args.steps, args.distill_steps = 4, 8
    warnings.simplefilter("ignore", SeededNoiseWarning)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="personal-migration-") as tmp:
        bare: dict = {}
        users = [run_user(u, args, Path(tmp), bare) for u in range(args.users)]

    def retained(strategy: str) -> float | None:
        values = [u[strategy]["retained"] for u in users if u[strategy]["retained"] is not None]
        return round(statistics.mean(values), 4) if values else None

    result = {
        "strategies": {
            s: {
                "retained": retained(s),
                "epsilon_charged": round(max(u[s]["epsilon_charged"] for u in users), 4),
                "retained_per_user": [u[s]["retained"] for u in users],
            }
            for s in STRATEGIES
        },
        "gain_v1": [round(u["gain_v1"], 4) for u in users],
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
