"""GradNorm (covjax._src.gradnorm) against its float64 NumPy oracle."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import gradient_schemes as oracle

import covjax

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
