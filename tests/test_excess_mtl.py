"""covjax.excess_mtl against its float64 oracle, and its contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import jacobian_aggregators as oracle

import covjax

K, P = 32, 300
EPS32 = float(np.finfo(np.float32).eps)


def drifting(seed: int, steps: int, k: int = K, p: int = P) -> list:
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(k, p)) * 10.0 ** rng.uniform(-1, 1, size=(k, 1))
    return [
        J * rng.uniform(0.5, 2.0, size=(k, 1)) + 0.3 * rng.normal(size=J.shape) * np.abs(J).mean()
        for _ in range(steps)
    ]


def run64(scheme: covjax.Weighting, jacobians: list) -> np.ndarray:
    with jax.enable_x64(True):
        losses = jnp.ones(jacobians[0].shape[0], jnp.float64)
        state = scheme.init(losses)
        update = jax.jit(scheme.update)
        used = []
        for J in jacobians:
            weights, state = update(losses, state, jacobian=jnp.asarray(J))
            used.append(np.asarray(weights, np.float64))
    assert int(state.count) == len(jacobians)
    return np.stack(used)


@pytest.mark.parametrize("step_size", [1e-2, 0.5])
def test_matches_oracle_in_float64(step_size: float) -> None:
    jacobians = drifting(0, 12)
    got = run64(covjax.excess_mtl(num_params=P, robust_step_size=step_size), jacobians)
    want = np.stack(oracle.excess_mtl(jacobians, step_size))
    # float64 maths, the weights stored in float32.
    np.testing.assert_allclose(got, want, rtol=4 * EPS32)
    np.testing.assert_allclose(got.sum(axis=1), K, rtol=K * EPS32)
    assert np.ptp(got[-1]) > 1e-3  # the weights moved


def test_weights_ignore_a_gradient_scale() -> None:
    jacobians = drifting(1, 5, k=4, p=20)
    scaled = [J * np.array([[1.0], [8.0], [1.0], [1.0]]) for J in jacobians]
    plain = run64(covjax.excess_mtl(num_params=20, robust_step_size=0.5), jacobians)
    other = run64(covjax.excess_mtl(num_params=20, robust_step_size=0.5), scaled)
    # Exact but for the 1e-7 inside the accumulator's square root (gradients are O(1) here).
    np.testing.assert_allclose(plain, other, rtol=1e-6)


def test_vmaps_over_step_size() -> None:
    jacobians = drifting(2, 4, k=4, p=10)
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
