"""Shared cases and tolerances of the gradient-aggregator tests.

Every oracle works on a random K×P Jacobian J (float64); covjax only ever sees
the float32 Gramian J Jᵀ. Directions d = Σ w_i g_i (or weights) are compared.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from oracles import gradient_schemes as gradient_oracle

import covjax

K, P = 5, 12
#: Machine epsilon of float32, the precision every scheme computes in by default.
EPS32 = float(np.finfo(np.float32).eps)


def jacobian(case: str, seed: int = 0, k: int = K, p: int = P) -> np.ndarray:
    """A K×P Jacobian (float64) of one of the test cases."""
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(k, p)) * rng.uniform(0.3, 3.0, size=(k, 1))
    if case == "random":
        return J
    if case == "conflicting":
        # Pairs of strongly opposed gradients plus a shared component.
        J[1] = -0.8 * J[0] + 0.3 * rng.normal(size=p)
        J[3] = -1.5 * J[2] + 0.2 * rng.normal(size=p)
        return J
    if case == "parallel":
        J[1] = 2.0 * J[0]
        J[2] = 0.5 * J[0]
        return J
    if case == "rank_deficient":
        return rng.normal(size=(k, 3)) @ rng.normal(size=(3, p))
    if case == "zero":
        J[2] = 0.0
        return J
    raise ValueError(case)


CASES = ("random", "conflicting", "parallel", "rank_deficient", "zero")


def gramian_of(J: np.ndarray) -> jax.Array:
    # float64 when x64 is on (oracle comparisons), the float32 of real use otherwise.
    return jnp.asarray(J @ J.T, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


@functools.cache
def scheme_and_update(name: str, **kwargs):
    """One scheme instance and its jitted update per configuration (compiled once)."""
    scheme = getattr(covjax, name)(**kwargs)
    return scheme, jax.jit(scheme.update)


def run(
    name: str,
    J: np.ndarray,
    losses: np.ndarray | None = None,
    state=None,
    x64: bool = False,
    **kwargs,
):
    """One update on J's Gramian; ``x64``: the scheme's maths in float64 (the exact solution,
    up to the float32 rounding of the returned weights), for comparisons with an oracle."""
    scheme, update = scheme_and_update(name, **kwargs)
    with jax.enable_x64(x64):
        losses = jnp.ones((J.shape[0],)) if losses is None else jnp.asarray(losses)
        state = scheme.init(losses) if state is None else state
        weights, state = update(losses, state, gramian=gramian_of(J))
    return np.asarray(weights, np.float64), state


def rounding_tol(weights: np.ndarray) -> float:
    """What rounding K float64-exact weights to float32 leaves in d/max‖g_i‖: K·eps32·max|w|."""
    return K * EPS32 * max(float(np.abs(weights).max()), 1.0)


def conditioning_tol(J: np.ndarray) -> float:
    """Forward error of a float32 solve with the float32-rounded Gramian: K·cond(G)·eps32."""
    return K * float(np.linalg.cond(J @ J.T)) * EPS32


def assert_direction_close(got: np.ndarray, want: np.ndarray, J: np.ndarray, tol=1e-5) -> None:
    """Directions agree to ``tol`` relative to the largest gradient norm."""
    scale = max(np.linalg.norm(J, axis=1).max(), 1e-30)
    np.testing.assert_allclose(got / scale, want / scale, atol=tol, rtol=0)


def degenerate_jacobian(case: str) -> np.ndarray:
    """TorchJD-style hard matrices: rank-deficient and parallel rows with both signs."""
    rng = np.random.default_rng(40)
    if case == "rank1_20x100":
        return np.outer(rng.normal(size=20), rng.normal(size=100))
    if case == "rank1_20x10":
        return np.outer(rng.normal(size=20), rng.normal(size=10))
    if case == "rank5_20x10":
        return rng.normal(size=(20, 5)) @ rng.normal(size=(5, 10))
    if case == "parallel_opposing":
        J = rng.normal(size=(6, 12))
        J[1], J[2] = 2.0 * J[0], -0.5 * J[0]
        return J
    raise ValueError(case)


def random_jacobian(rng: np.random.Generator, kind: str, k: int, dim: int) -> np.ndarray:
    jacobian = rng.normal(size=(k, dim)) * 10.0 ** rng.uniform(-1, 1, size=(k, 1))
    if kind == "conflicting":  # a pair pointing in opposite directions
        jacobian[1] = -rng.uniform(0.5, 2.0) * jacobian[0]
    elif kind == "parallel":
        jacobian[: k // 2 + 1] = jacobian[0] * rng.uniform(0.5, 2.0, size=(k // 2 + 1, 1))
    elif kind == "rank_deficient":
        jacobian = rng.normal(size=(k, 2)) @ rng.normal(size=(2, dim))
    elif kind == "zero":
        jacobian[k - 1] = 0.0
    elif kind == "agreeing":  # all in one half-space: the optimum is not 0
        jacobian = jacobian + 3.0 * rng.normal(size=dim)
    return jacobian


def assert_near_optimal(gramian: np.ndarray, weights: np.ndarray, optimum: float) -> None:
    assert np.all(weights >= 0.0)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-6)
    value = gradient_oracle.min_norm_objective(gramian, weights)
    # 1e-6 relative; the absolute term is what the float32 solver can resolve: it evaluates
    # αᵀGα as a sum of K² terms, each ≤ max G_ii on the simplex, with a rounding error up to
    # K·eps32·max G_ii (objectives closer than that look equal to it; where the optimum is 0
    # the answer found moves by about eps32·max G_ii with the CPU's summation order).
    scale = float(np.max(np.diag(gramian)))
    k = gramian.shape[0]
    assert value - optimum <= 1e-6 * optimum + k * EPS32 * scale, (value, optimum, scale)


# FairGrad, DualProj, Krum, SDMGrad, MoDo, CR-MOGM: random Gramians at K = 32, runs in float64.


def random_gramian(seed: int, k: int = 32, p: int = 64) -> np.ndarray:
    """A full-rank float64 Gramian of K gradients on scales 10^±1."""
    rng = np.random.default_rng(seed)
    jacobian = rng.normal(size=(k, p)) * 10.0 ** rng.uniform(-1, 1, size=(k, 1))
    return jacobian @ jacobian.T


def weights64(scheme: covjax.Weighting, gramian: np.ndarray, steps: int = 1) -> np.ndarray:
    """The scheme's weights in float64 after ``steps`` updates on the same Gramian."""
    with jax.enable_x64(True):
        k = gramian.shape[0]
        state = scheme.init(jnp.ones(k))
        update = jax.jit(scheme.update)
        for _ in range(steps):
            weights, state = update(jnp.ones(k), state, gramian=jnp.asarray(gramian))
        return np.asarray(weights, np.float64)


