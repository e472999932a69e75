"""Build the bundled bases' public population adapters: the warm start of issue 17.

    python -m personal_sim.build_population_adapter                  # base-v1 and base-v2
    python -m personal_sim.build_population_adapter --bases base-v1 --steps 50 --out /tmp/m

(``make population-adapters``.) For each base, a LoRA adapter in the ``default`` policy's shape
is trained **without DP** on a *public* synthetic population and written to
``OUT/<base>/population/`` with a manifest (how it was built, the SHA-256 of its weights, the
fingerprint of the base it fits, what the build measured):

* **training data**: everything users ``User.draw(PUBLIC_SEED, i)``, ``i`` in
  ``0 .. USERS-1``, log over ``DAYS`` days (:mod:`personal_sim.population`). No simulation
  evaluates seed :data:`~personal_sim.population.PUBLIC_SEED` (``SimConfig`` refuses it), so
  the adapter has never seen an evaluated user;
* **recipe**: the ``default`` policy's LoRA shape, plain SGD at :data:`LEARNING_RATE`, its
  pull to the base (``continual.public_distill_weight`` · KL(p_base ‖ p_θ) on public text),
  ``STEPS`` steps of ``BATCH`` examples drawn with ``random.Random(SEED)``: the same seed
  rebuilds the same bytes with the same code on the same machine;
* **step-size guard** (``--guard-max-rise R``, off by default: the bundled adapters were built
  without it): an update that raises the loss of the first public batch more than ``R`` over
  the bare base is undone and retried at half the rate (:mod:`personal.training.step_guard`).
  A base the rate is too large for needs it (SmolLM2-135M: ``make population-adapter-real``
  passes half the general-loss gate, 0.005, leaving the other half to the user's rounds);
* **public text**: for the bundled bases the simulator's public corpus (the ``train`` split a
  simulation passes to the library); for any other base (SmolLM2-135M-Instruct:
  ``make population-adapter-real``) the base's self-generated set, the library's default
  public data for it (:class:`personal.public.SelfGenerated`);
* **measured** every ``--eval-every`` steps: the gain on held-out requests of *other* public
  users (indices ``VALIDATION_USERS``, last day) and the general drift on a public probe
  (the simulator's, or the self-generated set's gate split), both against the bare base.

Public data only: the adapters cost no ε (docs/privacy.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.adapters.population import PopulationAdapter, write_population_adapter
from personal.model.base import BaseModel, load_base
from personal.model.evaluate import evaluate
from personal.model.lora import inject_lora, lora_off
from personal.policy import load_policy
from personal.public import PublicData, PublicExample, SelfGenerated, public_batches
from personal.training.gates import general_loss
from personal.training.population import train_population_adapter
from personal.training.step_guard import PublicLossGuard

from personal_sim.population import PUBLIC_SEED, User
from personal_sim.public_data import GATE_SEED, TRAIN_SEED, corpus_eval_examples, corpus_public_data

BASES = ("base-v1", "base-v2")
USERS, DAYS = 64, 14
#: Other public users whose last-day held-out requests measure the adapter (never trained on).
VALIDATION_USERS = (1000, 1016)
HELD_OUT = 32
STEPS, BATCH, SEED = 600, 32, 0
#: Plain SGD's rate for the population adapter: its own measured recipe (docs/dp-utility.md),
#: not the DP rounds' ``training.learning_rate`` (0.3 when the bundled adapters were built; the
#: rounds have since moved to 0.6, which the bundled adapters were not rebuilt for).
LEARNING_RATE = 0.3
PROBE = 64  # public examples of the general-drift probe (the simulator's)
POLICY = "default"


def population_examples(users: int, days: int, seed: int = PUBLIC_SEED) -> list[PublicExample]:
    """What public users ``0 .. users-1`` of ``seed`` log over ``days`` days, in order."""
    out = []
    for index in range(users):
        user = User.draw(seed, index)
        for day in range(days):
            out += [PublicExample(it.prompt, it.response) for _, it in user.day(day, days)]
    return out


def validation_examples(
    days: int, seed: int = PUBLIC_SEED, users: int | None = None
) -> list[PublicExample]:
    """Held-out requests of the first ``users`` validation users (default: all of
    ``VALIDATION_USERS``) on the last day (never trained on)."""
    return [
        PublicExample(it.prompt, it.response)
        for index in validation_indices(users)
        for it in User.draw(seed, index).held_out(days - 1, days, HELD_OUT)
    ]


def validation_indices(users: int | None = None) -> range:
    """The indices of the first ``users`` validation users (``None``: all of them)."""
    return range(*VALIDATION_USERS)[:users]


class _Probe:
    """Gain on the validation users and general drift, both against the bare base."""

    def __init__(
        self, base: BaseModel, days: int, general: list[PublicExample], users: int | None
    ) -> None:
        self.base = base
        self.personal = public_batches(base.tokenizer, validation_examples(days, users=users))
        self.general = public_batches(base.tokenizer, general)
        with lora_off(base.model):
            self.bare = self._losses()

    def _losses(self) -> tuple[float, float]:
        model = self.base.model
        return evaluate(model, self.personal).loss, general_loss(model, self.general)

    def __call__(self, step: int) -> dict[str, Any]:
        personal_loss, general = self._losses()
        return {
            "step": step,
            "validation_gain": round(1.0 - personal_loss / self.bare[0], 6),
            "general_drift": round(general / self.bare[1] - 1.0, 6),
        }


def build(
    base_name: str | Path,
    out: Path | None = None,
    *,
    steps: int = STEPS,
    users: int = USERS,
    days: int = DAYS,
    batch_size: int = BATCH,
    seed: int = SEED,
    eval_every: int = 100,
    validation_users: int | None = None,
    guard_max_rise: float | None = None,
    log: Any = None,
) -> PopulationAdapter:
    """Train and write ``base_name``'s population adapter to ``out/<base name>/population``
    (``out`` ``None``: into the base's own directory, where the library looks for it)."""
    policy = load_policy(POLICY)
    training, continual = policy.training, policy.continual
    base = load_base(base_name)
    inject_lora(base.model, training.lora.to_lora_config())
    examples = population_examples(users, days)
    bundled = base.name in BASES
    public_data: PublicData = corpus_public_data() if bundled else SelfGenerated().for_base(base)
    public = public_data.train
    general = corpus_eval_examples(PROBE) if bundled else list(public_data.gate[:PROBE])
    probe = _Probe(base, days, general, validation_users)
    probed = validation_indices(validation_users)
    guard = None
    if guard_max_rise is not None:
        check = public_batches(base.tokenizer, public, batch_size=continual.public_batch_size)[0]
        guard = PublicLossGuard.for_round(base.model, check, max_rise=guard_max_rise)
    curve: list[dict[str, Any]] = []
    scale = [1.0]
    started = time.perf_counter()

    def callback(step: int, loss: float, step_scale: float) -> None:
        done = step + 1
        scale[0] = step_scale
        if eval_every and (done % eval_every == 0 or done == steps):
            curve.append({**probe(done), "step_scale": step_scale})
            if log is not None:
                log(f"{base.name} step {done}: {curve[-1]} ({time.perf_counter() - started:.0f} s)")

    weights = train_population_adapter(
        base, examples, public, steps=steps, learning_rate=LEARNING_RATE,
        batch_size=batch_size, distill_weight=continual.public_distill_weight,
        public_batch_size=continual.public_batch_size, max_tokens=training.max_tokens,
        seed=seed, callback=callback, guard=guard,
    )  # fmt: skip
    built = {
        "by": "python -m personal_sim.build_population_adapter (make population-adapters)",
        "population": {
            "generator": "personal_sim.population.User.draw", "seed": PUBLIC_SEED,
            "users": [0, users], "days": days, "examples": len(examples),
        },
        "policy": POLICY, "policy_digest": policy.digest(), "optimizer": "sgd",
        "learning_rate": LEARNING_RATE, "steps": steps, "batch_size": batch_size,
        "max_tokens": training.max_tokens, "distill_weight": continual.public_distill_weight,
        "public_data": (
            {"name": "simulator public corpus", "split": "train", "seed": TRAIN_SEED,
             "examples": len(public)}
            if bundled else
            {"name": public_data.name, "split": "train", "digest": public_data.digest(),
             "examples": len(public)}
        ),
        "guard_max_rise": guard_max_rise,
        "step_scale": scale[0],
        "seed": seed, "dp": False,
    }  # fmt: skip
    measured = {
        "validation": {"seed": PUBLIC_SEED, "day": days - 1, "held_out": HELD_OUT,
                       "users": [probed.start, probed.stop]},
        "general_probe": (
            {"name": "simulator public corpus", "seed": GATE_SEED, "examples": PROBE}
            if bundled else
            {"name": public_data.name, "split": "gate", "examples": len(general)}
        ),
        "curve": curve,
        **({k: v for k, v in curve[-1].items() if k != "step"} if curve else {}),
    }  # fmt: skip
    return write_population_adapter(
        Path(base.path) if out is None else out / base.name, weights,
        base_fingerprint=base.fingerprint, base_name=base.name,
        lora=training.lora.to_lora_config(), built=built, measured=measured,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m personal_sim.build_population_adapter",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="write OUT/<base>/population/ (default: into each base's own directory)",
    )  # fmt: skip
    parser.add_argument("--bases", nargs="+", default=list(BASES))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--days", type=int, default=DAYS)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--eval-every", type=int, default=100, help="0: measure only at the end")
    parser.add_argument(
        "--guard-max-rise", type=float, default=None,
        help="the step-size guard's bound on the public loss's rise over the bare base "
        "(e.g. 0.005; default: no guard, as the bundled adapters were built)",
    )  # fmt: skip
    parser.add_argument(
        "--validation-users", type=int, default=None,
        help=f"measure on the first N of the {VALIDATION_USERS[1] - VALIDATION_USERS[0]} "
        "validation users (default: all; fewer for a large base)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    for name in args.bases:
        adapter = build(
            name, args.out, steps=args.steps, users=args.users, days=args.days,
            batch_size=args.batch_size, seed=args.seed, eval_every=args.eval_every or args.steps,
            validation_users=args.validation_users, guard_max_rise=args.guard_max_rise,
            log=print,
        )  # fmt: skip
        summary = {"base": name, "digest": adapter.digest, **adapter.manifest["measured"]}
        summary.pop("curve", None)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
