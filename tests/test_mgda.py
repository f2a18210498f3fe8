"""MGDA (covjax._src.mgda): normalizations, rejected steps, zero gradients, MGDA-UB on heads."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import assert_near_optimal, random_jacobian
from oracles import gradient_schemes as oracle

import covjax
from covjax._src.mgda import normalize_gramian

#: Machine epsilon of float32, the precision the schemes compute in.
EPS32 = float(np.finfo(np.float32).eps)


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
