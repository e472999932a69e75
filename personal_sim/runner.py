"""Run the library over a synthetic population: real stores, real DP rounds, a real OS update.

    metrics = simulate(SimConfig(users=4, days=7, update_day=4), backend="local", workers=2)

Each user is one task (:func:`run_user`), run in a process pool (``backend="local"``) or on a
Ray cluster (``backend="ray"``). A task draws the user (:mod:`personal_sim.population`), and for
every *arm* (:data:`ARMS`; ``dp`` alone unless comparing) opens a fresh encrypted store in a
temporary directory with ``Personalizer.open(tmp, base, policy, RawKey(os.urandom(32)))``. Day
by day it logs what the user said with simulated timestamps, asks ``should_update(now=day)``,
runs ``update(now=day, noise=..., sampler_seed=...)``, moves to the new base with
``on_base_update(strategy=...)`` on the update day, and measures the served model on held-out
personal examples (never logged) and on public-corpus text, against the bare base of the day.
Only the library's public API is used.

**Seeded noise: these runs are not private.** Every round gets a seeded
:class:`~personal.privacy.noise.GaussianNoise` and sampler seed so that the same seed gives the
same metrics on any backend and worker count; seeded randomness is reproducible, hence *not*
differentially private. The runner silences the library's ``SeededNoiseWarning`` and says so in
the metrics and the report. The ε figures are what the ledger charged: what the same rounds
would cost with the library's default CSPRNG noise.

Reproducibility across backends: workers run single-threaded BLAS (``OPENBLAS_NUM_THREADS=1``),
so W workers use W cores and no float sum depends on the thread count. Metrics differ between
runs only in wall times and memory (:func:`comparable` drops those).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from personal.errors import ConfigError

import numpy as np

from personal_sim.backends import Progress, default_workers, run_local, run_ray
from personal_sim.population import START
from personal_sim.public_data import simulation_public_data
from personal_sim.scenario import (
    ARMS,
    COMPARE_ARMS,
    DEFAULT_ARMS,
    DEFAULT_POLICY,
    NON_DP_EPSILON,
    SEEDED_NOISE_NOTE,
    Arm,
    SimConfig,
    default_policy,
)
from personal_sim.summary import TIMING_KEYS, arm_user_summary, comparable, summarize
from personal_sim.user_task import run_user

__all__ = [
    "ARMS",
    "COMPARE_ARMS",
    "DEFAULT_ARMS",
    "DEFAULT_POLICY",
    "NON_DP_EPSILON",
    "SEEDED_NOISE_NOTE",
    "TIMING_KEYS",
    "Arm",
    "SimConfig",
    "arm_user_summary",
    "comparable",
    "default_policy",
    "run_user",
    "simulate",
    "summarize",
]


def simulate(
    config: SimConfig,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``config`` on ``backend`` and return the metrics (see :mod:`personal_sim.report`)."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend must be 'local' or 'ray', not {backend!r}")
    workers = workers or default_workers()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, not {workers}")
    policy = config.base_policy()  # validates a policy dict before any worker starts
    simulation_public_data(config.public_data)  # and a bad public-data file
    started = time.perf_counter()
    if backend == "local":
        users = run_local(config, workers, progress)
    else:
        users = run_ray(config, workers, address, progress)
    seconds = time.perf_counter() - started
    return {
        "config": {
            **{k: v for k, v in asdict(config).items() if k != "policy"},
            "arms": list(config.arms),
            "policy": policy.to_dict(),
            "policy_digest": policy.digest(),
            "start_date": START.isoformat(),
        },
        "privacy_note": SEEDED_NOISE_NOTE,
        "seeded_noise": True,
        "seeded_noise_warnings_suppressed": True,
        "arms": {name: ARMS[name].description for name in config.arms},
        "users": users,
        "summary": summarize(config, users),
        "runtime": {
            "backend": backend,
            "workers": workers,
            "address": address,
            "seconds": round(seconds, 2),
            "users_per_min": round(config.users / (seconds / 60), 4),
            "user_seconds_mean": round(float(np.mean([u["seconds"] for u in users])), 2),
        },
    }
