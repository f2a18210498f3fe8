"""Aligned-MTL (covjax._src.aligned_mtl) against NumPy/SciPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from aggregator_cases import CASES, EPS32, assert_direction_close, jacobian, rounding_tol, run
from oracles import aggregators as oracle


@pytest.mark.parametrize("case", CASES)
def test_aligned_mtl_matches_svd_oracle(case: str) -> None:
    J = jacobian(case, seed=16)
    weights, _ = run("aligned_mtl", J, x64=True)  # float64, like the SVD oracle
    assert_direction_close(weights @ J, oracle.aligned_mtl(J), J, tol=rounding_tol(weights))


@pytest.mark.parametrize(("scale", "sigma"), [("min", 1.0), ("median", 2.0), ("rmse", 7**0.5)])
def test_aligned_mtl_orthogonal_gradients_get_equal_norms(scale: str, sigma: float) -> None:
    # Singular values 1, 2, 4: every balanced gradient gets norm σ.
    J = np.diag([1.0, 2.0, 4.0])
    weights, _ = run("aligned_mtl", J, scale=scale, x64=True)
    # Exact in float64 but for the weights' float32 rounding.
    np.testing.assert_allclose(weights, sigma * np.array([1.0, 0.5, 0.25]), rtol=EPS32)
