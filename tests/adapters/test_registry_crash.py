"""Crash safety: a process saving and activating adapters is SIGKILLed at random moments.

After every kill the registry must open on a complete active version whose hashes verify, that
version must be the last acknowledged activation or the one in flight, every acknowledged save
must still be there (unless a prune may have removed it), and rollback must still work.

Each child is a fresh interpreter (``subprocess``, i.e. spawn semantics: nothing inherited but
the files) that imports only ``personal.adapters`` and ``mlx.core`` (~0.3 s), and writes
adapters of a few KB, so dozens of kills fit in the default suite. Set
``PERSONAL_ADAPTER_KILLS`` for a longer run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from personal.adapters import AdapterRegistry

import pytest
from adapter_helpers import FP, LORA, same, weights_for

CHILD = Path(__file__).with_name("crash_child.py")
KILLS = int(os.environ.get("PERSONAL_ADAPTER_KILLS", "36"))


def _run_and_kill(path: Path, seed: int, delay: float) -> list[str]:
    """Start a child, SIGKILL it ``delay`` s after it is ready; its complete output lines."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: readline must not swallow lines communicate() then misses
    )
    try:
        ready = proc.stdout.readline()  # type: ignore[union-attr]
        assert ready == b"ready\n", (ready, proc.stderr.read())  # type: ignore[union-attr]
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when an assertion fired above
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode()  # it did not die on its own
    text = out.decode()
    return text[: text.rfind("\n") + 1].splitlines()  # a torn last line was never written


class Expectation:
    """What the acknowledged output lines allow the registry to look like."""

    def __init__(self, active: int) -> None:
        self.active = active  # last acknowledged activation
        self.must_exist: set[int] = set()

    def replay(self, lines: list[str]) -> set[int]:
        """Apply a child's lines; returns the versions the registry may now have active."""
        in_flight: int | None = None
        for line in lines:
            kind, op, arg = line.split()
            if kind == "begin":
                in_flight = int(arg) if op in ("activate", "rollback") else None
                if op == "prune":
                    self.must_exist.clear()  # a pruned version may be any but the newest ones
                continue
            in_flight = None
            if op == "save":
                self.must_exist.add(int(arg))
            elif op in ("activate", "rollback"):
                self.active = int(arg)
        return {self.active} | ({in_flight} if in_flight is not None else set())


def _check_after_kill(path: Path, expect: Expectation, lines: list[str]) -> bool:
    allowed = expect.replay(lines)
    registry = AdapterRegistry(path)  # opened afresh, as after a reboot
    active = registry.active_version
    assert active in allowed, (active, allowed, lines[-3:])
    expect.active = active  # the in-flight one may have landed
    weights, manifest = registry.load()  # hash-verified
    assert manifest.version == active and same(weights, weights_for(active))
    present = set(registry.versions())
    assert expect.must_exist <= present, (expect.must_exist - present, lines[-3:])
    report = registry.verify()
    assert report.ok, report.problems
    target = registry.previous_version
    if target is None:
        return False
    assert registry.rollback().version == target
    assert same(registry.load()[0], weights_for(target))
    expect.active = target
    return True


def _seed(path: Path) -> AdapterRegistry:
    registry = AdapterRegistry(path)
    for version in (1, 2):
        registry.save(weights_for(version), base_fingerprint=FP, base_name="crash", lora=LORA)
        registry.activate(version)
    return registry


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("kills", "seed"), [(KILLS, 20240601), pytest.param(400, 7, marks=pytest.mark.slow)]
)
def test_sigkill_at_random_moments(tmp_path: Path, kills: int, seed: int) -> None:
    path = tmp_path / "adapters"
    _seed(path)
    expect = Expectation(active=2)
    rng = random.Random(seed)
    rollbacks, steps, leftovers = 0, 0, 0
    for _ in range(kills):
        lines = _run_and_kill(path, rng.randrange(2**31), rng.uniform(0.0, 0.06))
        steps += len(lines)
        leftovers += bool(AdapterRegistry(path).verify().leftovers)
        rollbacks += _check_after_kill(path, expect, lines)
    assert steps > kills  # the children did work between kills
    assert rollbacks >= kills // 2, rollbacks
    # However often it died, the registry still rolls all the way back on verified versions.
    registry = AdapterRegistry(path)
    while registry.previous_version is not None:
        target = registry.previous_version
        assert registry.rollback().version == target
        assert same(registry.load()[0], weights_for(target))
    assert registry.verify().ok
    print(f"{kills} kills, {steps} steps acknowledged, {leftovers} kills left temp files")
