"""covjax.moco against its float64 oracle, and its contract."""

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
    drifting_jacobians,
    run_steps64,
)
from oracles import jacobian_aggregators as oracle

import covjax


def positive_losses(seed: int, steps: int, k: int = K) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    return [rng.uniform(0.1, 3.0, size=k) for _ in range(steps)]


@pytest.mark.parametrize(
    "options",
    [{}, {"beta": 0.9, "gamma": 0.5, "rho": 0.1, "beta_sigma": 0.3}],
    ids=["default", "other"],
)
def test_matches_oracle_in_float64(options: dict) -> None:
    jacobians, losses = drifting_jacobians(0, 5), positive_losses(0, 5)
    outputs, state = run_steps64(covjax.moco(num_params=P, **options), jacobians, losses)
    assert int(state.count) == 5
    for out, (want_weights, want_direction) in zip(
        outputs, oracle.moco(jacobians, losses, **options), strict=True
    ):
        weights, direction = out.weights.astype(np.float64), out.direction
        # Weights are reported in float32; the direction is float64 throughout.
        np.testing.assert_allclose(weights, want_weights, rtol=4 * EPS32)
        np.testing.assert_allclose(direction, want_direction, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=K * EPS32)


def test_vmaps_over_gamma() -> None:
    jacobians, losses = drifting_jacobians(1, 3, k=4, p=10), positive_losses(1, 3, k=4)
    gammas = jnp.array([0.05, 0.1, 1.0])

    def final_weights(gamma):
        scheme = covjax.moco(num_params=10, gamma=gamma)
        state = scheme.init(jnp.asarray(losses[0]))
        for J, loss in zip(jacobians, losses, strict=True):
            out, state = scheme.update(jnp.asarray(loss), state, jacobian=jnp.asarray(J))
        return out.weights

    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(final_weights))(gammas))
    for index, gamma in enumerate(np.asarray(gammas)):
        want = oracle.moco(jacobians, losses, gamma=float(gamma))[-1][0]
        np.testing.assert_allclose(swept[index], want, rtol=4 * EPS32)


def test_zero_gradient_and_rejected_step() -> None:
    scheme = covjax.moco(num_params=4)
    losses = jnp.array([1.0, 2.0, 0.5])
    state = scheme.init(losses)
    out, state = scheme.update(losses, state, jacobian=jnp.zeros((3, 4)).at[0].set(1.0))
    assert np.all(np.isfinite(out.weights)) and np.all(np.isfinite(out.direction))
    np.testing.assert_array_equal(state.inner.tracked[1:], np.zeros((2, 4)))
    out, rejected = scheme.update(losses, state, jacobian=jnp.full((3, 4), jnp.inf))
    assert not covjax.step_accepted(state, rejected)
    np.testing.assert_array_equal(out.direction, np.zeros(4))
    with pytest.raises(ValueError, match="has 5 columns but the scheme was built with"):
        scheme.update(losses, state, jacobian=jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="num_params must be P"):
        covjax.moco(num_params=0)


def test_value_and_grad_end_to_end() -> None:
    check_value_and_grad(covjax.moco(num_params=SHARED_PARAMS), steps=3)
