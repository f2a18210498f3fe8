"""Side-by-side timing shared by the benchmarks: interleaved rounds, median."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def interleaved_times(
    runners: dict[str, Callable[[], Any]],
    rounds: int,
    steps: int | dict[str, int],
    warm_up: bool = True,
) -> dict[str, float]:
    """Median seconds per call of each runner over ``rounds`` interleaved rounds of ``steps``.

    Interleaving makes machine noise hit every runner alike, so their ratios
    are fair. ``steps`` may differ by runner (a dict by name), e.g. to give
    fast and slow runners windows of similar length. ``warm_up`` first calls
    each runner once (compilation); pass False when the caller already did.
    """
    if isinstance(steps, int):
        steps = dict.fromkeys(runners, steps)
    if warm_up:
        for run in runners.values():
            jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(steps[name]):
                out = run()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / steps[name])
    return {name: statistics.median(values) for name, values in times.items()}


def median_interval(samples: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(low, median, high)``: the sample median and a distribution-free interval for it.

    The interval is ``[x_(j), x_(n+1-j)]`` of the sorted samples with the
    largest j whose binomial coverage 1 − 2·P(Bin(n, ½) < j) is at least
    ``confidence`` (it holds for any continuous distribution of independent
    samples); with too few samples for that coverage it is their whole range.
    """
    ordered = sorted(samples)
    n = len(ordered)
    below = 0.0  # P(Bin(n, 1/2) < j)
    j = 1
    while True:
        below += math.comb(n, j - 1) / 2**n
        if j >= n + 1 - j or 1 - 2 * below < confidence:
            break
        j += 1
    j = max(j - 1, 1)
    return ordered[j - 1], statistics.median(ordered), ordered[n - j]
