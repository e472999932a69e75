"""The simulator's public corpus as the library's public data (:class:`personal.public.PublicData`).

The library never imports the simulators: like any app, a simulation passes its public data
to ``Personalizer.open(..., public_data=...)``. This is the corpus the bundled bases were
distilled on, split into the same seed streams the library used before public data became an
input, so simulated numbers are unchanged:

* gate: the test stream of seed :data:`GATE_SEED` (128 examples),
* train (public replay, distillation to the base, the public Fisher): seed :data:`TRAIN_SEED`
  (256 examples),
* migration prompts: seed :data:`PROMPT_SEED` (the first 512; a migration takes a prefix).

The streams are disjoint; the templated corpus repeats short requests ("thanks") across them,
as the corpus did before.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from personal.public import PublicData, PublicExample

from personal_sim.public_corpus import Interaction, split

GATE_SEED, TRAIN_SEED, PROMPT_SEED = 20261123, 7, 31
GATE_SIZE, TRAIN_SIZE, PROMPT_POOL = 128, 256, 512
NAME = "simulator public corpus"


def _examples(items: Iterable[Interaction]) -> tuple[PublicExample, ...]:
    return tuple(PublicExample(it.prompt, it.response) for it in items)


@functools.cache
def corpus_public_data() -> PublicData:
    """The public corpus split for the gate, replay and Fisher, and migration (cached)."""
    return PublicData(
        gate=_examples(split(GATE_SEED, 0, 0, GATE_SIZE).test),
        train=_examples(split(TRAIN_SEED, TRAIN_SIZE, 0, 0).train),
        prompts=tuple(it.prompt for it in split(PROMPT_SEED, PROMPT_POOL, 0, 0).train),
        name=NAME,
    )


@functools.cache
def corpus_eval_examples(n: int) -> tuple[PublicExample, ...]:
    """The first ``n`` examples of the gate's stream: the simulator's general-loss probe."""
    return _examples(split(GATE_SEED, 0, 0, n).test)


@functools.cache
def file_public_data(path: str) -> PublicData:
    """A ``--public-data`` JSONL file, read once per process."""
    return PublicData.from_jsonl(path)


def simulation_public_data(path: str | None) -> PublicData:
    """The run's public data: the file's, or the simulator's corpus."""
    return file_public_data(path) if path else corpus_public_data()


def eval_examples(path: str | None, n: int) -> tuple[PublicExample, ...]:
    """What the simulator measures general drift on: ``n`` held-out public examples."""
    return file_public_data(path).gate[:n] if path else corpus_eval_examples(n)
