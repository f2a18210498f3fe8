"""The shared solvers (covjax._src.solvers): dual-cone projections, non-negative QP."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import (
    assert_near_optimal,
    degenerate_jacobian,
    gramian_of,
    random_jacobian,
)
from hypothesis import given
from hypothesis import strategies as st
from oracles import gradient_schemes as oracle

import covjax
from covjax._src import gramian as gramian_utils
from covjax._src import solvers


@pytest.mark.parametrize("case", ["rank5_20x10", "parallel_opposing"])
def test_dual_cone_fallback_and_active_set_agree(case: str) -> None:
    """Lawson–Hanson (the fallback, forced by max_iters=0) finds the same projections."""
    J = degenerate_jacobian(case)
    k = J.shape[0]
    g = gramian_utils.normalized_gramian(gramian_of(J))
    eye = jnp.eye(k)
    guess = jnp.zeros((k, k), bool)
    fast, _ = jax.jit(solvers.dual_cone_projections, static_argnums=3)(g.gramian, eye, guess, None)
    fallback, _ = jax.jit(solvers.dual_cone_projections, static_argnums=3)(g.gramian, eye, guess, 0)
    scale = np.linalg.norm(J, axis=1).max() / np.sqrt(float(g.scale))  # normalized units
    projections_fast = (np.eye(k) + np.asarray(fast, np.float64)) @ J / np.sqrt(float(g.scale))
    projections_slow = (np.eye(k) + np.asarray(fallback, np.float64)) @ J / np.sqrt(float(g.scale))
    np.testing.assert_allclose(projections_fast / scale, projections_slow / scale, atol=1e-4)


def test_nonnegative_qp_is_exact_on_a_known_problem() -> None:
    gramian = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    # Unconstrained optimum (−1, 2)·(1/3)·... has a negative entry; the constrained one is (0, 1).
    x = solvers.nonnegative_qp(gramian, jnp.array([1.0, -2.0]))
    np.testing.assert_allclose(np.asarray(x), [0.0, 1.0], atol=1e-6)


# The min-norm solver of MGDA.

#: Machine epsilon of float32, the precision the schemes compute in.
EPS32 = float(np.finfo(np.float32).eps)


# ----------------------------------------------------------------------------- MGDA solver

solve = jax.jit(covjax.min_norm_solver)
solve_plain_frank_wolfe = jax.jit(functools.partial(covjax.min_norm_solver, refine=False))


KINDS = ["generic", "conflicting", "parallel", "rank_deficient", "zero", "agreeing"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [3, 8])
def test_min_norm_solver_matches_exhaustive_qp(kind: str, k: int) -> None:
    rng = np.random.default_rng(hash((kind, k)) % 2**32)
    for dim in (4, 50):
        jacobian = random_jacobian(rng, kind, k, dim)
        gramian = jacobian @ jacobian.T
        weights = np.asarray(solve(jnp.asarray(gramian, jnp.float32)), np.float64)
        assert_near_optimal(gramian, weights, oracle.min_norm_optimum(gramian))


@pytest.mark.parametrize("kind", ["generic", "agreeing", "rank_deficient"])
def test_min_norm_solver_k32_matches_slsqp(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    jacobian = random_jacobian(rng, kind, 32, 64)
    gramian = jacobian @ jacobian.T
    weights = np.asarray(solve(jnp.asarray(gramian, jnp.float32)), np.float64)
    assert_near_optimal(gramian, weights, oracle.min_norm_by_slsqp(gramian))


def test_min_norm_solver_interior_optimum_k32() -> None:
    # g_i = c + n_i with c, n_1..n_32 orthogonal: G = ‖c‖² 11ᵀ + diag(‖n_i‖²) and
    # α*_i ∝ 1/‖n_i‖², strictly inside the simplex (the one-KKT-solve fast path).
    rng = np.random.default_rng(5)
    basis, _ = np.linalg.qr(rng.normal(size=(64, 33)))
    noise_norms = rng.uniform(0.5, 2.0, size=32)
    jacobian = 3.0 * basis[:, 32] + basis[:, :32].T * noise_norms[:, None]
    gramian = jacobian @ jacobian.T
    expected = noise_norms**-2 / np.sum(noise_norms**-2)
    weights = np.asarray(solve(jnp.asarray(gramian, jnp.float32)), np.float64)
    np.testing.assert_allclose(weights, expected, atol=2e-5)
    assert_near_optimal(gramian, weights, oracle.min_norm_by_slsqp(gramian))


def test_active_set_finish_beats_plain_frank_wolfe() -> None:
    # Frank–Wolfe zig-zags towards a face; the exact finish closes the gap.
    rng = np.random.default_rng(1)
    jacobian = random_jacobian(rng, "generic", 8, 6)  # 8 gradients in 6-D: optimum near 0
    gramian = jacobian @ jacobian.T
    optimum = oracle.min_norm_optimum(gramian)
    plain = np.asarray(solve_plain_frank_wolfe(jnp.asarray(gramian, jnp.float32)), np.float64)
    refined = np.asarray(solve(jnp.asarray(gramian, jnp.float32)), np.float64)
    assert oracle.min_norm_objective(gramian, plain) - optimum > 1e-2 * optimum
    assert_near_optimal(gramian, refined, optimum)


@given(st.integers(0, 2**31 - 1))
def test_min_norm_solver_kkt_property(seed: int) -> None:
    """At α*, every gradient has (Gα*)_i ≥ α*ᵀGα*, with equality on the support."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    jacobian = random_jacobian(rng, kind, 6, 5)
    gramian = jacobian @ jacobian.T
    weights = np.asarray(solve(jnp.asarray(gramian, jnp.float32)), np.float64)
    scale = np.max(np.diag(gramian))
    multipliers = (gramian @ weights - weights @ gramian @ weights) / scale
    # The KKT solves use a pseudo-inverse cutting singular values below 1e-6·σ_max, so the
    # multipliers are met to ~1e-6 of G's scale; 1e-5 leaves a 10× margin.
    assert multipliers.min() >= -1e-5
    assert np.all(np.abs(multipliers[weights > 1e-4]) <= 1e-5)


