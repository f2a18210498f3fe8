"""Side-by-side timing shared by the benchmarks: interleaved rounds, median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def interleaved_times(
    runners: dict[str, Callable[[], Any]], rounds: int, steps: int, warm_up: bool = True
) -> dict[str, float]:
    """Median seconds per call of each runner over ``rounds`` interleaved rounds of ``steps``.

    Interleaving makes machine noise hit every runner alike, so their ratios
    are fair. ``warm_up`` first calls each runner once (compilation); pass
    False when the caller already did.
    """
    if warm_up:
        for run in runners.values():
            jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = run()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(values) for name, values in times.items()}
