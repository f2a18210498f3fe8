"""Gradient aggregators (PCGrad, GradVac, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, DB-MTL)
against NumPy/SciPy oracles on explicit gradients.

Every oracle works on a random K×P Jacobian J (float64); covjax only ever sees
the float32 Gramian J Jᵀ. Directions d = Σ w_i g_i (or weights) are compared.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import aggregators as oracle

import covjax
from covjax._src import gramian as gramian_utils
from covjax._src import solvers

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


# ---------------------------------------------------------------------------
# PCGrad.


@pytest.mark.parametrize("case", CASES)
def test_pcgrad_matches_oracle(case: str) -> None:
    J = jacobian(case, seed=1)
    weights, state = run("pcgrad", J, seed=3, x64=True)
    _, orders = gramian_utils.shuffled_orders(jax.random.PRNGKey(3), K)
    want = oracle.pcgrad(J, np.asarray(orders))
    assert_direction_close(weights @ J, want, J, tol=rounding_tol(weights))
    # The key advances: the next step draws new orders.
    assert not np.array_equal(np.asarray(state.inner.key), np.asarray(jax.random.PRNGKey(3)))


def test_pcgrad_removes_the_conflict_of_two_opposing_gradients() -> None:
    J = np.array([[1.0, 0.0], [-1.0, 1.0]])
    weights, _ = run("pcgrad", J, x64=True)
    # g1 − ⟨g1,g2⟩/‖g2‖² g2 = g1 + ½g2 = (½, ½) and g2 − ⟨g2,g1⟩/‖g1‖² g1 = g2 + g1 = (0, 1).
    # Exact in float64 up to the float32 rounding of the weights (½ ulp each).
    np.testing.assert_allclose(weights, [2.0, 1.5], rtol=EPS32)
    d = weights @ J
    np.testing.assert_allclose(d, [0.5, 1.5], atol=4 * EPS32)
    assert np.all(J @ d > 0)


def test_pcgrad_without_conflict_is_the_plain_sum() -> None:
    J = np.abs(jacobian("random", seed=2))
    weights, _ = run("pcgrad", J)
    np.testing.assert_allclose(weights, np.ones(K), atol=1e-6)


def test_pcgrad_is_deterministic_given_the_seed() -> None:
    J = jacobian("conflicting", seed=4)
    a, state_a = run("pcgrad", J, seed=7)
    b, state_b = run("pcgrad", J, seed=7)
    np.testing.assert_array_equal(a, b)
    a2, _ = run("pcgrad", J, state=state_a)
    b2, _ = run("pcgrad", J, state=state_b)
    np.testing.assert_array_equal(a2, b2)


# ---------------------------------------------------------------------------
# GradVac.


@pytest.mark.parametrize("case", ["random", "conflicting", "rank_deficient"])
def test_gradvac_matches_oracle_over_steps(case: str) -> None:
    beta = 0.5
    state = None
    targets = np.zeros((K, K))
    key = jax.random.PRNGKey(5)
    for step in range(3):
        J = jacobian(case, seed=10 + step)
        # In float64 (the oracle's precision): exact up to the weights' float32 rounding.
        weights, state = run("gradvac", J, state=state, x64=True, beta=beta, seed=5)
        key, orders = gramian_utils.shuffled_orders(key, K)
        want, targets = oracle.gradvac(J, np.asarray(orders), targets, beta)
        assert_direction_close(weights @ J, want, J, tol=rounding_tol(weights))
        # The targets (EMAs of cosines, |φ| ≤ 1) are stored in float32: ½ eps32 per step.
        np.testing.assert_allclose(np.asarray(state.inner.targets), targets, atol=2 * EPS32)


def test_gradvac_with_a_zero_gradient_skips_its_pairs() -> None:
    J = jacobian("zero", seed=6)
    weights, state = run("gradvac", J)
    assert np.all(np.isfinite(weights))
    targets = np.asarray(state.inner.targets)
    np.testing.assert_array_equal(targets[2], 0.0)
    np.testing.assert_array_equal(targets[:, 2], 0.0)


# ---------------------------------------------------------------------------
# CAGrad.


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


# ---------------------------------------------------------------------------
# IMTL-G.


@pytest.mark.parametrize("case", ["random", "conflicting"])
def test_imtl_g_matches_closed_form(case: str) -> None:
    J = jacobian(case, seed=9)
    want = oracle.imtl_g(J)
    # The solve itself is exact: in float64 only the weights' float32 rounding is left.
    weights, _ = run("imtl_g", J, x64=True)
    np.testing.assert_allclose(weights, want, rtol=EPS32, atol=EPS32 * np.abs(want).max())
    # In float32 the (K+1) linear solve amplifies the Gramian's rounding by its condition
    # number (≈ 2e3 for the near-opposed pairs of "conflicting").
    weights, _ = run("imtl_g", J)
    np.testing.assert_allclose(weights, want, atol=conditioning_tol(J) * np.abs(want).max())


@pytest.mark.parametrize("case", ["parallel", "rank_deficient", "zero"])
def test_imtl_g_degenerate_cases_keep_equal_projections(case: str) -> None:
    J = jacobian(case, seed=9)
    weights, _ = run("imtl_g", J)
    assert np.all(np.isfinite(weights))
    # Σα = 1 is a row of the least-squares system: met to its backward error, K·eps32·Σ|α|.
    np.testing.assert_allclose(weights.sum(), 1.0, atol=K * EPS32 * np.abs(weights).sum())
    norms = np.linalg.norm(J, axis=1)
    live = norms > 0
    projections = (J[live] @ (weights @ J)) / norms[live]
    scale = norms.max()
    np.testing.assert_allclose(projections / scale, projections[0] / scale, atol=1e-4)
    if case == "zero":
        assert weights[2] == 0.0
        want = oracle.imtl_g(J[live])
        # A float32 solve on the live gradients: cond-limited as in the closed-form test.
        tol = conditioning_tol(J[live]) * np.abs(want).max()
        np.testing.assert_allclose(weights[live], want, atol=tol)


# ---------------------------------------------------------------------------
# Nash-MTL.


@pytest.mark.parametrize("case", ["random", "conflicting", "parallel", "rank_deficient"])
def test_nash_mtl_solves_the_bargaining_equation(case: str) -> None:
    J = jacobian(case, seed=11)
    if case == "rank_deficient":
        # Rank 3 but inside a pointed cone: no non-negative combination
        # vanishes, so Gα = 1/α has a solution.
        rng = np.random.default_rng(11)
        J = np.abs(rng.normal(size=(K, 3))) @ rng.normal(size=(3, P))
    weights, _ = run("nash_mtl", J, normalize_gramian=False, x64=True)
    assert np.all(weights > 0)
    G = J @ J.T
    # Solved in float64: only the float32 rounding of α (½ eps32 relative) is left, which
    # the residual α∘(Gα) − 1 feels through |G||α|.
    residual_tol = EPS32 * (1.0 + np.max(weights * (np.abs(G) @ weights)))
    np.testing.assert_allclose(weights * (G @ weights), 1.0, atol=residual_tol)
    np.testing.assert_allclose(weights, oracle.nash_mtl(J), rtol=EPS32)
    # float32: the Newton solve reaches float32 round-off, amplified by its Hessian's
    # condition number (≈ 2e3 for the near-opposed pairs of "conflicting").
    weights32, _ = run("nash_mtl", J, normalize_gramian=False)
    np.testing.assert_allclose(weights32, weights, rtol=nash_tol(G, weights))


def nash_tol(G: np.ndarray, weights: np.ndarray) -> float:
    """float32 accuracy of α: K·eps32·cond of the Newton Hessian G + diag(α⁻²) at α."""
    return K * EPS32 * float(np.linalg.cond(G + np.diag(weights**-2.0)))


def test_nash_mtl_variant_normalizes_by_the_frobenius_norm() -> None:
    J = jacobian("random", seed=12) * 37.0
    weights, _ = run("nash_mtl", J, normalize_gramian=True)
    G = J @ J.T / np.linalg.norm(J @ J.T)
    # float32 solve: α to nash_tol relative, so α∘(Gα) = 1 to about twice that.
    np.testing.assert_allclose(weights * (G @ weights), 1.0, atol=2 * nash_tol(G, weights))
    # Scale invariance of the reference's normalization (G/37² rounds differently in float32).
    again, _ = run("nash_mtl", J / 37.0, normalize_gramian=True)
    np.testing.assert_allclose(weights, again, rtol=nash_tol(G, weights))


def test_nash_mtl_warm_start_reaches_the_same_point() -> None:
    first = jacobian("random", seed=13)
    second = first + 0.05 * jacobian("random", seed=14)
    _, state = run("nash_mtl", first, normalize_gramian=False)
    warm, _ = run("nash_mtl", second, state=state, normalize_gramian=False)
    cold, _ = run("nash_mtl", second, normalize_gramian=False)
    # Both converge to float32 round-off of the same point.
    np.testing.assert_allclose(warm, cold, rtol=2 * nash_tol(second @ second.T, cold))


def test_nash_mtl_zero_gradient_gets_zero_weight_and_opposing_stay_finite() -> None:
    J = jacobian("zero", seed=15)
    weights, _ = run("nash_mtl", J, normalize_gramian=False, x64=True)
    assert weights[2] == 0.0
    live = np.array([0, 1, 3, 4])
    # float64 solve: the weights' float32 rounding is all that is left.
    np.testing.assert_allclose(weights[live], oracle.nash_mtl(J[live]), rtol=EPS32)
    opposing = np.array([[1.0, 2.0], [-1.0, -2.0]])
    weights, _ = run("nash_mtl", opposing)
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)


RECORDED = pathlib.Path(__file__).resolve().parent / "oracles" / "recorded"


def recorded_nash_cases() -> list[dict]:
    return json.loads((RECORDED / "nash_mtl_authors.json").read_text())


@pytest.mark.parametrize("case", recorded_nash_cases(), ids=lambda case: case["name"])
def test_nash_mtl_default_is_the_authors_method_on_recorded_cases(case: dict) -> None:
    """The default weights equal those of the authors' procedure (recorded from its SciPy oracle).

    Their code divides G by ‖G‖_F and multiplies the factor back inside the
    constraint, so its α solves α_i (Gα)_i = 1 with the raw Gramian; a
    weighting that kept the normalized solution would be off by √‖G‖_F (here
    0.36 to 73), far outside the tolerance.
    """
    J = np.asarray(case["jacobian"])
    want = np.asarray(case["alpha"])
    # The recording still matches its oracle (both the authors' procedure and the root).
    np.testing.assert_allclose(oracle.nash_mtl_authors(J), want, rtol=1e-9)
    np.testing.assert_allclose(want * (J @ J.T @ want), 1.0, atol=1e-9)
    weights, _ = run("nash_mtl", J)
    # float32 Gramian: α is exact to about cond(G)·eps(float32) relative.
    G = J @ J.T
    tol = 10 * np.linalg.cond(G) * np.finfo(np.float32).eps
    np.testing.assert_allclose(weights, want, rtol=tol)
    # The scale-free variant differs by exactly √‖G‖_F.
    variant, _ = run("nash_mtl", J, normalize_gramian=True)
    np.testing.assert_allclose(variant, np.sqrt(np.linalg.norm(G)) * want, rtol=tol)


def test_nash_mtl_default_weights_scale_as_one_over_the_gradients() -> None:
    # Authors' convention: α(c·J) = α(J)/c, so the update's improvements ⟨g_i, d⟩ = 1/α_i
    # scale with c² / c = c and d = Σ α_i g_i keeps its size.
    J = jacobian("random", seed=12)
    weights, _ = run("nash_mtl", J)
    scaled, _ = run("nash_mtl", 37.0 * J)
    np.testing.assert_allclose(scaled, weights / 37.0, rtol=1e-5)
    np.testing.assert_allclose(weights @ J, scaled @ (37.0 * J), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Aligned-MTL.


@pytest.mark.parametrize("case", CASES)
def test_aligned_mtl_matches_svd_oracle(case: str) -> None:
    J = jacobian(case, seed=16)
    weights, _ = run("aligned_mtl", J, x64=True)  # float64, like the SVD oracle
    assert_direction_close(weights @ J, oracle.aligned_mtl(J), J, tol=rounding_tol(weights))


@pytest.mark.parametrize(("scale", "sigma"), [("min", 1.0), ("median", 2.0), ("rmse", 7**0.5)])
def test_aligned_mtl_orthogonal_gradients_get_equal_norms(scale: str, sigma: float) -> None:
    # Singular values 1, 2, 4: every balanced gradient gets norm σ.
    J = np.diag([1.0, 2.0, 4.0])
    weights, _ = run("aligned_mtl", J, scale=scale, x64=True)
    # Exact in float64 but for the weights' float32 rounding.
    np.testing.assert_allclose(weights, sigma * np.array([1.0, 0.5, 0.25]), rtol=EPS32)


# ---------------------------------------------------------------------------
# UPGrad.


@pytest.mark.parametrize("case", CASES)
def test_upgrad_matches_nnls_oracle(case: str) -> None:
    J = jacobian(case, seed=17)
    weights, _ = run("upgrad", J)
    d = weights @ J
    assert_direction_close(d, oracle.upgrad(J), J, tol=2e-5)
    # Non-conflicting: d improves (or keeps) every loss.
    assert np.all(J @ d >= -1e-5 * np.linalg.norm(J, axis=1).max() ** 2)


def test_upgrad_warm_start_reaches_the_same_projections() -> None:
    first = jacobian("conflicting", seed=32)
    second = first + 0.1 * jacobian("random", seed=33)
    _, state = run("upgrad", first)
    warm, _ = run("upgrad", second, state=state)
    cold, _ = run("upgrad", second)
    np.testing.assert_allclose(warm, cold, rtol=1e-5, atol=1e-6)


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


def conflict_tolerance(J: np.ndarray, weights: np.ndarray) -> float:
    """How far below 0 ⟨g_j, d⟩ may go for float32 weights solved on a float32 Gramian.

    The solver's ridge allows ⟨g_j, d⟩ ≥ −4K·eps‖g_j‖² w_j, and rounding the
    Gramian to float32 moves (Gw)_j by at most eps·max‖g‖²·‖w‖₁.
    """
    k = J.shape[0]
    eps = np.finfo(np.float32).eps
    return (4 * k + 1) * eps * np.max(np.sum(J**2, axis=1)) * np.abs(weights).sum()


@pytest.mark.parametrize(
    "case", ["rank1_20x100", "rank1_20x10", "rank5_20x10", "parallel_opposing"]
)
def test_upgrad_is_non_conflicting_and_order_free_on_degenerate_matrices(case: str) -> None:
    J = degenerate_jacobian(case)
    k = J.shape[0]
    scale = np.linalg.norm(J, axis=1).max()
    want = oracle.upgrad(J)
    reference = None
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(k) if seed else np.arange(k)
        weights, _ = run("upgrad", J[order])
        assert np.all(np.isfinite(weights))
        d = weights @ J[order]
        assert np.min(J @ d) >= -conflict_tolerance(J, weights), (case, seed, np.min(J @ d))
        # The projection is unique: d matches the float64 NNLS oracle (to
        # ≈ K·eps(float32) of the largest gradient) whatever the row order.
        np.testing.assert_allclose(d / scale, want / scale, atol=1e-5, rtol=0)
        if reference is None:
            reference = d
        np.testing.assert_allclose(d / scale, reference / scale, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["rank5_20x10", "parallel_opposing"])
def test_dual_cone_fallback_and_active_set_agree(case: str) -> None:
    """Lawson–Hanson (the fallback, forced by max_iters=0) finds the same projections."""
    J = degenerate_jacobian(case)
    k = J.shape[0]
    g = gramian_utils.normalized_gramian(gramian_of(J))
    eye = jnp.eye(k)
    guess = jnp.zeros((k, k), bool)
    fast, _ = jax.jit(solvers.dual_cone_projections, static_argnums=3)(
        g.gramian, eye, guess, None
    )
    fallback, _ = jax.jit(solvers.dual_cone_projections, static_argnums=3)(
        g.gramian, eye, guess, 0
    )
    scale = np.linalg.norm(J, axis=1).max() / np.sqrt(float(g.scale))  # normalized units
    projections_fast = (np.eye(k) + np.asarray(fast, np.float64)) @ J / np.sqrt(float(g.scale))
    projections_slow = (np.eye(k) + np.asarray(fallback, np.float64)) @ J / np.sqrt(float(g.scale))
    np.testing.assert_allclose(projections_fast / scale, projections_slow / scale, atol=1e-4)


def test_nonnegative_qp_is_exact_on_a_known_problem() -> None:
    gramian = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    # Unconstrained optimum (−1, 2)·(1/3)·... has a negative entry; the constrained one is (0, 1).
    x = solvers.nonnegative_qp(gramian, jnp.array([1.0, -2.0]))
    np.testing.assert_allclose(np.asarray(x), [0.0, 1.0], atol=1e-6)


# ---------------------------------------------------------------------------
# DB-MTL.


def test_db_mtl_matches_oracle_over_steps() -> None:
    scheme, update = scheme_and_update("db_mtl")
    state = scheme.init(jnp.ones((K,)))
    rng = np.random.default_rng(18)
    J_steps = [jacobian("random", seed=20 + t) for t in range(4)]
    loss_steps = [rng.uniform(0.01, 10.0, size=K) for _ in range(4)]
    want = oracle.db_mtl(J_steps, loss_steps, beta=0.9, beta_sigma=0.5, epsilon=1e-8)
    for J, losses, direction in zip(J_steps, loss_steps, want, strict=True):
        weights, state = update(jnp.asarray(losses, jnp.float32), state, gramian=gramian_of(J))
        got = np.asarray(weights, np.float64) @ J
        np.testing.assert_allclose(got, direction, rtol=2e-5, atol=2e-5 * np.abs(direction).max())


# ---------------------------------------------------------------------------
# Properties shared by all.

ALL = ("pcgrad", "gradvac", "cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "db_mtl")
ORDER_FREE = ("cagrad", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad", "db_mtl")


@pytest.mark.parametrize("name", ALL)
def test_jit_equals_no_jit(name: str) -> None:
    J = jacobian("conflicting", seed=19)
    scheme = getattr(covjax, name)()
    # An identity, so in float64: fusion's reordered sums (eps64·cond(G)) then stay far below
    # the float32 rounding of the weights (one ulp at most, 2·eps32 relative).
    with jax.enable_x64(True):
        losses = jnp.asarray(np.linspace(0.5, 2.0, K))
        state = scheme.init(losses)
        eager, eager_state = scheme.update(losses, state, gramian=gramian_of(J))
        jitted, jitted_state = jax.jit(scheme.update)(losses, state, gramian=gramian_of(J))
    tol = 2 * EPS32
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=tol, atol=tol)
    for a, b in zip(jax.tree.leaves(eager_state), jax.tree.leaves(jitted_state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ALL)
def test_all_zero_gradients_give_finite_weights_and_advance(name: str) -> None:
    weights, state = run(name, np.zeros((K, P)))
    assert np.all(np.isfinite(weights))
    assert int(state.count) == 1  # accepted, not discarded as non-finite


@pytest.mark.parametrize("name", ALL)
def test_requires_the_gramian(name: str) -> None:
    scheme = getattr(covjax, name)()
    assert scheme.requires == frozenset({covjax.GRAMIAN})
    losses = jnp.ones((3,))
    with pytest.raises(ValueError, match="Gramian"):
        scheme.update(losses, scheme.init(losses))


def test_bad_hyperparameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="c must be"):
        covjax.cagrad(c=-1.0)
    with pytest.raises(ValueError, match="beta"):
        covjax.gradvac(beta=0.0)
    with pytest.raises(ValueError, match="ridge"):
        covjax.nash_mtl(ridge=-1.0)
    with pytest.raises(ValueError, match="scale"):
        covjax.aligned_mtl(scale="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        covjax.db_mtl(beta=1.0)
    with pytest.raises(ValueError, match="task_weights"):
        covjax.upgrad(task_weights=jnp.ones(2)).init(jnp.ones(3))


small_jacobians = st.builds(
    lambda k, p, values, zero_row: _small_jacobian(k, p, values, zero_row),
    st.sampled_from([2, 4]),  # two K only: every K compiles every scheme again
    st.integers(1, 5),
    st.lists(st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]), min_size=20, max_size=20),
    st.booleans(),
)


def _small_jacobian(k: int, p: int, values: list[float], zero_row: bool) -> np.ndarray:
    J = np.resize(np.asarray(values), (k, p))
    if zero_row:
        J[0] = 0.0
    return J


@settings(max_examples=15)
@given(J=small_jacobians)
def test_weights_are_always_finite(J: np.ndarray) -> None:
    # Degenerate by construction: repeated, opposing, zero and rank-deficient rows.
    for name in ALL:
        weights, state = run(name, J)
        assert np.all(np.isfinite(weights)), (name, J)
        assert int(state.count) == 1, name


@settings(max_examples=15)
@given(J=small_jacobians, data=st.data())
def test_order_free_schemes_are_permutation_equivariant(J: np.ndarray, data) -> None:
    k = J.shape[0]
    permutation = np.asarray(data.draw(st.permutations(range(k))))
    losses = np.linspace(1.0, 2.0, k)
    for name in ORDER_FREE:
        weights, _ = run(name, J, losses=losses.astype(np.float32))
        permuted, _ = run(name, J[permutation], losses=losses[permutation].astype(np.float32))
        scale = max(np.abs(weights).max(), 1.0)
        # Compare directions when the weights themselves are not unique (singular systems).
        d = weights @ J
        d_permuted = permuted @ J[permutation]
        np.testing.assert_allclose(
            d_permuted, d, atol=1e-4 * scale * max(np.abs(J).max(), 1.0), err_msg=name
        )


@pytest.mark.slow
def test_value_and_grad_applies_the_aggregated_direction() -> None:
    """End to end: the parameter gradient is Σ w_i ∇L_i with the Gramian of the true gradients."""
    rng = np.random.default_rng(21)
    features = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)}

    def loss_fn(params, x, y):
        return jnp.mean((x @ params["w"] - y) ** 2, axis=0)  # 4 losses, one per output

    scheme = covjax.nash_mtl()
    step = jax.jit(covjax.value_and_grad(loss_fn, scheme))
    result, grads = step(params, scheme.init(jnp.ones(4)), features, targets)
    jac = jax.jacrev(loss_fn)(params, features, targets)["w"].reshape(4, -1)
    want_weights, _ = run("nash_mtl", np.asarray(jac, np.float64))
    np.testing.assert_allclose(np.asarray(result.weights), want_weights, rtol=1e-4)
    want = (np.asarray(result.weights) @ np.asarray(jac)).reshape(6, 4)
    np.testing.assert_allclose(np.asarray(grads["w"]), want, rtol=1e-4, atol=1e-6)