def test_two_gradients_closed_form() -> None:
    rng = np.random.default_rng(11)
    for _ in range(5):
        jacobian = rng.normal(size=(2, 7))
        gramian = jacobian @ jacobian.T
        weights = solve(jnp.asarray(gramian, jnp.float32))
        (g11, g12), (_, g22) = gramian
        # γ = (g22 − g12)/(g11 + g22 − 2g12) in float32: the denominator's cancellation
        # amplifies eps32 by (g11 + g22 + 2|g12|)/(g11 + g22 − 2g12).
        tol = 4 * EPS32 * (g11 + g22 + 2 * abs(g12)) / (g11 + g22 - 2 * g12)
        np.testing.assert_allclose(weights, oracle.two_vector_weights(gramian), atol=tol)
    # One gradient's projection on the other is longer than itself: a vertex.
    gramian = np.array([[1.0, 1.5], [1.5, 4.0]])
    np.testing.assert_allclose(solve(jnp.asarray(gramian, jnp.float32)), [1.0, 0.0], atol=1e-7)


def test_min_norm_solver_degenerate_inputs() -> None:
    uniform = np.full(4, 0.25)
    nan_gramian = jnp.eye(4).at[1, 2].set(jnp.nan)
    np.testing.assert_allclose(solve(nan_gramian), uniform)
    np.testing.assert_allclose(solve(jnp.zeros((4, 4))), uniform)
    np.testing.assert_allclose(solve(jnp.full((4, 4), jnp.inf)), uniform)
    # Identical gradients (singular G): any simplex point is optimal, none is NaN.
    weights = np.asarray(solve(jnp.ones((4, 4))))
    assert np.all(np.isfinite(weights)) and np.isclose(weights.sum(), 1.0)
    # A zero gradient: the origin is in the hull and all weight goes to it.
    jacobian = np.random.default_rng(0).normal(size=(4, 3))
    jacobian[2] = 0.0
    np.testing.assert_allclose(solve(jnp.asarray(jacobian @ jacobian.T)), [0, 0, 1, 0], atol=1e-7)
    # Tiny and huge scales give the same weights (α* is scale invariant): bit for bit under
    # powers of two (G / max G_ii is then the same float32 matrix) ...
    gramian64 = (lambda j: j @ j.T)(np.random.default_rng(1).normal(size=(5, 9)))
    gramian = jnp.asarray(gramian64, jnp.float32)
    for scale in (2.0**-100, 2.0**100):
        np.testing.assert_array_equal(solve(gramian * scale), solve(gramian))
    # ... and to the float32 solve's accuracy otherwise: G·1e±30 rounds differently, which
    # the solve amplifies by at most K·cond(G).
    tol = 5 * np.linalg.cond(gramian64) * EPS32
    for scale in (1e-30, 1e30):
        np.testing.assert_allclose(solve(gramian * scale), solve(gramian), atol=tol)
    np.testing.assert_allclose(covjax.min_norm_solver(jnp.ones((1, 1)) * 3.0), [1.0])


def test_min_norm_solver_shape_errors() -> None:
    with pytest.raises(ValueError, match="K×K"):
        covjax.min_norm_solver(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="max_iters"):
        covjax.min_norm_solver(jnp.eye(2), max_iters=-1)