def vmapped_weights64(
    constructor: Callable[[jax.Array], covjax.Weighting], values: jax.Array, gramian: np.ndarray
) -> np.ndarray:
    """One step's float64 weights for each hyper-parameter value, under ``jax.vmap``."""
    k = gramian.shape[0]

    def weights_for(value: jax.Array) -> jax.Array:
        scheme = constructor(value)
        state = scheme.init(jnp.ones(k))
        return scheme.update(jnp.ones(k), state, gramian=jnp.asarray(gramian))[0]

    with jax.enable_x64(True):
        return np.asarray(jax.jit(jax.vmap(weights_for))(jnp.asarray(values)), np.float64)


def two_batches(seed: int, k: int = 32, p: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-loss gradients of two independent batches: a common mean plus batch noise."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(k, p)) * 10.0 ** rng.uniform(-1, 1, size=(k, 1))
    mean[1::2] -= 0.8 * mean[::2]  # conflicting pairs
    noise = lambda: 0.5 * rng.normal(size=(k, p)) * np.abs(mean).mean(axis=1, keepdims=True)  # noqa: E731
    return mean + noise(), mean + noise()


def run64(scheme: covjax.Weighting, crosses: list[np.ndarray]) -> list[np.ndarray]:
    """The float64 weights of consecutive updates, one per cross-Gramian."""
    with jax.enable_x64(True):
        k = crosses[0].shape[0]
        state = scheme.init(jnp.ones(k))
        update = jax.jit(scheme.update)
        out = []
        for cross in crosses:
            weights, state = update(jnp.ones(k), state, gramian=jnp.asarray(cross))
            out.append(np.asarray(weights, np.float64))
        return out
