"""GradNorm and MGDA against float64 NumPy/SciPy oracles, plus their degenerate inputs."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import gradient_schemes as oracle

import covjax
from covjax._src.mgda import normalize_gramian

#: Machine epsilon of float32, the precision the schemes compute in.
EPS32 = float(np.finfo(np.float32).eps)

# ----------------------------------------------------------------------------- GradNorm


@functools.partial(jax.jit, static_argnums=0)
def run_gradnorm(scheme: covjax.Weighting, losses: jax.Array, norms: jax.Array) -> jax.Array:
    """Weights of every step for (T, K) losses and per-loss gradient norms at the layer."""
    state = scheme.init(losses[0])

    def body(state, inputs):
        step_losses, step_norms = inputs
        weights, state = scheme.update(step_losses, state, gramian=jnp.diag(step_norms**2))
        return state, weights

    return jax.lax.scan(body, state, (losses, norms))[1]


def gradnorm_trace(seed: int, steps: int = 40, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.005, 0.05, size=k)
    t = np.arange(steps)[:, None]
    noise = rng.lognormal(0, 0.1, (steps, k))
    losses = 10.0 ** rng.uniform(-1, 1, size=k) * np.exp(-rates * t) * noise
    norms = 10.0 ** rng.uniform(-1, 1, size=k) * rng.lognormal(0, 0.2, (steps, k))
    return losses.astype(np.float32), norms.astype(np.float32)


def run_gradnorm_float64(scheme: covjax.Weighting, losses, norms) -> np.ndarray:
    """``run_gradnorm`` with the maths in float64, as the oracle (a loop: the state's
    dtypes change on the first step, which a scan carry does not allow)."""
    with jax.enable_x64(True):
        update = jax.jit(scheme.update)
        losses, norms = jnp.asarray(losses, jnp.float64), jnp.asarray(norms, jnp.float64)
        state, weights = scheme.init(losses[0]), []
        for step_losses, step_norms in zip(losses, norms, strict=True):
            step_weights, state = update(step_losses, state, gramian=jnp.diag(step_norms**2))
            weights.append(step_weights)
    return np.asarray(weights, np.float64)


def trace_tol(weights: np.ndarray) -> float:
    """float64 maths vs the oracle after T steps: the weights are stored in float32 (½eps32
    relative each step), and these roundings add up at most linearly over the T steps."""
    return weights.shape[0] * EPS32 * float(np.abs(weights).max())


@pytest.mark.parametrize("form", ["reference", "paper"])
@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_gradnorm_matches_oracle(form: str, alpha: float) -> None:
    losses, norms = gradnorm_trace(seed=int(alpha * 10) + len(form))
    ours = run_gradnorm_float64(covjax.gradnorm(alpha=alpha, form=form), losses, norms)
    expected = oracle.gradnorm_weights(losses, norms, alpha=alpha, form=form)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=trace_tol(expected))
    total = losses.shape[1] if form == "paper" else 1.0
    np.testing.assert_allclose(ours.sum(axis=1), total, rtol=1e-5)
    # The weights really moved, so the comparison is not vacuous.
    assert np.ptp(ours[-1]) > 1e-2 * total


def test_gradnorm_learning_rate_and_custom_optimizer() -> None:
    losses, norms = gradnorm_trace(seed=3, steps=10, k=3)
    ours64 = run_gradnorm_float64(covjax.gradnorm(learning_rate=0.1), losses, norms)
    expected = oracle.gradnorm_weights(losses, norms, learning_rate=0.1)
    np.testing.assert_allclose(ours64, expected, atol=trace_tol(expected))
    ours = np.asarray(run_gradnorm(covjax.gradnorm(learning_rate=0.1), losses, norms))
    via_optimizer = run_gradnorm(covjax.gradnorm(optimizer=optax.adam(0.1)), losses, norms)
    chex.assert_trees_all_close(via_optimizer, ours, atol=1e-7)


def test_gradnorm_all_clamped_restarts_uniform() -> None:
    # An "optimiser" that sends every weight to 0: the clamp+renormalize would be 0/0.
    to_zero = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params: (jax.tree.map(jnp.negative, params), state),
    )
    losses, norms = gradnorm_trace(seed=4, steps=3, k=4)
    weights = np.asarray(run_gradnorm(covjax.gradnorm(optimizer=to_zero), losses, norms))
    np.testing.assert_allclose(weights, 0.25, atol=1e-7)


def test_gradnorm_first_step_and_zero_initial_loss() -> None:
    scheme = covjax.gradnorm(form="paper")
    update = jax.jit(scheme.update)
    losses = jnp.array([0.0, 2.0, 3.0])
    state = scheme.init(losses)
    # A zero loss has no training rate L/L(0): the step is rejected, w(0) = 1 kept.
    weights, rejected = update(losses, state, gramian=jnp.eye(3))
    chex.assert_trees_all_close(weights, jnp.ones(3))  # w(0) = 1 in the paper form
    chex.assert_trees_all_equal(rejected, state)
    weights, state = update(losses + 1.0, state, gramian=jnp.eye(3))
    chex.assert_trees_all_close(weights, jnp.ones(3))  # the first accepted step: L(0) = L
    chex.assert_trees_all_close(state.inner.initial_losses, losses + 1.0)
    weights, state = update(losses + 2.0, state, gramian=jnp.eye(3))
    assert np.all(np.isfinite(weights)) and np.isclose(float(jnp.sum(weights)), 3.0)


def test_gradnorm_errors() -> None:
    with pytest.raises(ValueError, match="form"):
        covjax.gradnorm(form="both")
    with pytest.raises(ValueError, match="alpha"):
        covjax.gradnorm(alpha=-1.0)
    scheme = covjax.gradnorm()
    state = scheme.init(jnp.ones(2))
    with pytest.raises(ValueError, match="Gramian"):
        scheme.update(jnp.ones(2), state)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        scheme.update(jnp.ones(2), state, gramian=jnp.eye(3))


# ----------------------------------------------------------------------------- MGDA solver

solve = jax.jit(covjax.min_norm_solver)
solve_plain_frank_wolfe = jax.jit(functools.partial(covjax.min_norm_solver, refine=False))


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
    value = oracle.min_norm_objective(gramian, weights)
    # 1e-6 relative; the absolute term is the float32 rounding of G itself (|αᵀEα| ≤
    # ½eps32·max G_ii on the simplex: objectives closer than that look equal to the solver).
    scale = float(np.max(np.diag(gramian)))
    assert value - optimum <= 1e-6 * optimum + EPS32 * scale, (value, optimum, scale)


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


# ----------------------------------------------------------------------------- MGDA scheme


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_normalizations(normalization: str) -> None:
    rng = np.random.default_rng(5)
    jacobian = random_jacobian(rng, "agreeing", 5, 8)
    gramian = jacobian @ jacobian.T
    losses = rng.uniform(0.1, 10.0, size=5)
    scheme = covjax.mgda(normalization=normalization)
    state = scheme.init(jnp.asarray(losses, jnp.float32))
    weights, state = jax.jit(scheme.update)(
        jnp.asarray(losses, jnp.float32), state, gramian=jnp.asarray(gramian, jnp.float32)
    )
    normalized = oracle.normalized_gramian(gramian, losses, normalization)
    optimum = oracle.min_norm_optimum(normalized)
    assert_near_optimal(normalized, np.asarray(weights, np.float64), optimum)


def test_mgda_pytree_losses_and_rejected_steps() -> None:
    scheme = covjax.mgda(normalization="l2")
    update = jax.jit(scheme.update)
    losses = {"a": jnp.float32(1.0), "b": jnp.float32(2.0)}
    state = scheme.init(losses)
    gramian = jnp.array([[4.0, -1.0], [-1.0, 1.0]])
    weights, state = update(losses, state, gramian=gramian)
    assert set(weights) == {"a", "b"}
    chex.assert_trees_all_close(weights["a"] + weights["b"], jnp.float32(1.0))
    # A NaN Gramian (or loss) is a rejected step: previous weights, state unchanged.
    again, new_state = update(losses, state, gramian=gramian.at[0, 0].set(jnp.nan))
    chex.assert_trees_all_close(again, weights)
    assert int(new_state.count) == int(state.count)
    nan_losses = {"a": jnp.float32(jnp.nan), "b": jnp.float32(1.0)}
    again, _ = update(nan_losses, state, gramian=gramian)
    chex.assert_trees_all_close(again, weights)
    # A zero gradient under l2 normalization: no division by zero.
    weights, _ = update(losses, state, gramian=jnp.array([[0.0, 0.0], [0.0, 1.0]]))
    assert all(np.isfinite(float(w)) for w in weights.values())


def test_mgda_errors() -> None:
    with pytest.raises(ValueError, match="normalization"):
        covjax.mgda(normalization="l1")
    with pytest.raises(ValueError, match="normalization"):
        normalize_gramian(jnp.eye(2), jnp.ones(2), "max")


# ----------------------------------------------------------------------------- MGDA, zero gradients


def jacobian_with_zero_row(seed: int, k: int = 5, dim: int = 8, zero: int = 2) -> np.ndarray:
    """k generic gradients in dim > k dimensions (a unique min-norm point), row ``zero`` 0."""
    jacobian = random_jacobian(np.random.default_rng(seed), "generic", k, dim)
    jacobian[zero] = 0.0
    return jacobian


def mgda_weights(scheme: covjax.Weighting, gramian: np.ndarray, jit: bool = True) -> np.ndarray:
    losses = jnp.ones(gramian.shape[0], jnp.float32)
    update = jax.jit(scheme.update) if jit else scheme.update
    weights, _ = update(losses, scheme.init(losses), gramian=jnp.asarray(gramian, jnp.float32))
    return np.asarray(weights, np.float64)


def reduced_oracle(
    gramian: np.ndarray, kept: np.ndarray, normalization: str = "none"
) -> tuple[np.ndarray, float]:
    """float64 brute force on the kept gradients only: the weights (0 elsewhere) and K·cond·eps32,
    the forward error of a float32 solve with the float32-rounded reduced Gramian."""
    reduced = gramian[np.ix_(kept, kept)]
    reduced = oracle.normalized_gramian(reduced, np.ones(len(kept)), normalization)
    _, alpha = oracle.min_norm_by_enumeration(reduced)
    weights = np.zeros(gramian.shape[0])
    weights[kept] = alpha
    return weights, len(kept) * np.linalg.cond(reduced) * EPS32


@pytest.mark.parametrize("zero", [0, 2, 4])
def test_mgda_zero_gradient_stalls_by_default_and_is_excluded_on_request(zero: int) -> None:
    jacobian = jacobian_with_zero_row(seed=zero, zero=zero)
    gramian = jacobian @ jacobian.T
    # Default: the origin is in the hull, all weight goes to the zero gradient, the step is 0.
    stalled = mgda_weights(covjax.mgda(), gramian)
    np.testing.assert_array_equal(stalled, np.eye(5)[zero])
    assert np.linalg.norm(stalled @ jacobian) == 0.0
    # "exclude": the min-norm point of the other four, the zero gradient weighted 0.
    weights = mgda_weights(covjax.mgda(zero_gradients="exclude"), gramian)
    kept = np.flatnonzero(np.arange(5) != zero)
    want, tol = reduced_oracle(gramian, kept)
    assert weights[zero] == 0.0 and np.all(weights >= 0.0)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=5 * EPS32)  # K roundings of α
    np.testing.assert_allclose(weights, want, atol=tol)
    assert np.linalg.norm(weights @ jacobian) > 1e-3 * np.linalg.norm(jacobian, axis=1).max()


def test_mgda_exclusion_threshold_is_relative_to_the_largest_gradient() -> None:
    jacobian = jacobian_with_zero_row(seed=7)
    largest = np.linalg.norm(jacobian, axis=1).max()
    direction = np.random.default_rng(8).normal(size=jacobian.shape[1])
    direction /= np.linalg.norm(direction)
    scheme = covjax.mgda(zero_gradients="exclude")
    # Below DEAD_GRADIENT (1e-5) of the largest norm: treated as zero and excluded ...
    jacobian[2] = 1e-7 * largest * direction
    assert mgda_weights(scheme, jacobian @ jacobian.T)[2] == 0.0
    # ... above it: a real (small) gradient, kept, and the min-norm point sits next to it.
    jacobian[2] = 1e-3 * largest * direction
    gramian = jacobian @ jacobian.T
    assert_near_optimal(gramian, mgda_weights(scheme, gramian), oracle.min_norm_optimum(gramian))
    assert mgda_weights(scheme, gramian)[2] > 0.5
    # Relative, so scale free: the same Jacobian times 1e-15 (squared norms ~1e-30).
    jacobian[2] = 0.0
    tiny = 1e-15 * jacobian
    np.testing.assert_allclose(
        mgda_weights(scheme, tiny @ tiny.T),
        mgda_weights(scheme, jacobian @ jacobian.T),
        atol=reduced_oracle(gramian, np.array([0, 1, 3, 4]))[1],
    )


@pytest.mark.parametrize("normalization", ["none", "l2", "loss+"])
def test_mgda_exclusion_jit_vmap_and_normalizations(normalization: str) -> None:
    scheme = covjax.mgda(normalization=normalization, zero_gradients="exclude")
    gramians = []
    for zero in range(3):
        jacobian = jacobian_with_zero_row(seed=10 + zero, k=4, zero=zero)
        gramians.append(jacobian @ jacobian.T)
    losses = jnp.ones(4, jnp.float32)
    batched = jax.jit(jax.vmap(lambda g: scheme.update(losses, scheme.init(losses), gramian=g)[0]))(
        jnp.asarray(np.stack(gramians), jnp.float32)
    )
    for zero, gramian in enumerate(gramians):
        eager = mgda_weights(scheme, gramian, jit=False)
        jitted = mgda_weights(scheme, gramian)
        kept = np.flatnonzero(np.arange(4) != zero)
        want, tol = reduced_oracle(gramian, kept, normalization)
        for weights in (eager, jitted, np.asarray(batched[zero], np.float64)):
            assert weights[zero] == 0.0
            np.testing.assert_allclose(weights, want, atol=tol)


def test_mgda_exclusion_degenerate_gramians() -> None:
    scheme = covjax.mgda(zero_gradients="exclude")
    # Every gradient zero: nothing to exclude against, uniform weights (as "include").
    np.testing.assert_array_equal(mgda_weights(scheme, np.zeros((4, 4))), np.full(4, 0.25))
    # One gradient left: all weight on it.
    jacobian = np.zeros((4, 3))
    jacobian[1] = [1.0, -2.0, 0.5]
    np.testing.assert_allclose(mgda_weights(scheme, jacobian @ jacobian.T), np.eye(4)[1])
    # Non-finite entries: finite weights (the weighting wrapper rejects such a step).
    for bad in (np.nan, np.inf):
        gramian = np.eye(4)
        gramian[1, 2] = gramian[2, 1] = bad
        weights = covjax.min_norm_solver(gramian, excluded=jnp.zeros(4, bool))
        np.testing.assert_array_equal(weights, 0.25)
    with pytest.raises(ValueError, match="zero_gradients must be one of"):
        covjax.mgda(zero_gradients="drop")
    with pytest.raises(ValueError, match=r"excluded must be a \(3,\) bool"):
        covjax.min_norm_solver(jnp.eye(3), excluded=jnp.zeros(3))


def trunk_and_heads_losses(params: dict, x: jax.Array, y: jax.Array) -> dict:
    """Two losses through the trunk and a penalty on one head (zero gradient w.r.t. the trunk)."""
    z = jnp.tanh(x @ params["trunk"])
    return {
        "fit": jnp.mean((z @ params["heads"][0] - y) ** 2),
        "mirror": jnp.mean((z @ params["heads"][1] + y) ** 2),
        "head_penalty": 0.1 * jnp.sum(params["heads"][2] ** 2),
    }


def test_mgda_value_and_grad_head_only_loss_under_wrt_trunk() -> None:
    rng = np.random.default_rng(3)
    params = {
        "trunk": jnp.asarray(rng.normal(size=(4, 6)) * 0.5, jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(3, 6)) * 0.5, jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    y = jnp.sin(x[:, 0] - x[:, 1])
    names = ("fit", "head_penalty", "mirror")  # covjax's order: sorted keys

    def train(zero_gradients: str) -> tuple[dict, dict]:
        scheme = covjax.mgda(zero_gradients=zero_gradients)
        step = jax.jit(covjax.value_and_grad(trunk_and_heads_losses, scheme, wrt="trunk"))
        state, current = scheme.init(trunk_and_heads_losses(params, x, y)), params
        for _ in range(3):
            out, grads = step(current, state, x, y)
            state = out.state
            current = jax.tree.map(lambda p, g: p - 0.1 * g, current, grads)
        first, _ = step(params, scheme.init(trunk_and_heads_losses(params, x, y)), x, y)
        return first.weights, current

    weights, trained = train("include")
    assert float(weights["head_penalty"]) == 1.0  # the stall: the trunk never moves
    np.testing.assert_array_equal(trained["trunk"], params["trunk"])

    weights, trained = train("exclude")
    assert float(weights["head_penalty"]) == 0.0
    # The weights are the min-norm point of the two trunk gradients (float64 oracle).
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), params)
        rows = np.stack(
            [
                np.ravel(
                    jax.grad(lambda p, n=n: trunk_and_heads_losses(p, x, y)[n])(params64)["trunk"]
                )
                for n in names
            ]
        )
    assert np.all(rows[1] == 0.0)
    gramian = rows @ rows.T
    want, tol = reduced_oracle(gramian, np.array([0, 2]))
    np.testing.assert_allclose([float(weights[n]) for n in names], want, atol=tol)
    assert np.abs(np.asarray(trained["trunk"]) - np.asarray(params["trunk"])).max() > 1e-3
