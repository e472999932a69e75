"""Pilot (issue 17): DP on K mixing coefficients of a public adapter bank vs DP on the adapter.

The experiment that motivated ``training.update = "bank"`` (docs/dp-utility.md, "The adapter
bank"), kept so its numbers can be reproduced. On ``--base`` (base-v1):

* **the bank**: ``--k`` public users (``PUBLIC_SEED``), each a LoRA adapter in the default
  policy's shape trained without DP on their own 14-day log (Adam 1e-3, ``--bank-steps`` × 32
  examples, ``--member-pull`` · KL(p_base ‖ p_θ) on public text);
* **each evaluated user** (seed 0, the first ``--users``): one full-batch DP round on everything
  they logged on days 0..12 (σ ``--sigma``, C ``--clip``, 4 steps of plain SGD: the shipped
  charge, ε 7.6 per unit), measured on day 13's held-out requests against the bare base: the
  loss gain, slot accuracy (points) and the general drift on the simulator's public probe;
* arms: ``lora-dp`` (the default shape's adapter, from zero, ``--lrs``), ``bank-dp`` and
  ``bank-nondp`` (the coefficients, ``--bank-lrs``; σ 0 for non-DP), each with
  ``--round-pull`` · the pull to the base per step.

This is a simplified round (one round over 13 days of data, no gates, no step guard, no warm
start), so it bounds what the bank can do; ``benchmarks/dp_utility.py --arms dp-bank ...``
measures the shipped round in the simulator. Prints one JSON line per user, then a summary.

    python benchmarks/bank_pilot.py --k 32 --users 8 --member-pull 1 --round-pull 1 \\
        --bank-lrs 2,4,8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from dataclasses import replace
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.model.bank import AdapterBank, bank_training
from personal.model.base import load_base
from personal.model.batching import Batch, make_batch
from personal.model.evaluate import evaluate, scored_mean_loss
from personal.model.lora import get_adapter_weights, inject_lora, remove_lora
from personal.model.tokenizer import encode_interaction
from personal.policy import load_policy
from personal.privacy.dpsgd import clipped_unit_sum, example_ce_loss
from personal.privacy.noise import GaussianNoise
from personal.public import public_batches
from personal.training.continual import distill_to_base_loss
from personal.training.gates import general_loss

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from personal_sim.population import PUBLIC_SEED, User
from personal_sim.public_data import corpus_eval_examples, corpus_public_data
from personal_sim.slots import slot_accuracy

DAYS = 14


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="base-v1")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--bank-steps", type=int, default=25)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--lrs", default="0.6")
    ap.add_argument("--bank-lrs", default="2,8")
    ap.add_argument("--sigma", type=float, default=1.6)
    ap.add_argument("--clip", type=float, default=0.5)
    ap.add_argument("--held", type=int, default=96)
    ap.add_argument("--member-pull", type=float, default=5.0)
    ap.add_argument("--round-pull", type=float, default=5.0)
    args = ap.parse_args()

    base = load_base(args.base)
    model, tok = base.model, base.tokenizer
    lcfg = load_policy("default").training.lora.to_lora_config()
    probe = public_batches(tok, corpus_eval_examples(64))
    bare_general = general_loss(model, probe)
    pull_batches = public_batches(tok, corpus_public_data().train[:2048])
    pull_at = [0]
    norms: list[float] = []

    def encoded(interactions: list[Any]) -> list[tuple[list[int], int]]:
        return [encode_interaction(tok, it.prompt, it.response) for it in interactions]

    def batches_of(interactions: list[Any], size: int = 32) -> list[Batch]:
        enc = encoded(interactions)
        return [
            make_batch([e for e, _ in enc[i : i + size]], [s for _, s in enc[i : i + size]])
            for i in range(0, len(enc), size)
        ]

    def random_batches(interactions: list[Any], steps: int, rng: random.Random) -> list[Batch]:
        enc, out = encoded(interactions), []
        for _ in range(steps):
            pick = [enc[rng.randrange(len(enc))] for _ in range(32)]
            out.append(make_batch([e for e, _ in pick], [s for _, s in pick]))
        return out

    # --- the bank: one member per public user ---
    started, members = time.time(), []
    for i in range(args.k):
        user = User.draw(PUBLIC_SEED, i)
        log = [it for d in range(DAYS) for _, it in user.day(d, DAYS)]
        inject_lora(model, lcfg, seed=i)
        opt = optim.Adam(learning_rate=1e-3)
        vg = nn.value_and_grad(
            model,
            lambda m, b, a: scored_mean_loss(m, b) + args.member_pull * distill_to_base_loss(m, a),
        )
        for step, batch in enumerate(random_batches(log, args.bank_steps, random.Random(i))):
            _, grads = vg(
                model, batch, pull_batches[(i * args.bank_steps + step) % len(pull_batches)]
            )
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state)
        members.append(dict(get_adapter_weights(model)))
        remove_lora(model)
    bank = AdapterBank.from_members(members)
    mixture = replace(lcfg, rank=bank.members * bank.rank)  # the mixture's LoRA: rank K·r
    print(json.dumps({"bank_built_s": round(time.time() - started, 1), "k": args.k}), flush=True)

    def dp_round(interactions: list[Any], lr: float, sigma: float, steps: int = 4) -> None:
        """Full batch (q = 1), per-unit clip C, noise σC on the sum, SGD plus the pull."""
        chunks, n, noise = batches_of(interactions, 64), len(interactions), GaussianNoise()
        for _ in range(steps):
            total: dict[str, mx.array] = {}
            for b in chunks:
                rows = b.inputs.shape[0]
                sums, unit_norms, _, _ = clipped_unit_sum(
                    model, example_ce_loss, (b.inputs, b.targets, b.mask),
                    mx.arange(rows), mx.ones((rows,)), args.clip,
                )  # fmt: skip
                mx.eval(sums)
                norms.extend(unit_norms.tolist())
                total = {k: total[k] + v for k, v in sums.items()} if total else sums
            released = noise.privatize_tree(total, sigma * args.clip) if sigma > 0 else total
            params = dict(tree_flatten(model.trainable_parameters()))
            pull = {k: mx.zeros_like(v) for k, v in params.items()}
            if args.round_pull > 0:  # the shipped recipe's free pull to the base
                batch = pull_batches[pull_at[0] % len(pull_batches)]
                pull_at[0] += 1
                pull = dict(
                    tree_flatten(nn.value_and_grad(model, distill_to_base_loss)(model, batch)[1])
                )
            model.update(tree_unflatten([
                (k, params[k] - lr * (released[k] / n + args.round_pull * pull[k])) for k in params
            ]))  # fmt: skip
            mx.eval(model.parameters())

    def measure(held_batches: list[Batch], held: list[Any]) -> tuple[float, float, float]:
        loss = evaluate(model, held_batches).loss
        return loss, slot_accuracy(model, tok, held)["slot_accuracy"], general_loss(model, probe)

    rows = []
    for index in range(args.users):
        user = User.draw(0, index)
        logged = [it for d in range(DAYS - 1) for _, it in user.day(d, DAYS)]
        held = user.held_out(DAYS - 1, DAYS, args.held)
        held_batches = batches_of(held)
        bare_loss, bare_slot, _ = measure(held_batches, held)
        row: dict[str, Any] = {
            "user": index, "kind": user.kind, "units": len(logged), "bare_slot": round(bare_slot, 3)
        }  # fmt: skip
        if len(logged) >= 32:
            configs = [("lora-dp", float(lr), args.sigma) for lr in args.lrs.split(",")]
            configs += [("bank-dp", float(lr), args.sigma) for lr in args.bank_lrs.split(",")]
            configs += [("bank-nondp", float(lr), 0.0) for lr in args.bank_lrs.split(",")]
            for name, lr, sigma in configs:
                on_bank = name.startswith("bank")
                inject_lora(model, mixture if on_bank else lcfg, seed=0)
                norms.clear()
                # On the bank only the coefficients train (personal.model.bank); after the
                # block the model serves their mixture, a plain LoRA adapter.
                with bank_training(model, bank) if on_bank else contextlib.nullcontext():
                    dp_round(logged, lr, sigma)
                loss, slot, general = measure(held_batches, held)
                row[f"{name}@{lr:g}"] = {
                    "gain": round((bare_loss - loss) / bare_loss, 4),
                    "slot": round(slot - bare_slot, 3),
                    "drift": round((general - bare_general) / bare_general, 4),
                    "norm": round(statistics.median(norms), 4),
                }
                remove_lora(model)
        rows.append(row)
        print(json.dumps(row), flush=True)

    summary = {}
    for key in sorted({k for r in rows for k in r if "@" in k}):
        values = [r[key] for r in rows if key in r]
        summary[key] = {
            m: round(sum(v[m] for v in values) / len(values), 4)
            for m in ("gain", "slot", "drift", "norm")
        }
        summary[key]["n"] = len(values)
    bare = round(sum(r["bare_slot"] for r in rows) / len(rows), 4)
    print(json.dumps({"summary": summary, "bare_slot_mean": bare}), flush=True)


if __name__ == "__main__":
    main()
