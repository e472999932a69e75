"""A real OS update for a real base: ``smollm2-135m-instruct-v2``, built on this machine.

An OS vendor ships a smaller, re-distilled base; here that is SmolLM2-135M-Instruct with its
``DROP`` least influential blocks removed and the rest recovered by logit distillation from the
original (:mod:`personal.model.prune`), on public text only: the base's own greedy answers to
the bundled generic prompts (:class:`~personal.public.SelfGenerated`). The result has its own
fingerprint, keeps the tokenizer, and adapters migrate to it by distillation.

Build it once (``make real-v2``, or ``python -m personal.model.real_v2``); the weights go into
the cache (``<cache>/models/<name>-v2-<recipe digest>/``) and are never committed. Afterwards
``load_base("smollm2-135m-instruct-v2")`` loads it; before, it raises
:class:`~personal.errors.ModelNotFound` saying how to build it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from personal.errors import ModelNotFound
from personal.model.fingerprint import cache_dir

#: Blocks removed from the teacher (of 30), recovery epochs over the public text, Adam's lr
#: (measured: see personal.model.prune.build_pruned_student and docs/base-models.md).
DROP, EPOCHS, LEARNING_RATE, BATCH = 4, 2, 1e-5, 8
V2_SUFFIX = "-v2"


def recipe(teacher: str) -> dict[str, Any]:
    """What the build depends on (its digest names the cache directory)."""
    return {
        "teacher": teacher,
        "drop": DROP,
        "epochs": EPOCHS,
        "learning_rate": LEARNING_RATE,
        "batch": BATCH,
        "every_position": True,
        "version": 2,
    }


def v2_dir(teacher: str) -> Path:
    """The cache directory of the v2 of ``teacher`` (it may not exist yet)."""
    digest = hashlib.sha256(json.dumps(recipe(teacher), sort_keys=True).encode()).hexdigest()
    return cache_dir() / "models" / f"{teacher}{V2_SUFFIX}-{digest[:16]}"


def resolve_v2_name(name: str) -> tuple[Path, str] | None:
    """``(directory, name)`` for ``"<catalog model>-v2"`` if built; ``None`` for other names.

    Raises:
        ModelNotFound: the name is a v2 that has not been built (says how to build it).
    """
    from personal.model.catalog import CATALOG

    teacher = name.removesuffix(V2_SUFFIX)
    if not name.endswith(V2_SUFFIX) or teacher not in CATALOG:
        return None
    path = v2_dir(teacher)
    if not (path / "config.json").is_file():
        raise ModelNotFound(
            f"{name} is built on this machine, not shipped: run `make real-v2` (or `python -m "
            f"personal.model.real_v2 --teacher {teacher}`; about 15 minutes on 2 CPU cores)."
        )
    return path, name


def build(teacher_name: str = "smollm2-135m-instruct", *, force: bool = False) -> Path:
    """Build the v2 of ``teacher_name`` into the cache (atomically) and return its directory."""
    from personal.model.base import load_base
    from personal.model.prune import build_pruned_student
    from personal.public import SelfGenerated, public_batches

    out = v2_dir(teacher_name)
    if (out / "config.json").is_file() and not force:
        return out
    teacher = load_base(f"{teacher_name}:float32")
    public = SelfGenerated().for_base(teacher)
    train = public_batches(teacher.tokenizer, public.train, BATCH)
    held_out = public_batches(teacher.tokenizer, public.gate, BATCH)
    staging = out.parent / f".{out.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    _, report = build_pruned_student(
        teacher,
        train,
        held_out,
        staging,
        drop=DROP,
        epochs=EPOCHS,
        learning_rate=LEARNING_RATE,
        provenance={
            "built_by": "python -m personal.model.real_v2",
            "public": public.name,
            "public_digest": public.digest(),
            "recipe": recipe(teacher_name),
        },
    )
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # a reader sees no directory or a complete one
    print(json.dumps({"path": str(out), **report.__dict__}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="smollm2-135m-instruct")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args()
    print(build(args.teacher, force=args.force))


if __name__ == "__main__":
    main()
