"""covjax.excess_mtl against its float64 oracle, and its contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jacobian_scheme_cases import (
    EPS32,
    SHARED_PARAMS,
    K,
    P,
    check_value_and_grad,
    random_jacobian,
    run_steps64,
)
from oracles import jacobian_aggregators as oracle

import covjax


def rescaled(seed: int, steps: int, k: int = K, p: int = P) -> list:
    """Drifting Jacobians whose rows also change scale from step to step (moving the weights)."""
    rng = np.random.default_rng(seed)
    J = random_jacobian(seed, k, p)
    return [
        J * rng.uniform(0.5, 2.0, size=(k, 1)) + 0.3 * rng.normal(size=J.shape) * np.abs(J).mean()
        for _ in range(steps)
    ]


@pytest.mark.parametrize("step_size", [1e-2, 0.5])
def test_matches_oracle_in_float64(step_size: float) -> None:
    jacobians = rescaled(0, 12)
    got = run64(covjax.excess_mtl(num_params=P, robust_step_size=step_size), jacobians)
    want = np.stack(oracle.excess_mtl(jacobians, step_size))
    # float64 maths, the weights stored in float32.
    np.testing.assert_allclose(got, want, rtol=4 * EPS32)
    np.testing.assert_allclose(got.sum(axis=1), K, rtol=K * EPS32)
    assert np.ptp(got[-1]) > 1e-3  # the weights moved


def test_weights_ignore_a_gradient_scale() -> None:
    jacobians = rescaled(1, 5, k=4, p=20)
    scaled = [J * np.array([[1.0], [8.0], [1.0], [1.0]]) for J in jacobians]
    plain = run64(covjax.excess_mtl(num_params=20, robust_step_size=0.5), jacobians)
    other = run64(covjax.excess_mtl(num_params=20, robust_step_size=0.5), scaled)
    # Exact but for the 1e-7 inside the accumulator's square root (gradients are O(1) here).
    np.testing.assert_allclose(plain, other, rtol=1e-6)


def test_vmaps_over_step_size() -> None:
    jacobians = rescaled(2, 4, k=4, p=10)
    sizes = jnp.array([0.01, 0.1, 1.0])

    def final_weights(step_size):
        scheme = covjax.excess_mtl(num_params=10, robust_step_size=step_size)
        losses = jnp.ones(4)
        state = scheme.init(losses)
        for J in jacobians:
            weights, state = scheme.update(losses, state, jacobian=jnp.asarray(J))
        return weights

    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(final_weights))(sizes))
    for index, size in enumerate(np.asarray(sizes)):
        np.testing.assert_allclose(
            swept[index], oracle.excess_mtl(jacobians, float(size))[-1], rtol=4 * EPS32
        )


def test_zero_first_gradient_and_rejected_step() -> None:
    scheme = covjax.excess_mtl(num_params=3)
    losses = jnp.ones(2)
    state = scheme.init(losses)
    weights, state = scheme.update(
        losses, state, jacobian=jnp.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    )
    np.testing.assert_array_equal(weights, [1.0, 1.0])
    weights, state = scheme.update(losses, state, jacobian=jnp.ones((2, 3)))
    assert np.all(np.isfinite(weights)) and int(state.count) == 2
    _, rejected = scheme.update(losses, state, jacobian=jnp.full((2, 3), jnp.nan))
    assert not covjax.step_accepted(state, rejected)
    with pytest.raises(ValueError, match="has 4 columns"):
        scheme.update(losses, state, jacobian=jnp.ones((2, 4)))


def run64(scheme: covjax.Weighting, jacobians: list) -> np.ndarray:
    outputs, state = run_steps64(scheme, jacobians)
    assert int(state.count) == len(jacobians)
    return np.stack(outputs).astype(np.float64)


def test_value_and_grad_end_to_end() -> None:
    check_value_and_grad(covjax.excess_mtl(num_params=SHARED_PARAMS, robust_step_size=0.5), steps=3)
