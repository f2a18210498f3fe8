"""PCGrad (covjax._src.pcgrad) against NumPy/SciPy oracles."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from aggregator_cases import CASES, EPS32, K, assert_direction_close, jacobian, rounding_tol, run
from oracles import aggregators as oracle

from covjax._src import gramian as gramian_utils


@pytest.mark.parametrize("case", CASES)
def test_pcgrad_matches_oracle(case: str) -> None:
    J = jacobian(case, seed=1)
    weights, state = run("pcgrad", J, seed=3, x64=True)
    _, orders = gramian_utils.shuffled_orders(jax.random.PRNGKey(3), K)
    want = oracle.pcgrad(J, np.asarray(orders))
    assert_direction_close(weights @ J, want, J, tol=rounding_tol(weights))
    # The key advances: the next step draws new orders.
    assert not np.array_equal(np.asarray(state.inner.key), np.asarray(jax.random.PRNGKey(3)))


def test_pcgrad_removes_the_conflict_of_two_opposing_gradients() -> None:
    J = np.array([[1.0, 0.0], [-1.0, 1.0]])
    weights, _ = run("pcgrad", J, x64=True)
    # g1 − ⟨g1,g2⟩/‖g2‖² g2 = g1 + ½g2 = (½, ½) and g2 − ⟨g2,g1⟩/‖g1‖² g1 = g2 + g1 = (0, 1).
    # Exact in float64 up to the float32 rounding of the weights (½ ulp each).
    np.testing.assert_allclose(weights, [2.0, 1.5], rtol=EPS32)
    d = weights @ J
    np.testing.assert_allclose(d, [0.5, 1.5], atol=4 * EPS32)
    assert np.all(J @ d > 0)


def test_pcgrad_without_conflict_is_the_plain_sum() -> None:
    J = np.abs(jacobian("random", seed=2))
    weights, _ = run("pcgrad", J)
    np.testing.assert_allclose(weights, np.ones(K), atol=1e-6)


def test_pcgrad_is_deterministic_given_the_seed() -> None:
    J = jacobian("conflicting", seed=4)
    a, state_a = run("pcgrad", J, seed=7)
    b, state_b = run("pcgrad", J, seed=7)
    np.testing.assert_array_equal(a, b)
    a2, _ = run("pcgrad", J, state=state_a)
    b2, _ = run("pcgrad", J, state=state_b)
    np.testing.assert_array_equal(a2, b2)
