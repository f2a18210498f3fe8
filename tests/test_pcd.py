"""PCD: priority-constrained descent against a float64 SLSQP oracle; special cases, hygiene."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import EPS32
from oracles import gramian_aggregators as oracle

import covjax


def gramian_trace(seed: int, k: int, steps: int, p: int = 64) -> list[np.ndarray]:
    """Gramians of K gradients on scales 10^±1, each loss's scale drifting between steps
    (so that the moving average of the norms differs from the current ones)."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-1, 1, size=(k, 1))
    trace = []
    for _ in range(steps):
        jacobian = rng.normal(size=(k, p)) * scales * rng.uniform(0.5, 2.0, size=(k, 1))
        jacobian[0] += 0.5 * rng.normal(size=p) * scales[0]
        trace.append(jacobian @ jacobian.T)
    return trace


def run(scheme: covjax.Weighting, gramians: list[np.ndarray], x64: bool = True) -> list[np.ndarray]:
    """The weights of consecutive jitted updates, one per Gramian."""
    with jax.enable_x64(x64):
        k = gramians[0].shape[0]
        dtype = jnp.float64 if x64 else jnp.float32
        state = scheme.init(jnp.ones(k, dtype))
        update = jax.jit(scheme.update)
        out = []
        for gramian in gramians:
            weights, state = update(jnp.ones(k, dtype), state, gramian=jnp.asarray(gramian, dtype))
            out.append(np.asarray(weights, np.float64))
        return out


def directions(weights: list[np.ndarray], gramians: list[np.ndarray]) -> list[np.ndarray]:
    """d = Σ w_i g_i in the coordinates of the oracle's gradients."""
    return [w @ oracle.gradients_of(g) for w, g in zip(weights, gramians, strict=True)]


def assert_directions_close(got, want, gramians, tol: float) -> None:
    for step, (d, e, g) in enumerate(zip(got, want, gramians, strict=True)):
        scale = np.sqrt(np.diag(g).max())
        np.testing.assert_allclose(d / scale, e / scale, rtol=0, atol=tol, err_msg=f"step {step}")


@pytest.mark.parametrize("tau", [0.02, 0.3, "vector"])
@pytest.mark.parametrize("beta", [0.9, 0.999])
def test_pcd_matches_the_oracle_at_k32(tau, beta: float) -> None:
    """Five steps at K = 32, so the moving average of the norms and its bias correction count."""
    gramians = gramian_trace(0 if tau == "vector" else 1, k=32, steps=5)
    if tau == "vector":
        tau = np.random.default_rng(2).uniform(0.0, 0.5, size=31)
    want = oracle.pcd(gramians, tau, beta, 1e-8)
    weights = run(covjax.pcd(tau, beta), gramians)
    # Some constraints active, some not: the solver's active set is exercised.
    assert all(0 < np.count_nonzero(w[1:]) < 31 for w in weights), weights
    # The float64 solve is exact; the weights come back rounded to float32 (32 terms of d).
    assert_directions_close(directions(weights, gramians), want, gramians, 1e-5)


def test_pcd_warm_start_on_a_drifting_trace_gives_the_oracle() -> None:
    """Gradients drifting by 5% per step, as between training steps: each solve starts from
    the previous active set (some of it stale), and gives the cold solution."""
    rng = np.random.default_rng(11)
    jacobian = rng.normal(size=(16, 48)) * 10.0 ** rng.uniform(-1, 1, size=(16, 1))
    gramians = []
    for _ in range(6):
        jacobian = jacobian + 0.05 * rng.normal(size=jacobian.shape) * np.linalg.norm(
            jacobian, axis=1, keepdims=True
        ) / np.sqrt(48)
        gramians.append(jacobian @ jacobian.T)
    want = oracle.pcd(gramians, 0.1, 0.9, 1e-8)
    weights = run(covjax.pcd(0.1, 0.9), gramians)
    assert all(np.count_nonzero(w[1:]) > 2 for w in weights)
    assert_directions_close(directions(weights, gramians), want, gramians, 1e-5)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("k", [2, 3, 8])
