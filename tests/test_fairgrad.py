"""FairGrad: the α-fair weights against a float64 root-finding oracle, its limits and hygiene."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import random_gramian, vmapped_weights64, weights64
from oracles import gramian_aggregators as oracle

import covjax


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_fairgrad_matches_the_oracle_at_k32(alpha: float, seed: int) -> None:
    gramian = random_gramian(seed)
    got = weights64(covjax.fairgrad(alpha), gramian)
    want = oracle.fairgrad(gramian, alpha)
    # The solve is float64-exact; the weights come back rounded to float32 (the state's dtype).
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_fairgrad_warm_start_gives_the_same_solution() -> None:
    gramian = random_gramian(2, k=8)
    np.testing.assert_allclose(
        weights64(covjax.fairgrad(2.0), gramian, steps=3), oracle.fairgrad(gramian, 2.0), rtol=1e-5
    )


def test_fairgrad_at_alpha_one_is_nash_mtl() -> None:
    """α = 1 is proportional fairness: Nash-MTL's (G w)_i = 1/w_i."""
    gramian = random_gramian(3, k=6)
    np.testing.assert_allclose(
        weights64(covjax.fairgrad(1.0), gramian), weights64(covjax.nash_mtl(), gramian), rtol=1e-5
    )


def test_fairgrad_vmaps_over_alpha() -> None:
    gramian = random_gramian(4, k=8)
    alphas = jnp.array([0.5, 1.0, 3.0])
    batched = vmapped_weights64(covjax.fairgrad, alphas, gramian)
    for row, alpha in zip(batched, [0.5, 1.0, 3.0], strict=True):
        np.testing.assert_allclose(row, oracle.fairgrad(gramian, alpha), rtol=1e-5)


def test_fairgrad_float32_improvements_follow_the_fairness_law() -> None:
    """In float32: u_i = (G w)_i equals w_i^(−1/α) to the solve's conditioning."""
    gramian = random_gramian(5, k=8).astype(np.float32)
    scheme = covjax.fairgrad(2.0)
    weights, _ = jax.jit(scheme.update)(jnp.ones(8), scheme.init(jnp.ones(8)), gramian=gramian)
    w = np.asarray(weights, np.float64)
    improvements = gramian.astype(np.float64) @ w
    # cond(G) ≲ 1e4 here; float32 Newton stops at ~cond·eps32 ≈ 1e-3 relative.
    np.testing.assert_allclose(improvements, w ** (-1.0 / 2.0), rtol=1e-2)


def test_fairgrad_degenerate_gradients_give_finite_weights() -> None:
    """Opposing gradients (no solution for α ≥ 1): the ridge fallback; a dead loss: weight 0."""
    g = np.array([[1.0, 0.5], [-1.0, -0.5], [0.0, 0.0], [0.3, -2.0]], np.float32)
    gramian = g @ g.T
    scheme = covjax.fairgrad(2.0)
    state = scheme.init(jnp.ones(4))
    weights, new_state = jax.jit(scheme.update)(jnp.ones(4), state, gramian=gramian)
    assert bool(covjax.step_accepted(state, new_state))
    assert np.all(np.isfinite(weights)) and np.all(np.asarray(weights) >= 0)
    assert float(weights[2]) == 0.0
    zero, _ = scheme.update(jnp.ones(4), state, gramian=np.zeros((4, 4), np.float32))
    np.testing.assert_allclose(zero, 0.25)


def test_fairgrad_at_alpha_zero_is_the_mean() -> None:
    """α = 0: the sum of improvements, maximized by the mean gradient (also under vmap)."""
    gramian = random_gramian(6, k=5)
    np.testing.assert_allclose(weights64(covjax.fairgrad(0.0), gramian), 0.2)
    batched = vmapped_weights64(covjax.fairgrad, jnp.array([0.0, 2.0]), gramian)
    np.testing.assert_allclose(batched[0], 0.2)
    np.testing.assert_allclose(batched[1], oracle.fairgrad(gramian, 2.0), rtol=1e-5)


def test_fairgrad_rejects_a_negative_alpha() -> None:
    with pytest.raises(ValueError, match="alpha must be ≥ 0"):
        covjax.fairgrad(-1.0)
