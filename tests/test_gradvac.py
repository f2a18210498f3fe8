"""GradVac (covjax._src.gradvac) against NumPy/SciPy oracles."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from aggregator_cases import EPS32, K, assert_direction_close, jacobian, rounding_tol, run
from oracles import aggregators as oracle

from covjax._src import gramian as gramian_utils


@pytest.mark.parametrize("case", ["random", "conflicting", "rank_deficient"])
def test_gradvac_matches_oracle_over_steps(case: str) -> None:
    beta = 0.5
    state = None
    targets = np.zeros((K, K))
    key = jax.random.PRNGKey(5)
    for step in range(3):
        J = jacobian(case, seed=10 + step)
        # In float64 (the oracle's precision): exact up to the weights' float32 rounding.
        weights, state = run("gradvac", J, state=state, x64=True, beta=beta, seed=5)
        key, orders = gramian_utils.shuffled_orders(key, K)
        want, targets = oracle.gradvac(J, np.asarray(orders), targets, beta)
        assert_direction_close(weights @ J, want, J, tol=rounding_tol(weights))
        # The targets (EMAs of cosines, |φ| ≤ 1) are stored in float32: ½ eps32 per step.
        np.testing.assert_allclose(np.asarray(state.inner.targets), targets, atol=2 * EPS32)


def test_gradvac_with_a_zero_gradient_skips_its_pairs() -> None:
    J = jacobian("zero", seed=6)
    weights, state = run("gradvac", J)
    assert np.all(np.isfinite(weights))
    targets = np.asarray(state.inner.targets)
    np.testing.assert_array_equal(targets[2], 0.0)
    np.testing.assert_array_equal(targets[:, 2], 0.0)
