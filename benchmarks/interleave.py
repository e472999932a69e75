"""Interleaved timing for the benchmarks: every run once per round, medians over rounds, so
that load from other processes hits every variant alike (machines here are shared)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_medians(
    runs: Mapping[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """(median seconds by name, every time by name) over ``repeats`` interleaved rounds."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}, times


def emit(result: Mapping[str, object], times: Mapping[str, list[float]], as_json: bool) -> None:
    """Print every time per run (unless ``as_json``), then ``result`` as one JSON line."""
    if not as_json:
        for key, values in times.items():
            print(key, " ".join(f"{v:.3f}" for v in values))
    print(json.dumps(result))
