"""MoDo: the double-sampling simplex step against an explicit-gradient oracle and its limits
(its docstring recipe runs in tests/test_sdmgrad.py)."""

from __future__ import annotations

import numpy as np
import pytest
from aggregator_cases import run64, two_batches, vmapped_weights64
from oracles import gramian_aggregators as oracle

import covjax


@pytest.mark.parametrize(("gamma", "rho"), [(1e-3, 0.1), (1e-2, 0.0), (0.1, 1.0)])
def test_modo_matches_the_oracle_at_k32(gamma: float, rho: float) -> None:
    batches = [two_batches(seed) for seed in range(4)]
    got = run64(covjax.modo(gamma, rho), [a @ b.T for a, b in batches])
    simplex = np.full(32, 1 / 32)
    for (a, b), weights in zip(batches, got, strict=True):
        simplex = oracle.modo(a, b, simplex, gamma, rho)
        np.testing.assert_allclose(weights, simplex, rtol=0, atol=1e-5 * simplex.max())
    assert np.abs(got[-1] - 1 / 32).max() > 1e-3, "λ did not move: a weak test"


def test_modo_iterates_towards_mgda() -> None:
    """Deterministic (one batch's Gramian), ρ = 0: the projected gradient steps on ½λᵀGλ
    converge to MGDA's min-norm weights."""
    a, _ = two_batches(6, k=6)
    gramian = a @ a.T
    step = 1.0 / np.linalg.eigvalsh(gramian).max()
    iterates = run64(covjax.modo(step, 0.0), [gramian] * 3000)
    objective = np.array([w @ gramian @ w for w in iterates])
    # Projected gradient with step 1/L decreases the objective monotonically, up to the
    # float32 rounding of λ kept in the state between steps (~K·eps32 relative).
    assert np.all(np.diff(objective) <= 6 * 1.2e-7 * objective[0])
    mgda = np.asarray(covjax.min_norm_solver(gramian.astype(np.float32)), np.float64)
    # Sublinear convergence: after 3000 steps, within 1e-3 of the minimum.
    np.testing.assert_allclose(objective[-1], mgda @ gramian @ mgda, rtol=1e-3)


def test_modo_vmaps_over_gamma() -> None:
    a, b = two_batches(7, k=6)
    gammas = np.array([0.0, 1e-3, 1e-2])
    batched = vmapped_weights64(covjax.modo, gammas, a @ b.T)
    for row, gamma in zip(batched, gammas, strict=True):
        want = oracle.modo(a, b, np.full(6, 1 / 6), gamma, 0.1)
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-6)


def test_modo_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="gamma must be ≥ 0"):
        covjax.modo(-1.0)
