"""Krum / Multi-Krum against explicit-vector scoring, TorchJD's recorded case, and its limits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_cases import random_gramian, vmapped_weights64, weights64
from oracles import gramian_aggregators as oracle

import covjax


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize(("n_byzantine", "n_selected"), [(0, 1), (5, 1), (5, 4), (29, 3)])
def test_krum_matches_the_oracle_at_k32(n_byzantine: int, n_selected: int, squared: bool) -> None:
    for seed in range(3):
        gramian = random_gramian(seed)
        got = weights64(covjax.krum(n_byzantine, n_selected, squared=squared), gramian)
        want = oracle.krum(gramian, n_byzantine, n_selected, squared)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_krum_reproduces_torchjd_values() -> None:
    """TorchJD's tests (tests/unit/aggregation/test_values.py): Krum(n_byzantine=1,
    n_selected=4), which sums plain distances, drops the adversarial row of J_Krum."""
    jacobian = np.array(
        [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [75.0, -666.0, 23], [1.0, 2.0, 3.0], [2.0, 0.0, 1.0]]
    )
    weights = weights64(covjax.krum(1, 4, squared=False), jacobian @ jacobian.T)
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.0, 0.25, 0.25])
    np.testing.assert_allclose(weights @ jacobian, [1.25, 0.75, 1.5])


def test_krum_resists_outliers_in_float32() -> None:
    rng = np.random.default_rng(0)
    honest = 1.0 + 0.1 * rng.normal(size=(7, 20))
    outliers = 50.0 * rng.normal(size=(2, 20))
    jacobian = np.concatenate([honest, outliers]).astype(np.float32)
    scheme = covjax.krum(2, 3)
    weights, _ = jax.jit(scheme.update)(
        jnp.ones(9), scheme.init(jnp.ones(9)), gramian=jacobian @ jacobian.T
    )
    assert np.all(np.asarray(weights[7:]) == 0)
    np.testing.assert_allclose(np.sum(weights), 1.0)


def test_krum_vmaps_over_f_and_m() -> None:
    gramian = random_gramian(5, k=10)
    for n_byzantine in range(0, 8):
        got = vmapped_weights64(lambda f: covjax.krum(f, 2), jnp.array([n_byzantine]), gramian)
        np.testing.assert_allclose(got[0], oracle.krum(gramian, n_byzantine, 2, True), atol=1e-7)
    selections = jnp.arange(1, 5)
    got = vmapped_weights64(lambda m: covjax.krum(3, m), selections, gramian)
    for row, m in zip(got, range(1, 5), strict=True):
        np.testing.assert_allclose(row, oracle.krum(gramian, 3, m, True), atol=1e-7)


def test_krum_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="n_byzantine must be ≥ 0"):
        covjax.krum(-1)
    with pytest.raises(ValueError, match="n_selected must be ≥ 1"):
        covjax.krum(1, 0)
    scheme = covjax.krum(2)
    with pytest.raises(ValueError, match="needs K ≥ n_byzantine \\+ 3"):
        scheme.update(jnp.ones(4), scheme.init(jnp.ones(4)), gramian=np.eye(4))
    scheme = covjax.krum(0, 5)
    with pytest.raises(ValueError, match="exceeds the 4 losses"):
        scheme.update(jnp.ones(4), scheme.init(jnp.ones(4)), gramian=np.eye(4))
