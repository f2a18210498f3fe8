"""LB-PINN (Xiang et al., 2022): float64 oracle, joint training, regularizer, sweeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import loss_schemes as oracle
from precision import EPS32
from scalarization_support import assert_matches_oracle, assert_vmap_sweep
from test_loss_schemes import ADAM_B2, assert_reproduces_joint_training, joint_losses

import covjax


@pytest.mark.parametrize("init", [0.0, -2.0])
def test_matches_numpy_oracle(init: float) -> None:
    scheme = covjax.lbpinn(optax.adam(0.05, b2=ADAM_B2), init_log_variance=init)
    assert_matches_oracle(scheme, lambda tr: oracle.lbpinn(tr, 0.05, ADAM_B2, init), seed=5)


def test_reproduces_joint_training_with_adam() -> None:
    """Network Adam on Σ α L plus the scheme's Adam on s == one Adam on (θ, s) jointly."""

    def joint_objective(params):
        theta, s = params
        return jnp.sum(0.5 * jnp.exp(-s) * joint_losses(theta) + jax.nn.softplus(s))

    state = assert_reproduces_joint_training(covjax.lbpinn, joint_objective)
    log_weights = np.asarray(state.inner.log_weights, np.float64)
    # 5 softplus terms of O(1), each a few roundings, and their sum.
    np.testing.assert_allclose(
        covjax.lbpinn_regularizer(state), np.log1p(np.exp(log_weights)).sum(), rtol=20 * EPS32
    )
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