def test_pcd_matches_the_oracle_at_small_k(seed: int, k: int) -> None:
    gramians = gramian_trace(seed, k=k, steps=3, p=2 * k)
    want = oracle.pcd(gramians, 0.2, 0.9, 1e-8)
    got = directions(run(covjax.pcd(0.2, 0.9), gramians), gramians)
    assert_directions_close(got, want, gramians, 1e-5)


def test_pcd_in_float32_follows_the_oracle_and_meets_the_constraints() -> None:
    gramians = gramian_trace(5, k=16, steps=3)
    weights = run(covjax.pcd(0.1, 0.9), gramians, x64=False)
    want = oracle.pcd(gramians, 0.1, 0.9, 1e-8)
    # Forward error of the float32 solve: K·cond(G̃)·eps32, cond(G̃) ≲ 1e3 for these
    # normalized gradients (16 random directions in 64 dimensions).
    assert_directions_close(directions(weights, gramians), want, gramians, 16 * 1e3 * EPS32)
    # Each secondary loss gets its share of the primary's normalized progress, to that error.
    for w, g in zip(weights, gramians, strict=True):
        improvements = g @ w  # ⟨g_j, d⟩
        assert np.all(improvements[1:] > 0)


def test_pcd_two_losses_in_closed_form() -> None:
    """K = 2 at the first step (v̂ = ‖g‖², so g̃_i = g_i/‖g_i‖ up to eps): with
    c = ⟨g̃_1, g̃_2⟩ < τ the constraint is active and d̃ = g̃_1 + (τ − c) g̃_2, rescaled to
    ‖g_1‖; with c ≥ τ, d = g_1. On TorchJD's J = [[-4, 1, 1], [6, 1, 1]]."""
    jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    tau = 0.02
    cosine = units[0] @ units[1]
    assert cosine < tau
    tilde = units[0] + (tau - cosine) * units[1]
    want = np.linalg.norm(jacobian[0]) * tilde / np.linalg.norm(tilde)
    (weights,) = run(covjax.pcd(tau), [jacobian @ jacobian.T])
    np.testing.assert_allclose(weights @ jacobian, want, rtol=1e-6)
    aligned = np.array([[1.0, 0.0], [1.0, 1.0]])
    (weights,) = run(covjax.pcd(tau), [aligned @ aligned.T])
    np.testing.assert_allclose(weights, [1.0, 0.0], atol=1e-7)


def test_pcd_special_cases() -> None:
    """g_1 = 0: no step; infeasible constraints: d = g_1; d̃ = 0: no step; one loss: d = g_1;
    a zero secondary gradient: its constraint always holds (weight 0)."""
    rng = np.random.default_rng(6)
    g = rng.normal(size=(4, 5))
    zero_primary = g.copy()
    zero_primary[0] = 0.0
    (weights,) = run(covjax.pcd(), [zero_primary @ zero_primary.T])
    np.testing.assert_array_equal(weights, 0.0)
    # g_3 = −g_2: ⟨g̃_2, d⟩ ≥ τ and ⟨g̃_2, d⟩ ≤ −τ cannot both hold.
    opposing = g.copy()
    opposing[2] = -3.0 * opposing[1]
    for x64 in (True, False):
        (weights,) = run(covjax.pcd(0.1), [opposing @ opposing.T], x64=x64)
        np.testing.assert_allclose(weights, [1.0, 0.0, 0.0, 0.0], atol=1e-6)
    # τ = 0 and g_2 = −g_1: the closest d with ⟨g_2, d⟩ ≥ 0 to g̃_1 is 0.
    cancelling = np.stack([g[0], -2.0 * g[0]])
    (weights,) = run(covjax.pcd(0.0), [cancelling @ cancelling.T])
    np.testing.assert_array_equal(weights, 0.0)
    (weights,) = run(covjax.pcd(), [g[:1] @ g[:1].T])
    np.testing.assert_allclose(weights, [1.0])
    with_dead = g.copy()
    with_dead[3] = 0.0
    (weights,) = run(covjax.pcd(0.3), [with_dead @ with_dead.T])
    (without,) = run(covjax.pcd(0.3), [with_dead[:3] @ with_dead[:3].T])
    assert weights[3] == 0.0
    np.testing.assert_allclose(weights[:3], without, rtol=1e-6)


