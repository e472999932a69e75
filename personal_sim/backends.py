"""Where users run: a local process pool or a Ray cluster (same seed, same metrics)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from personal.errors import ConfigError

from personal_sim.population import User
from personal_sim.scenario import SimConfig
from personal_sim.user_task import run_user

#: Worker environment: one BLAS thread and one noise thread per worker (W workers use W cores;
#: results do not depend on the thread count).
WORKER_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PERSONAL_NOISE_THREADS": "1",
}

Progress = Callable[[int], None]


def default_workers() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _init_worker() -> None:
    # `personal` first (this module imported it at the top): it loads the fast BLAS that mlx
    # must find when it is imported.
    import mlx.core  # noqa: F401


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _order(config: SimConfig) -> list[int]:
    """Users heaviest first (longest tasks first balances the pool)."""
    rates = {i: User.draw(config.seed, i).rate for i in config.user_indices()}
    return sorted(rates, key=lambda i: (-rates[i], i))


def run_local(config: SimConfig, workers: int, progress: Progress | None = None) -> list[dict]:
    """Every user in a process pool of ``workers`` (``spawn``: no state inherited from here)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results: dict[int, dict] = {}
    with (
        _environment(WORKER_ENV),
        context.Manager() as manager,
        ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool,
    ):
        queue = manager.Queue() if progress else None
        futures = {pool.submit(run_user, config, i, queue): i for i in _order(config)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
            for future in done:
                results[futures[future]] = future.result()
        _drain(queue, progress)
    return [results[i] for i in sorted(results)]


def _drain(queue: Any, progress: Progress | None) -> None:
    if queue is None or progress is None:
        return
    ticks = 0
    with contextlib.suppress(Exception):
        while not queue.empty():
            ticks += queue.get_nowait()
    if ticks:
        progress(ticks)


RAY_HINT = "the Ray backend needs Ray: pip install 'personal[ray]' (or pip install ray)"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(RAY_HINT) from exc
    return ray


def run_ray(
    config: SimConfig,
    workers: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> list[dict]:
    """Every user as a Ray task: on the cluster at ``address``, or a local one of ``workers`` CPUs.

    A cluster this call starts is shut down at the end; one it joined is left running.
    """
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {
            "runtime_env": {"env_vars": dict(WORKER_ENV)},
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers or default_workers(), **options)
    try:
        from ray.util.queue import Queue

        queue = Queue() if progress else None
        task = ray.remote(num_cpus=1)(_ray_user)
        refs = {task.remote(config, i, queue): i for i in _order(config)}
        results: dict[int, dict] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            _drain(queue, progress)
            for ref in done:
                results[refs[ref]] = ray.get(ref)
        _drain(queue, progress)
        if queue is not None:
            queue.shutdown()
    finally:
        if started_here:
            ray.shutdown()
    return [results[i] for i in sorted(results)]


def _ray_user(config: SimConfig, index: int, progress: Any = None) -> dict[str, Any]:
    _init_worker()
    return run_user(config, index, progress)
