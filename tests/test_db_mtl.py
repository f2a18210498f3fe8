"""DB-MTL (covjax._src.db_mtl) against NumPy/SciPy oracles."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from aggregator_cases import K, gramian_of, jacobian, scheme_and_update
from oracles import aggregators as oracle


def test_db_mtl_matches_oracle_over_steps() -> None:
    scheme, update = scheme_and_update("db_mtl")
    state = scheme.init(jnp.ones((K,)))
    rng = np.random.default_rng(18)
    J_steps = [jacobian("random", seed=20 + t) for t in range(4)]
    loss_steps = [rng.uniform(0.01, 10.0, size=K) for _ in range(4)]
    want = oracle.db_mtl(J_steps, loss_steps, beta=0.9, beta_sigma=0.5, epsilon=1e-8)
    for J, losses, direction in zip(J_steps, loss_steps, want, strict=True):
        weights, state = update(jnp.asarray(losses, jnp.float32), state, gramian=gramian_of(J))
        got = np.asarray(weights, np.float64) @ J
        np.testing.assert_allclose(got, direction, rtol=2e-5, atol=2e-5 * np.abs(direction).max())
