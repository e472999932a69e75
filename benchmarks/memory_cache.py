"""Benchmark: how personal memory's token cache is tuned (its shipped defaults), on public users.

The token cache (``personal.model.token_cache``) mixes each next-token distribution with one
over the tokens that followed similar contexts in the recalled past replies:
``(1 - λ) p_model + λ p_cache``, ``p_cache`` a softmax of ``θ · cos(h, k_i)``. This script
measures, on synthetic users the simulator never evaluates (``User.draw(PUBLIC_SEED, i)``,
``i`` from 1000: the public population the population adapter is checked on), for a grid of
``λ`` (weight), ``θ`` (temperature) and ``k`` (interactions recalled):

* ``gain``: the held-out loss gain on the last day's requests (never logged) against the
  bare base without memory, token-weighted over all users (1 - loss / bare loss);
* ``slot_accuracy``: the share of slot requests (a contact, place, artist or time the reply
  names and the request does not: ``personal_sim.slots``) whose greedy reply names the right
  value, for a few settings (greedy generation is the slow part);
* the same for personal memory as earlier chat turns (``"context"``, 3 turns) for reference.

Every user logs ``--days - 1`` days into a real encrypted store; the last day's requests are
held out. The settings with the best gain pick the defaults in
``personal.model.token_cache`` and ``personal.memory.CACHE_K`` (docs/memory.md).

    python benchmarks/memory_cache.py --json            # base-v1 and base-v2, ~10 min
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.memory import CACHE_K
from personal.model.evaluate import evaluate
from personal.model.token_cache import (
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHT,
    CacheSettings,
    evaluate_with_caches,
)
from personal.personalizer import Personalizer
from personal.policy import load_policy
from personal.store import RawKey

from personal_sim.population import PUBLIC_SEED, User
from personal_sim.slots import slot_accuracy
from personal_sim.user_task import _batches

WEIGHTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
TEMPERATURES = (10.0, 20.0, 50.0)
KS = (4, 8, 16)
#: Settings whose slot accuracy is measured too (k, λ, θ).
SLOT_SETTINGS = (
    (8, 0.1, 20.0), (8, 0.15, 20.0), (8, 0.2, 20.0), (8, 0.3, 20.0), (8, 0.3, 50.0),
    (8, 0.5, 20.0), (16, 0.15, 20.0),
)  # fmt: skip
#: The shipped defaults (k, λ, θ): reported apart.
SHIPPED = f"{CACHE_K}/{DEFAULT_WEIGHT}/{DEFAULT_TEMPERATURE}"


def one_user(base: str, index: int, days: int, held: int) -> dict[str, Any]:
    user = User.draw(PUBLIC_SEED, 1000 + index)
    held_out = user.held_out(days - 1, days, held)
    exchanges = [(it.prompt, it.response) for it in held_out]
    # The bare base (no population warm start): what memory alone does.
    policy = load_policy("default").with_overrides({"training.warm_start": "none"})
    with (
        tempfile.TemporaryDirectory() as tmp,
        Personalizer.open(tmp, base, policy, RawKey(os.urandom(32)), create=True, memory=True) as p,
    ):
        for day in range(days - 1):
            for ts, it in user.day(day, days):
                p.log(it.prompt, it.response, ts=ts)
        model, tok = p.base.model, p.base.tokenizer
        bare = evaluate(model, _batches(tok, held_out))
        row: dict[str, Any] = {"tokens": bare.tokens, "bare_loss_sum": bare.loss * bare.tokens}
        grid: dict[str, float] = {}
        caches = {k: [p.memory_cache(prompt, k)[0] for prompt, _ in exchanges] for k in KS}
        for k in KS:
            for weight in WEIGHTS:
                for temperature in TEMPERATURES:
                    settings = CacheSettings(weight, temperature)
                    result = evaluate_with_caches(model, tok, exchanges, caches[k], settings)
                    grid[f"{k}/{weight}/{temperature}"] = result.loss * result.tokens
        row["grid"] = grid
        turns = [p.memory_context(prompt)[0] for prompt, _ in exchanges]
        context = evaluate(model, _batches(tok, held_out, histories=turns))
        row["context_loss_sum"] = context.loss * context.tokens
        slots: dict[str, Any] = {"bare": slot_accuracy(model, tok, held_out)}
        slots["context"] = slot_accuracy(model, tok, held_out, histories=turns)
        for k, weight, temperature in SLOT_SETTINGS:
            slots[f"{k}/{weight}/{temperature}"] = slot_accuracy(
                model, tok, held_out, caches=caches[k],
                cache_settings=CacheSettings(weight, temperature),
            )  # fmt: skip
        row["slots"] = {name: [s["slot_hits"], s["slot_requests"]] for name, s in slots.items()}
    return row


def run(base: str, users: int, days: int, held: int) -> dict[str, Any]:
    rows = [one_user(base, i, days, held) for i in range(users)]
    tokens = sum(r["tokens"] for r in rows)
    bare = sum(r["bare_loss_sum"] for r in rows) / tokens

    def gain(loss_sum: float) -> float:
        return round(1.0 - loss_sum / tokens / bare, 5)

    grid = {name: gain(sum(r["grid"][name] for r in rows)) for name in rows[0]["grid"]}
    best = max(grid, key=grid.__getitem__)
    slots = {}
    for name in rows[0]["slots"]:
        hits = sum(r["slots"][name][0] for r in rows)
        asked = sum(r["slots"][name][1] for r in rows)
        slots[name] = round(hits / asked, 4) if asked else None
    return {
        "users": users,
        "held_out_tokens": tokens,
        "bare_loss": round(bare, 5),
        "gain": grid,
        "best": {"setting": best, "gain": grid[best]},
        "context_gain": gain(sum(r["context_loss_sum"] for r in rows)),
        "slot_accuracy": slots,
        "shipped": {
            "setting": SHIPPED,
            "gain": grid[SHIPPED],
            "slot_accuracy": slots.get(SHIPPED),
            "users_improved": sum(r["grid"][SHIPPED] < r["bare_loss_sum"] for r in rows),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bases", nargs="+", default=["base-v1", "base-v2"])
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--held-out", type=int, default=48)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "keys": "k/weight/temperature",
        "public_seed": PUBLIC_SEED,
        "days": args.days,
        "bases": {b: run(b, args.users, args.days, args.held_out) for b in args.bases},
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
