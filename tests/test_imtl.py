"""IMTL-G (covjax._src.imtl; IMTL-L is tested with the loss schemes) against NumPy/SciPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from aggregator_cases import EPS32, K, conditioning_tol, jacobian, run
from oracles import aggregators as oracle


@pytest.mark.parametrize("case", ["random", "conflicting"])
def test_imtl_g_matches_closed_form(case: str) -> None:
    J = jacobian(case, seed=9)
    want = oracle.imtl_g(J)
    # The solve itself is exact: in float64 only the weights' float32 rounding is left.
    weights, _ = run("imtl_g", J, x64=True)
    np.testing.assert_allclose(weights, want, rtol=EPS32, atol=EPS32 * np.abs(want).max())
    # In float32 the (K+1) linear solve amplifies the Gramian's rounding by its condition
    # number (≈ 2e3 for the near-opposed pairs of "conflicting").
    weights, _ = run("imtl_g", J)
    np.testing.assert_allclose(weights, want, atol=conditioning_tol(J) * np.abs(want).max())


@pytest.mark.parametrize("case", ["parallel", "rank_deficient", "zero"])
def test_imtl_g_degenerate_cases_keep_equal_projections(case: str) -> None:
    J = jacobian(case, seed=9)
    weights, _ = run("imtl_g", J)
    assert np.all(np.isfinite(weights))
    # Σα = 1 is a row of the least-squares system: met to its backward error, K·eps32·Σ|α|.
    np.testing.assert_allclose(weights.sum(), 1.0, atol=K * EPS32 * np.abs(weights).sum())
    norms = np.linalg.norm(J, axis=1)
    live = norms > 0
    projections = (J[live] @ (weights @ J)) / norms[live]
    scale = norms.max()
    np.testing.assert_allclose(projections / scale, projections[0] / scale, atol=1e-4)
    if case == "zero":
        assert weights[2] == 0.0
        want = oracle.imtl_g(J[live])
        # A float32 solve on the live gradients: cond-limited as in the closed-form test.
        tol = conditioning_tol(J[live]) * np.abs(want).max()
        np.testing.assert_allclose(weights[live], want, atol=tol)
