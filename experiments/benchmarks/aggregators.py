"""Solver cost of every gradient aggregator for K losses, jitted.

Each scheme's ``update`` runs over a sequence of T slowly drifting Gramians
(G_t = J_t J_tᵀ with J_t = J + small noise, as between consecutive training
steps), or over the Jacobians J_t themselves for the schemes that need the
per-loss gradients (``covjax.JACOBIAN``: P = ``--dim`` columns), inside one
compiled ``lax.scan``, so the state is carried from step to step (warm starts
for Nash-MTL and CAGrad, EMA targets for GradVac) and Python dispatch is not
measured. The table gives the median time per step over
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
    "pcd": covjax.pcd,
    "cr_mogm(mgda)": lambda: covjax.cr_mogm(covjax.mgda()),
}
if hasattr(covjax, "mgda"):
    SCHEMES["mgda"] = covjax.mgda
# The aggregators of the per-loss gradients (trimmed mean, GradDrop, ConFIG, MoCo, ExcessMTL).
SCHEMES |= {
    "trimmed_mean": lambda: covjax.trimmed_mean(trim=1),  # valid from K = 3 on
    "graddrop": covjax.graddrop,
    "conflict_free": covjax.conflict_free,
}
#: Schemes whose state holds vectors over the parameters: built for P = ``--dim``.
PER_PARAMETER_SCHEMES: dict[str, Callable[[int], covjax.Weighting]] = {
    "m_config": lambda dim: covjax.conflict_free(momentum=True, num_params=dim),
    "moco": lambda dim: covjax.moco(num_params=dim),
    "excess_mtl": lambda dim: covjax.excess_mtl(num_params=dim),
}


def drifting_jacobians(num_losses: int, steps: int, dim: int, seed: int = 0) -> np.ndarray:
    """(T, K, P) float32 Jacobians that drift by 5% per step."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(num_losses, dim)) * 10.0 ** rng.uniform(-1, 1, size=(num_losses, 1))
    half = num_losses // 2
    base[1:half:2] = -0.7 * base[0 : half - 1 : 2] + 0.3 * base[1:half:2]  # conflicting pairs
    jacobians = []
    jac = base
    for _ in range(steps):
        jac = jac + 0.05 * rng.normal(size=jac.shape) * np.linalg.norm(
            jac, axis=1, keepdims=True
        ) / np.sqrt(dim)
        jacobians.append(jac)
    return np.asarray(jacobians, np.float32)


def drifting_gramians(num_losses: int, steps: int, dim: int, seed: int = 0) -> np.ndarray:
    """(T, K, K) float32 Gramians of a Jacobian that drifts by 5% per step."""
    jacobians = drifting_jacobians(num_losses, steps, dim, seed).astype(np.float64)
    return np.einsum("tip,tjp->tij", jacobians, jacobians).astype(np.float32)


def make_runner(
    scheme: covjax.Weighting, cold: bool
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A jitted scan of ``update`` over (T, K, K) Gramians, or (T, K, P) Jacobians for the
    schemes that need them (their weights, or their direction for a DIRECTION scheme)."""
    gradients = "jacobian" if covjax.JACOBIAN in scheme.requires else "gramian"

    @jax.jit
    def run(losses: jax.Array, inputs: jax.Array) -> jax.Array:
        initial = scheme.init(losses)

        def body(state, step_input):
            out, new_state = scheme.update(losses, state, **{gradients: step_input})
            result = out.direction if isinstance(out, covjax.Aggregation) else out
            return (initial if cold else new_state), result

        return jax.lax.scan(body, initial, inputs)[1]

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
    names = [*SCHEMES, *PER_PARAMETER_SCHEMES]
    parser.add_argument("--schemes", nargs="+", default=names, choices=names)
    args = parser.parse_args()

    jacobians = drifting_jacobians(args.losses, args.steps, args.dim)
    gramians = jnp.asarray(drifting_gramians(args.losses, args.steps, args.dim))
    losses = jnp.linspace(0.5, 2.0, args.losses, dtype=jnp.float32)
    print(
        f"\nAggregator update cost, K = {args.losses}, jitted, {args.steps} steps per scan, "
        f"median of {args.repeats} ({jax.devices()[0].device_kind})"
    )
    print("| scheme | ms / step (warm, state carried) | ms / step (cold) |")
    print("|---|---|---|")
    for name in args.schemes:
        scheme = SCHEMES[name]() if name in SCHEMES else PER_PARAMETER_SCHEMES[name](args.dim)
        inputs = jnp.asarray(jacobians) if covjax.JACOBIAN in scheme.requires else gramians
        warm = time_scheme(make_runner(scheme, cold=False), losses, inputs, args.repeats)
        cold = time_scheme(make_runner(scheme, cold=True), losses, inputs, args.repeats)
        print(f"| {name} | {warm * 1e3:.3f} | {cold * 1e3:.3f} |")


if __name__ == "__main__":
    main()