def test_pcd_rejects_non_finite_input_without_touching_the_average() -> None:
    gramians = gramian_trace(7, k=6, steps=3)
    broken = gramians[1].copy()
    broken[2, 3] = broken[3, 2] = np.nan
    scheme = covjax.pcd(0.2, 0.9)
    with jax.enable_x64(True):
        update = jax.jit(scheme.update)
        state = scheme.init(jnp.ones(6))
        first, state = update(jnp.ones(6), state, gramian=jnp.asarray(gramians[0]))
        kept, rejected = update(jnp.ones(6), state, gramian=jnp.asarray(broken))
        assert not bool(covjax.step_accepted(state, rejected))
        np.testing.assert_array_equal(kept, first)
        np.testing.assert_array_equal(rejected.inner.squared_norms, state.inner.squared_norms)
        after, _ = update(jnp.ones(6), rejected, gramian=jnp.asarray(gramians[2]))
    # As if the broken step had never happened.
    want = run(scheme, [gramians[0], gramians[2]])[1]
    np.testing.assert_allclose(np.asarray(after, np.float64), want, rtol=1e-6)


def test_pcd_vmaps_over_tau() -> None:
    gramian = gramian_trace(8, k=8, steps=1)[0]
    scalars = jnp.array([0.0, 0.05, 0.4])
    vectors = jnp.asarray(np.random.default_rng(9).uniform(0.0, 0.5, size=(2, 7)))
    for taus in (scalars, vectors):

        def weights_for(tau: jax.Array) -> jax.Array:
            scheme = covjax.pcd(tau)
            return scheme.update(jnp.ones(8), scheme.init(jnp.ones(8)), gramian=gramian)[0]

        with jax.enable_x64(True):
            batched = np.asarray(jax.jit(jax.vmap(weights_for))(taus), np.float64)
        for row, tau in zip(batched, np.asarray(taus), strict=True):
            (want,) = oracle.pcd([gramian], tau, 0.999, 1e-8)
            assert_directions_close(directions([row], [gramian]), [want], [gramian], 1e-5)


def test_pcd_jit_equals_no_jit() -> None:
    gramians = gramian_trace(10, k=4, steps=2)
    scheme = covjax.pcd(0.2, 0.9)
    state = scheme.init(jnp.ones(4))
    jitted = run(scheme, gramians, x64=False)
    for gramian, want in zip(gramians, jitted, strict=True):
        weights, state = scheme.update(
            jnp.ones(4), state, gramian=jnp.asarray(gramian, jnp.float32)
        )
        # The same float32 program but for the compiler's fusion and reassociation.
        np.testing.assert_allclose(np.asarray(weights), want, rtol=1e-5, atol=1e-6)


def test_pcd_argument_errors() -> None:
    with pytest.raises(ValueError, match="tau must lie in"):
        covjax.pcd(1.5)
    with pytest.raises(ValueError, match="tau must lie in"):
        covjax.pcd(np.array([0.1, -0.1]))
    with pytest.raises(ValueError, match="1-D vector"):
        covjax.pcd(np.full((2, 2), 0.1))
    with pytest.raises(ValueError, match="beta"):
        covjax.pcd(beta=1.0)
    with pytest.raises(ValueError, match="eps"):
        covjax.pcd(eps=-1.0)
    with pytest.raises(ValueError, match="expected one per secondary loss: 3 for 4 losses"):
        covjax.pcd(np.array([0.1, 0.2])).init(jnp.ones(4))
