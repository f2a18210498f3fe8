"""LB-PINN (Xiang et al., 2022): float64 oracle, joint training, regularizer, sweeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import loss_schemes as oracle
from precision import EPS32, trace_rtol
from scalarization_support import assert_matches_oracle, assert_vmap_sweep
from test_loss_schemes import ADAM_B2

import covjax


@pytest.mark.parametrize("init", [0.0, -2.0])
def test_matches_numpy_oracle(init: float) -> None:
    scheme = covjax.lbpinn(optax.adam(0.05, b2=ADAM_B2), init_log_variance=init)
    assert_matches_oracle(scheme, lambda tr: oracle.lbpinn(tr, 0.05, ADAM_B2, init), seed=5)


def test_reproduces_joint_training_with_adam() -> None:
    """Network Adam on Σ α L plus the scheme's Adam on s == one Adam on (θ, s) jointly."""
    targets = jnp.linspace(-1.0, 2.0, 5)
    losses_of = lambda theta: (theta - targets) ** 2 + 0.1  # noqa: E731
    adam = optax.adam(0.05)

    def joint_objective(params):
        theta, s = params
        return jnp.sum(0.5 * jnp.exp(-s) * losses_of(theta) + jax.nn.softplus(s))

    params = (jnp.zeros(5), jnp.zeros(5))
    joint_state = adam.init(params)
    theta = jnp.zeros(5)
    theta_state = adam.init(theta)
    scheme = covjax.lbpinn(adam)
    scheme_state = scheme.init(losses_of(theta))
    for _ in range(30):
        regularizer = covjax.lbpinn_regularizer(scheme_state)
        joint_value = joint_objective(params)
        updates, joint_state = adam.update(jax.grad(joint_objective)(params), joint_state)
        params = optax.apply_updates(params, updates)
        weights, scheme_state = scheme.update(losses_of(theta), scheme_state)
        value, grads = jax.value_and_grad(
            lambda th, w=weights: covjax.weighted_sum(losses_of(th), w)
        )(theta)
        # The objective's value: Σ α L + R, each a 5-term float32 sum of O(1) terms.
        np.testing.assert_allclose(value + regularizer, joint_value, rtol=trace_rtol(30, EPS32))
        updates, theta_state = adam.update(grads, theta_state)
        theta = optax.apply_updates(theta, updates)
    # The same float32 maths arranged two ways, 30 Adam steps: trace_rtol of each leaf's scale.
    for got, want in ((theta, params[0]), (scheme_state.inner.log_weights, params[1])):
        np.testing.assert_allclose(got, want, rtol=0, atol=trace_rtol(30) * np.abs(want).max())
    with pytest.raises(TypeError, match="expects the state of lbpinn"):
        covjax.lbpinn_regularizer(covjax.uncertainty_weighting().init(jnp.ones(3)))


def test_settles_at_the_fixed_point() -> None:
    """Constant losses: s → the root of sigmoid(s) = ½ e^{−s} L, i.e. L = 2ε⁴/(1 + ε²)."""
    losses = jnp.array([1e-2, 0.1, 1.0, 10.0])
    scheme = covjax.lbpinn(optax.sgd(0.5))
    state = scheme.init(losses)
    for _ in range(400):
        _, state = jax.jit(scheme.update)(losses, state)
    epsilon2 = np.exp(np.asarray(state.inner.log_weights, np.float64))
    # A contraction with float32 steps: it settles to a few eps32 of the fixed point.
    np.testing.assert_allclose(2 * epsilon2**2 / (1 + epsilon2), losses, rtol=1e-5)


def test_vmap_sweep_over_the_learning_rate() -> None:
    assert_vmap_sweep(lambda lr: covjax.lbpinn(optax.adam(lr)), [1e-3, 1e-2, 1e-1])
