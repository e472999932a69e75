"""Build the bundled bases' public adapter banks: what ``training.update = "bank"`` trains on.

    python -m personal_sim.build_adapter_bank                   # base-v1 and base-v2
    python -m personal_sim.build_adapter_bank --bases base-v1 --members 8 --out /tmp/m

(``make adapter-banks``.) For each base, ``MEMBERS`` LoRA adapters in the ``default`` policy's
shape (rank 1 on ``o_proj`` + ``down_proj`` of the last 2 blocks), one per *public* synthetic
user ``User.draw(PUBLIC_SEED, i)``, ``i`` in ``0 .. MEMBERS-1``, each trained **without DP** on
that user's own ``DAYS``-day log: Adam at ``LEARNING_RATE``, ``STEPS`` steps of ``BATCH``
examples drawn with ``random.Random(SEED + i)``, optionally pulled to the base
(``--pull W``: W · KL(p_base ‖ p_θ) on the public corpus). One adapter per user, not one for
the population: the bank must span how users *differ* (their contacts, places, artists), which
a population average washes out. Written to ``<base>/bank/`` (:mod:`personal.adapters.bank`)
as the LoRA weights of the rank-``MEMBERS`` mixture. Public data only: the bank costs no ε
(docs/privacy.md); no simulation evaluates ``PUBLIC_SEED`` (``SimConfig`` refuses it).
The recipe was chosen by a pilot on base-v1 (docs/dp-utility.md, "The adapter bank").
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.adapters.bank import write_adapter_bank
from personal.adapters.population import PopulationAdapter
from personal.model.bank import AdapterBank
from personal.model.base import BaseModel, load_base
from personal.model.batching import Batch, make_batch
from personal.model.evaluate import scored_mean_loss
from personal.model.lora import (
    LoRAConfig,
    fresh_adapter_weights,
    get_adapter_weights,
    inject_lora,
    set_adapter_weights,
)
from personal.model.tokenizer import encode_interaction
from personal.policy import load_policy
from personal.public import public_batches
from personal.training.continual import distill_to_base_loss

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

from personal_sim.population import PUBLIC_SEED, User
from personal_sim.public_data import TRAIN_SEED, corpus_public_data

BASES = ("base-v1", "base-v2")
MEMBERS, DAYS = 32, 14
STEPS, BATCH, SEED = 25, 32, 0
LEARNING_RATE = 1e-3
PULL = 1.0
POLICY = "default"


def member_examples(index: int, days: int = DAYS) -> list[tuple[str, str]]:
    """What public user ``index`` logs over ``days`` days, in order."""
    user = User.draw(PUBLIC_SEED, index)
    return [(it.prompt, it.response) for day in range(days) for _, it in user.day(day, days)]


def train_member(
    base: BaseModel,
    examples: list[tuple[str, str]],
    pull_batches: list[Batch],
    *,
    steps: int,
    learning_rate: float,
    pull: float,
    seed: int,
) -> dict[str, mx.array]:
    """One member: the injected adapter trained from a fresh start on one public user's log."""
    model = base.model
    set_adapter_weights(model, fresh_adapter_weights(model, seed=seed))
    encoded = [encode_interaction(base.tokenizer, p, r) for p, r in examples]

    def loss(module: nn.Module, batch: Batch, anchor: Batch) -> mx.array:
        value = scored_mean_loss(module, batch)
        if pull > 0:
            value = value + pull * distill_to_base_loss(module, anchor)
        return value

    loss_and_grad = nn.value_and_grad(model, loss)
    optimizer = optim.Adam(learning_rate=learning_rate)
    rng = random.Random(seed)
    model.eval()
    for step in range(steps):
        picked = [encoded[rng.randrange(len(encoded))] for _ in range(BATCH)]
        batch = make_batch([e for e, _ in picked], [s for _, s in picked])
        _, grads = loss_and_grad(model, batch, pull_batches[(seed + step) % len(pull_batches)])
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    return {k: mx.array(v) for k, v in get_adapter_weights(model).items()}


def build(
    base_name: str,
    out: Path | None = None,
    *,
    members: int = MEMBERS,
    steps: int = STEPS,
    days: int = DAYS,
    learning_rate: float = LEARNING_RATE,
    pull: float = PULL,
    seed: int = SEED,
    log: Any = None,
) -> tuple[AdapterBank, PopulationAdapter]:
    """Train ``base_name``'s bank and write it to ``out/<base>/bank`` (``None``: the base's
    own directory, where the library looks for it)."""
    policy = load_policy(POLICY)
    shape = policy.training.lora.to_lora_config()
    base = load_base(base_name)
    inject_lora(base.model, shape)
    public = corpus_public_data().train
    pull_batches = public_batches(base.tokenizer, public, batch_size=BATCH)
    started = time.perf_counter()
    weights = []
    for index in range(members):
        weights.append(
            train_member(
                base, member_examples(index, days), pull_batches, steps=steps,
                learning_rate=learning_rate, pull=pull, seed=seed + index,
            )
        )  # fmt: skip
        if log is not None and (index + 1) % 8 == 0:
            took = time.perf_counter() - started
            log(f"{base.name}: {index + 1} of {members} members ({took:.0f} s)")
    bank = AdapterBank.from_members(weights)
    mixture = LoRAConfig(
        rank=members * shape.rank, scale=shape.scale, dropout=shape.dropout,
        targets=shape.targets, num_layers=shape.num_layers,
    )  # fmt: skip
    built = {
        "by": "python -m personal_sim.build_adapter_bank (make adapter-banks)",
        "population": {
            "generator": "personal_sim.population.User.draw", "seed": PUBLIC_SEED,
            "users": [0, members], "days": days, "one_member_per_user": True,
        },
        "policy": POLICY, "member_lora": shape.to_dict(), "optimizer": "adam",
        "learning_rate": learning_rate, "steps": steps, "batch_size": BATCH,
        "pull": pull,
        "public_data": {"name": "simulator public corpus", "split": "train", "seed": TRAIN_SEED},
        "seed": seed, "dp": False,
    }  # fmt: skip
    stored = write_adapter_bank(
        Path(base.path) if out is None else out / base.name, bank,
        base_fingerprint=base.fingerprint, base_name=base.name, lora=mixture, built=built,
        measured={"build_seconds": round(time.perf_counter() - started, 1)},
    )  # fmt: skip
    return bank, stored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m personal_sim.build_adapter_bank", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="write OUT/<base>/bank/ (default: into each base's own directory)",
    )  # fmt: skip
    parser.add_argument("--bases", nargs="+", default=list(BASES))
    parser.add_argument("--members", type=int, default=MEMBERS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--pull", type=float, default=PULL)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for name in args.bases:
        bank, stored = build(
            name, args.out, members=args.members, steps=args.steps, days=args.days,
            learning_rate=args.learning_rate, pull=args.pull, seed=args.seed, log=print,
        )  # fmt: skip
        print(json.dumps({"base": name, "digest": stored.digest, "members": bank.members}))


if __name__ == "__main__":
    main()
