"""NTK weights (Wang, Yu, Perdikaris, 2022) from the Gramian's diagonal: float64 oracle, the
value_and_grad path, edge cases and sweeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import pinn_balancers as oracle
from pinn_support import (
    assert_close_to_oracle,
    assert_vmap_sweep_over_alpha,
    gramians_of,
    random_jacobians,
    run_gradients,
)

import covjax


@pytest.mark.parametrize(("alpha", "update_every"), [(0.0, 1), (0.9, 1), (0.5, 7)])
def test_matches_numpy_oracle(alpha: float, update_every: int) -> None:
    gramians = gramians_of(random_jacobians(seed=11))
    scheme = covjax.ntk_weighting(alpha, update_every=update_every)
    got = run_gradients(scheme, "gramian", jnp.asarray(gramians))
    assert_close_to_oracle(got, oracle.ntk(gramians, alpha, update_every))


def test_equalises_the_weighted_traces_through_value_and_grad() -> None:
    """α = 0: every λ_i ‖∇L_i‖² equals Σ_j ‖∇L_j‖², the Gramian from covjax.value_and_grad."""
    rng = np.random.default_rng(1)
    inputs = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    scales = jnp.array([1e-2, 1.0, 1e2])

    def loss_fn(params):
        return scales * jnp.mean((inputs @ params - 1.0) ** 2, axis=0)

    params = jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)
    scheme = covjax.ntk_weighting()
    out, _ = jax.jit(covjax.value_and_grad(loss_fn, scheme))(params, scheme.init(jnp.ones(3)))
    traces = np.diag(np.asarray(covjax.per_loss_gramian(loss_fn, params)[1], np.float64))
    # A K-term sum and a division, on Gramians formed by two float32 programs: ~K·eps32 each.
    np.testing.assert_allclose(np.asarray(out.weights) * traces, traces.sum(), rtol=1e-5)


def test_zero_traces_give_bounded_weights() -> None:
    scheme = covjax.ntk_weighting()
    gramian = jnp.diag(jnp.array([4.0, 0.0]))
    weights, _ = scheme.update(jnp.ones(2), scheme.init(jnp.ones(2)), gramian=gramian)
    cap = 1 / np.finfo(np.float32).eps ** 2  # λ̂ ≤ 1/eps32²
    np.testing.assert_allclose(weights, [1.0, cap], rtol=1e-6)
    weights, _ = scheme.update(jnp.ones(2), scheme.init(jnp.ones(2)), gramian=jnp.zeros((2, 2)))
    np.testing.assert_array_equal(weights, [1.0, 1.0])


def test_vmap_sweep_over_alpha() -> None:
    gramians = gramians_of(random_jacobians(seed=12, steps=12, k=5))
    assert_vmap_sweep_over_alpha(covjax.ntk_weighting, "gramian", gramians)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: covjax.ntk_weighting(alpha=-0.1), "alpha must lie in"),
        (lambda: covjax.ntk_weighting(update_every=1.5), "update_every must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
