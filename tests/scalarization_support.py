"""Checks every loss scalarization (STCH, PBI, COSMOS) shares: its float64 oracle, the
gradient identity that defines its weights, and a vmapped hyper-parameter sweep."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from precision import EPS32, normalization_rtol
from test_loss_schemes import random_trace, run_trace

import covjax

K = 32
STEPS = 60
K_TERMS = 5  # the losses of the gradient-identity model
ORACLE_RTOL = 1e-5  # the float32 scheme against the float64 oracle, relative to max(1, |w|)


def assert_matches_oracle(
    scheme: covjax.Weighting, oracle_fn: Callable[[np.ndarray], np.ndarray], seed: int
) -> None:
    """Weights on a random (STEPS, K) trace of losses on scales 10^±3 within ORACLE_RTOL."""
    trace = random_trace(seed, STEPS, K)
    got = np.asarray(run_trace(scheme, jnp.asarray(trace)), np.float64)
    want = oracle_fn(trace)
    error = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert np.all(np.isfinite(got))
    assert error.max() < ORACLE_RTOL, (
        f"max scaled error {error.max():.3g} at {np.unravel_index(error.argmax(), error.shape)}"
    )


def assert_weighted_gradient_is_the_objective_gradient(
    scheme: covjax.Weighting, objective: Callable[[jax.Array], jax.Array]
) -> None:
    """Σ α_i ∇L_i through covjax.value_and_grad equals ∇ objective(L(θ)), in float64: an
    identity of exact arithmetic, up to the weights' one rounding to float32 (the state keeps
    float32 weights) and the K-term sum that combines them."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        inputs = jnp.asarray(rng.normal(size=(16, 3)))
        heads = jnp.asarray(rng.normal(size=(5, 3)))
        scales = jnp.array([0.5, 1.0, 2.0, 4.0, 8.0])

        def loss_fn(params):
            prediction = inputs @ params["heads"].T
            return scales * jnp.mean((prediction - inputs @ heads.T) ** 2, axis=0) + 0.1

        params = {"heads": jnp.asarray(rng.normal(size=(5, 3)))}
        state = scheme.init(loss_fn(params))
        out, grads = covjax.value_and_grad(loss_fn, scheme)(params, state)
        assert bool(covjax.step_accepted(state, out.state))
        want = jax.grad(lambda p: objective(loss_fn(p)))(params)
        np.testing.assert_allclose(grads["heads"], want["heads"], rtol=2 * K_TERMS * EPS32, atol=0)


def assert_vmap_sweep(make: Callable[[jax.Array], covjax.Weighting], values: list[float]) -> None:
    """A sweep over a traced hyper-parameter is one vmap; each slice equals a single run."""
    trace = jnp.asarray(random_trace(11, 20, 5))

    def run_one(value: jax.Array) -> jax.Array:
        return run_trace(make(value), trace)

    values = jnp.asarray(values, jnp.float32)
    swept = jax.jit(jax.vmap(run_one))(values)
    # Batched and single programs may order each step's 5-term sums differently.
    rtol = normalization_rtol(5)
    for index, value in enumerate(values):
        single = run_one(value)
        np.testing.assert_allclose(
            swept[index], single, rtol=rtol, atol=rtol * float(jnp.abs(single).max())
        )
    assert not np.allclose(swept[0], swept[-1]), "the hyper-parameter has no effect"
