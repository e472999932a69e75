"""The demo `make demo` runs: personalize the bundled base-v1 to one synthetic user.

    python -m simulators.demo [--base base-v1] [--steps 40] [--seed 7]

A persona is drawn from the same world as the public corpus (their contacts, places, music,
wording); a handful of their interactions train a LoRA adapter for a few *non-private* steps
(differentially private rounds come with the privacy engine); the demo prints the model's
answers and confidence on held-out requests of the same user before and after.
"""

from __future__ import annotations

import argparse
import random
import time

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.model.base import load_base
from personal.model.batching import make_batch
from personal.model.evaluate import evaluate
from personal.model.generate import generate
from personal.model.lora import LoRAConfig, inject_lora
from personal.model.tokenizer import encode_interaction
from personal.model.train import train

import mlx.optimizers as optim
import numpy as np

from simulators.public_corpus import generate_corpus
from simulators.world import SlotSkew, World


def persona_data(seed: int, n_train: int, n_test: int):
    """A persona's interactions: a training handful and held-out requests of the same user."""
    world = World.default()
    skew = SlotSkew.random(random.Random(seed), world, strength=3.0)
    data = generate_corpus(n_train + n_test, seed + 1, world, skew=skew)
    # Held-out requests: not seen verbatim in training, so gains are generalisation.
    train_set = data[:n_train]
    seen = {it.prompt for it in train_set}
    test_set = [it for it in data[n_train:] if it.prompt not in seen][:n_test]
    return train_set, test_set


def show(title: str, base, prompts: list[str]) -> None:
    print(f"\n{title}")
    for prompt in prompts:
        out = generate(base.model, base.tokenizer, prompt, max_tokens=32)
        print(f"  user: {prompt}\n    -> {out.text!r}  (confidence {out.confidence:.2f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.demo", description=__doc__)
    parser.add_argument("--base", default="base-v1", help="bundled name or model directory")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train", type=int, default=48, help="personal interactions to train on")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    base = load_base(args.base)
    print(
        f"base {base.name}: {base.architecture}, {base.num_parameters():,} parameters, "
        f"fingerprint {base.fingerprint[:19]}..."
    )
    train_set, test_set = persona_data(args.seed, args.train, 24)
    print(
        f"persona seed {args.seed}: {len(train_set)} interactions to learn from, "
        f"{len(test_set)} held out"
    )
    encode = lambda items: [encode_interaction(base.tokenizer, i.prompt, i.response) for i in items]  # noqa: E731
    train_ex, test_ex = encode(train_set), encode(test_set)
    held_out = [make_batch([e[0] for e in test_ex], [e[1] for e in test_ex])]
    prompts = [it.prompt for it in test_set[:4]]

    before = evaluate(base.model, held_out)
    show("before personalization", base, prompts)
    inject_lora(base.model, LoRAConfig(rank=8, scale=20.0))
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(args.steps):
        chosen = rng.choice(len(train_ex), size=min(16, len(train_ex)), replace=False)
        batches.append(
            make_batch([train_ex[i][0] for i in chosen], [train_ex[i][1] for i in chosen])
        )
    losses = train(base.model, batches, optim.Adam(learning_rate=2e-4))
    after = evaluate(base.model, held_out)
    show("after personalization (LoRA rank 8, non-private)", base, prompts)

    print("\nheld-out personal requests      before    after")
    print(f"  response loss               {before.loss:8.3f} {after.loss:8.3f}")
    print(f"  next-token accuracy         {before.accuracy:8.3f} {after.accuracy:8.3f}")
    print(
        f"  training loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps; "
        f"{time.perf_counter() - started:.0f}s in all"
    )


if __name__ == "__main__":
    main()
