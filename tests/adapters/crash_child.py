"""Child of test_registry_crash.py: save and activate versions until killed.

Run as ``python crash_child.py REGISTRY SEED``. Prints ``ready`` once set up, then one line per
step, flushed *before* the step begins (``begin OP ARG``) and after it returned (``done OP ARG``),
so the parent knows what was acknowledged and what may have been in flight at the kill.
"""

from __future__ import annotations

import os
import random
import sys

import personal  # noqa: F401  (fast BLAS before mlx)
from personal.adapters import AdapterRegistry

from adapter_helpers import FP, LORA, weights_for


def main() -> None:  # pragma: no cover - runs in a child process
    registry = AdapterRegistry(sys.argv[1])
    rng = random.Random(int(sys.argv[2]))

    def say(line: str) -> None:
        os.write(1, (line + "\n").encode())

    say("ready")
    while True:
        roll = rng.random()
        if roll < 0.15:
            target = registry.previous_version
            if target is None:
                continue
            say(f"begin rollback {target}")
            registry.rollback()
            say(f"done rollback {target}")
        elif roll < 0.22:
            say("begin prune 3")
            registry.prune(keep=3)
            say("done prune 3")
        else:
            # The next number is predictable: this is the only writer.
            version = max(registry.versions(), default=0) + 1
            say(f"begin save {version}")
            got = registry.save(
                weights_for(version), base_fingerprint=FP, base_name="crash", lora=LORA
            )
            assert got == version, (got, version)
            say(f"done save {version}")
            say(f"begin activate {version}")
            registry.activate(version)
            say(f"done activate {version}")


if __name__ == "__main__":
    main()
