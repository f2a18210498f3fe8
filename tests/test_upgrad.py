"""UPGrad (covjax._src.upgrad) against NumPy/SciPy oracles."""

from __future__ import annotations

import numpy as np
import pytest
from aggregator_cases import CASES, assert_direction_close, degenerate_jacobian, jacobian, run
from oracles import aggregators as oracle


@pytest.mark.parametrize("case", CASES)
def test_upgrad_matches_nnls_oracle(case: str) -> None:
    J = jacobian(case, seed=17)
    weights, _ = run("upgrad", J)
    d = weights @ J
    assert_direction_close(d, oracle.upgrad(J), J, tol=2e-5)
    # Non-conflicting: d improves (or keeps) every loss.
    assert np.all(J @ d >= -1e-5 * np.linalg.norm(J, axis=1).max() ** 2)


def test_upgrad_warm_start_reaches_the_same_projections() -> None:
    first = jacobian("conflicting", seed=32)
    second = first + 0.1 * jacobian("random", seed=33)
    _, state = run("upgrad", first)
    warm, _ = run("upgrad", second, state=state)
    cold, _ = run("upgrad", second)
    np.testing.assert_allclose(warm, cold, rtol=1e-5, atol=1e-6)


def conflict_tolerance(J: np.ndarray, weights: np.ndarray) -> float:
    """How far below 0 ⟨g_j, d⟩ may go for float32 weights solved on a float32 Gramian.

    The solver's ridge allows ⟨g_j, d⟩ ≥ −4K·eps‖g_j‖² w_j, and rounding the
    Gramian to float32 moves (Gw)_j by at most eps·max‖g‖²·‖w‖₁.
    """
    k = J.shape[0]
    eps = np.finfo(np.float32).eps
    return (4 * k + 1) * eps * np.max(np.sum(J**2, axis=1)) * np.abs(weights).sum()


@pytest.mark.parametrize(
    "case", ["rank1_20x100", "rank1_20x10", "rank5_20x10", "parallel_opposing"]
)
def test_upgrad_is_non_conflicting_and_order_free_on_degenerate_matrices(case: str) -> None:
    J = degenerate_jacobian(case)
    k = J.shape[0]
    scale = np.linalg.norm(J, axis=1).max()
    want = oracle.upgrad(J)
    reference = None
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(k) if seed else np.arange(k)
        weights, _ = run("upgrad", J[order])
        assert np.all(np.isfinite(weights))
        d = weights @ J[order]
        assert np.min(J @ d) >= -conflict_tolerance(J, weights), (case, seed, np.min(J @ d))
        # The projection is unique: d matches the float64 NNLS oracle (to
        # ≈ K·eps(float32) of the largest gradient) whatever the row order.
        np.testing.assert_allclose(d / scale, want / scale, atol=1e-5, rtol=0)
        if reference is None:
            reference = d
        np.testing.assert_allclose(d / scale, reference / scale, atol=1e-5, rtol=0)
