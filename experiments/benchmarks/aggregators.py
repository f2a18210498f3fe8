"""Solver cost of every Gramian-based aggregator for K losses, jitted.

Each scheme's ``update`` runs over a sequence of T slowly drifting Gramians
(G_t = J_t J_tᵀ with J_t = J + small noise, as between consecutive training
steps) inside one compiled ``lax.scan``, so the state is carried from step to
step (warm starts for Nash-MTL and CAGrad, EMA targets for GradVac) and Python
dispatch is not measured. The table gives the median time per step over
several repeats; "cold" runs every step from the initial state instead.

The gradients are random, with pairs of conflicting rows, on very different
scales, so the solvers see realistic, non-trivial problems.

Run: ``python -m experiments.benchmarks.aggregators [--losses 32 --steps 50 --repeats 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import covjax

SCHEMES: dict[str, Callable[[], covjax.Weighting]] = {
    "pcgrad": covjax.pcgrad,
    "gradvac": covjax.gradvac,
    "cagrad": covjax.cagrad,
    "imtl_g": covjax.imtl_g,
    "nash_mtl": covjax.nash_mtl,
    "aligned_mtl": covjax.aligned_mtl,
    "upgrad": covjax.upgrad,
    "db_mtl": covjax.db_mtl,
    "fairgrad": covjax.fairgrad,
    "dualproj": covjax.dualproj,
    "krum": lambda: covjax.krum(n_byzantine=0),  # any K ≥ 3 (the cost does not depend on f)
    "sdmgrad": covjax.sdmgrad,
    "modo": covjax.modo,
    "cr_mogm(mgda)": lambda: covjax.cr_mogm(covjax.mgda()),
}
if hasattr(covjax, "mgda"):
    SCHEMES["mgda"] = covjax.mgda


def drifting_gramians(num_losses: int, steps: int, dim: int, seed: int = 0) -> np.ndarray:
    """(T, K, K) float32 Gramians of a Jacobian that drifts by 5% per step."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(num_losses, dim)) * 10.0 ** rng.uniform(-1, 1, size=(num_losses, 1))
    half = num_losses // 2
    base[1:half:2] = -0.7 * base[0 : half - 1 : 2] + 0.3 * base[1:half:2]  # conflicting pairs
    gramians = []
    jac = base
    for _ in range(steps):
        jac = jac + 0.05 * rng.normal(size=jac.shape) * np.linalg.norm(
            jac, axis=1, keepdims=True
        ) / np.sqrt(dim)
        gramians.append(jac @ jac.T)
    return np.asarray(gramians, np.float32)


def make_runner(
    scheme: covjax.Weighting, cold: bool
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    @jax.jit
    def run(losses: jax.Array, gramians: jax.Array) -> jax.Array:
        initial = scheme.init(losses)

        def body(state, gramian):
            weights, new_state = scheme.update(losses, state, gramian=gramian)
            return (initial if cold else new_state), weights

        return jax.lax.scan(body, initial, gramians)[1]

    return run


def time_scheme(run: Callable, losses: jax.Array, gramians: jax.Array, repeats: int) -> float:
    jax.block_until_ready(run(losses, gramians))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(losses, gramians))
        times.append((time.perf_counter() - start) / gramians.shape[0])
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--losses", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dim", type=int, default=2000, help="gradient dimension P")
    args = parser.parse_args()

    gramians = jnp.asarray(drifting_gramians(args.losses, args.steps, args.dim))
    losses = jnp.linspace(0.5, 2.0, args.losses, dtype=jnp.float32)
    print(
        f"\nAggregator update cost, K = {args.losses}, jitted, {args.steps} steps per scan, "
        f"median of {args.repeats} ({jax.devices()[0].device_kind})"
    )
    print("| scheme | ms / step (warm, state carried) | ms / step (cold) |")
    print("|---|---|---|")
    for name, make in SCHEMES.items():
        scheme = make()
        warm = time_scheme(make_runner(scheme, cold=False), losses, gramians, args.repeats)
        cold = time_scheme(make_runner(scheme, cold=True), losses, gramians, args.repeats)
        print(f"| {name} | {warm * 1e3:.3f} | {cold * 1e3:.3f} |")


if __name__ == "__main__":
    main()
