"""CAGrad (covjax._src.cagrad) against NumPy/SciPy oracles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import (
    EPS32,
    K,
    assert_direction_close,
    gramian_of,
    jacobian,
    rounding_tol,
    run,
)
from oracles import aggregators as oracle

import covjax


@pytest.mark.parametrize("case", ["random", "conflicting", "rank_deficient", "zero", "parallel"])
@pytest.mark.parametrize("rescale", [True, False])
def test_cagrad_matches_brute_force_dual(case: str, rescale: bool) -> None:
    c = 0.4
    J = jacobian(case, seed=7)
    weights, state = run("cagrad", J, c=c, rescale=rescale, x64=True)
    dual = np.asarray(state.inner.dual, np.float64)
    dual = dual / dual.sum()  # F is 1-homogeneous: evaluate on the exact simplex
    want_d, want_objective = oracle.cagrad(J, c=c, rescale=rescale)
    got_objective = oracle.cagrad_objective(dual, J, c)
    scale = np.linalg.norm(J, axis=1).max() ** 2
    # Objective within 1e-6 relative of the brute-force optimum (and of the
    # problem's scale, for optima near 0).
    assert got_objective - want_objective <= 1e-6 * max(abs(want_objective), 1e-3 * scale)
    assert_direction_close(weights @ J, want_d, J, tol=rounding_tol(weights))


def test_cagrad_with_eight_losses_and_warm_start() -> None:
    """A larger face (K = 8, scales over two decades) and a warm-started second step."""
    c = 0.4
    first = jacobian("conflicting", seed=30, k=8, p=20)
    second = first + 0.05 * jacobian("random", seed=31, k=8, p=20)
    _, state = run("cagrad", first, c=c, rescale=False, x64=True)
    for J, start in ((first, None), (second, state)):
        weights, new_state = run("cagrad", J, state=start, c=c, rescale=False, x64=True)
        dual = np.asarray(new_state.inner.dual, np.float64)
        want_d, want_objective = oracle.cagrad(J, c=c, rescale=False)
        got_objective = oracle.cagrad_objective(dual / dual.sum(), J, c)
        assert got_objective - want_objective <= 1e-6 * abs(want_objective)
        assert_direction_close(weights @ J, want_d, J, tol=rounding_tol(weights))


def test_cagrad_with_zero_radius_is_the_mean() -> None:
    J = jacobian("conflicting", seed=8)
    weights, _ = run("cagrad", J, c=0.0, x64=True)
    np.testing.assert_allclose(weights, np.full(K, 1.0 / K), rtol=EPS32)  # float32 rounding


def cagrad_degenerate_jacobian(case: str) -> np.ndarray:
    """Gradients whose convex hull contains 0: inside it, or on its boundary."""
    if case == "inside_plane":  # three gradients 120° apart, different norms
        angles = np.array([0.0, 2.1, 4.2])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1.0], [2.0], [0.5]])
    rng = np.random.default_rng(41)
    if case == "inside":
        A = rng.normal(size=(3, 8))
        return np.vstack([A, -0.7 * A.sum(axis=0) - 0.1 * A[0]])
    if case == "boundary":  # g1 = −g2, g3 ⟂ both: 0 on an edge, g0 conflicts with nobody
        a, b = rng.normal(size=(2, 8))
        b -= (b @ a) / (a @ a) * a
        return np.stack([a, -a, b])
    raise ValueError(case)


@pytest.mark.parametrize("case", ["inside_plane", "inside", "boundary"])
@pytest.mark.parametrize("c", [1.0, 1.5, 3.0])
def test_cagrad_solves_its_problem_when_zero_is_in_the_hull(case: str, c: float) -> None:
    J = cagrad_degenerate_jacobian(case)
    weights, _ = run("cagrad", J, c=c, rescale=False)
    d = weights @ J
    g0 = J.mean(axis=0)
    best = oracle.cagrad_primal_value(J, c)
    scale = np.max(np.sum(J**2, axis=1))
    # float32 Gramian and solves: values to ~1e-5 of max‖g‖² (K·eps with margin).
    assert abs(best) <= 1e-6 * scale  # 0 in the hull: the optimum is 0
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-3) + 1e-5 * np.sqrt(scale)
    assert np.min(J @ d) >= best - 1e-5 * scale, np.min(J @ d)
    if case.startswith("inside"):
        # The dual cone is {0}: d = 0 (TorchJD's answer), not the conflicting mean.
        np.testing.assert_allclose(d / np.sqrt(scale), 0.0, atol=1e-5)
    else:
        # g0 conflicts with no gradient: it is its own projection onto the cone.
        np.testing.assert_allclose(d / np.sqrt(scale), g0 / np.sqrt(scale), atol=1e-5)


def test_cagrad_rescale_applies_to_the_degenerate_case() -> None:
    J = cagrad_degenerate_jacobian("boundary")
    plain, _ = run("cagrad", J, c=2.0, rescale=False)
    rescaled, _ = run("cagrad", J, c=2.0, rescale=True)
    np.testing.assert_allclose(rescaled, plain / 5.0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["random", "conflicting"])
def test_cagrad_primal_value_matches_the_primal_oracle(case: str) -> None:
    """The dual-based d attains the primal optimum (independent SLSQP on the primal)."""
    J = jacobian(case, seed=42)
    for c in (0.4, 1.5):
        weights, _ = run("cagrad", J, c=c, rescale=False)
        d = weights @ J
        scale = np.max(np.sum(J**2, axis=1))
        assert np.min(J @ d) >= oracle.cagrad_primal_value(J, c) - 1e-5 * scale


def test_cagrad_c_can_be_traced() -> None:
    J = jacobian("conflicting", seed=43)
    losses = jnp.ones((K,))
    gramian = gramian_of(J)

    def weights_for(c: jax.Array) -> jax.Array:
        scheme = covjax.cagrad(c=c)
        return scheme.update(losses, scheme.init(losses), gramian=gramian)[0]

    cs = jnp.array([0.0, 0.4, 1.5])
    traced = np.asarray(jax.jit(jax.vmap(weights_for))(cs))
    for c, row in zip([0.0, 0.4, 1.5], traced, strict=True):
        want, _ = run("cagrad", J, c=c)
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="c must be"):
        covjax.cagrad(c=-0.1)
