"""Nash-MTL (covjax._src.nash_mtl) against NumPy/SciPy oracles."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from aggregator_cases import EPS32, K, P, jacobian, run
from oracles import aggregators as oracle


@pytest.mark.parametrize("case", ["random", "conflicting", "parallel", "rank_deficient"])
def test_nash_mtl_solves_the_bargaining_equation(case: str) -> None:
    J = jacobian(case, seed=11)
    if case == "rank_deficient":
        # Rank 3 but inside a pointed cone: no non-negative combination
        # vanishes, so Gα = 1/α has a solution.
        rng = np.random.default_rng(11)
        J = np.abs(rng.normal(size=(K, 3))) @ rng.normal(size=(3, P))
    weights, _ = run("nash_mtl", J, normalize_gramian=False, x64=True)
    assert np.all(weights > 0)
    G = J @ J.T
    # Solved in float64: only the float32 rounding of α (½ eps32 relative) is left, which
    # the residual α∘(Gα) − 1 feels through |G||α|.
    residual_tol = EPS32 * (1.0 + np.max(weights * (np.abs(G) @ weights)))
    np.testing.assert_allclose(weights * (G @ weights), 1.0, atol=residual_tol)
    np.testing.assert_allclose(weights, oracle.nash_mtl(J), rtol=EPS32)
    # float32: the Newton solve reaches float32 round-off, amplified by its Hessian's
    # condition number (≈ 2e3 for the near-opposed pairs of "conflicting").
    weights32, _ = run("nash_mtl", J, normalize_gramian=False)
    np.testing.assert_allclose(weights32, weights, rtol=nash_tol(G, weights))


def nash_tol(G: np.ndarray, weights: np.ndarray) -> float:
    """float32 accuracy of α: K·eps32·cond of the Newton Hessian G + diag(α⁻²) at α."""
    return K * EPS32 * float(np.linalg.cond(G + np.diag(weights**-2.0)))


def test_nash_mtl_variant_normalizes_by_the_frobenius_norm() -> None:
    J = jacobian("random", seed=12) * 37.0
    weights, _ = run("nash_mtl", J, normalize_gramian=True)
    G = J @ J.T / np.linalg.norm(J @ J.T)
    # float32 solve: α to nash_tol relative, so α∘(Gα) = 1 to about twice that.
    np.testing.assert_allclose(weights * (G @ weights), 1.0, atol=2 * nash_tol(G, weights))
    # Scale invariance of the reference's normalization (G/37² rounds differently in float32).
    again, _ = run("nash_mtl", J / 37.0, normalize_gramian=True)
    np.testing.assert_allclose(weights, again, rtol=nash_tol(G, weights))


def test_nash_mtl_warm_start_reaches_the_same_point() -> None:
    first = jacobian("random", seed=13)
    second = first + 0.05 * jacobian("random", seed=14)
    _, state = run("nash_mtl", first, normalize_gramian=False)
    warm, _ = run("nash_mtl", second, state=state, normalize_gramian=False)
    cold, _ = run("nash_mtl", second, normalize_gramian=False)
    # Both converge to float32 round-off of the same point.
    np.testing.assert_allclose(warm, cold, rtol=2 * nash_tol(second @ second.T, cold))


def test_nash_mtl_zero_gradient_gets_zero_weight_and_opposing_stay_finite() -> None:
    J = jacobian("zero", seed=15)
    weights, _ = run("nash_mtl", J, normalize_gramian=False, x64=True)
    assert weights[2] == 0.0
    live = np.array([0, 1, 3, 4])
    # float64 solve: the weights' float32 rounding is all that is left.
    np.testing.assert_allclose(weights[live], oracle.nash_mtl(J[live]), rtol=EPS32)
    opposing = np.array([[1.0, 2.0], [-1.0, -2.0]])
    weights, _ = run("nash_mtl", opposing)
    assert np.all(np.isfinite(weights)) and np.all(weights > 0)


RECORDED = pathlib.Path(__file__).resolve().parent / "oracles" / "recorded"


def recorded_nash_cases() -> list[dict]:
    return json.loads((RECORDED / "nash_mtl_authors.json").read_text())


@pytest.mark.parametrize("case", recorded_nash_cases(), ids=lambda case: case["name"])
def test_nash_mtl_default_is_the_authors_method_on_recorded_cases(case: dict) -> None:
    """The default weights equal those of the authors' procedure (recorded from its SciPy oracle).

    Their code divides G by ‖G‖_F and multiplies the factor back inside the
    constraint, so its α solves α_i (Gα)_i = 1 with the raw Gramian; a
    weighting that kept the normalized solution would be off by √‖G‖_F (here
    0.36 to 73), far outside the tolerance.
    """
    J = np.asarray(case["jacobian"])
    want = np.asarray(case["alpha"])
    # The recording still matches its oracle (both the authors' procedure and the root).
    np.testing.assert_allclose(oracle.nash_mtl_authors(J), want, rtol=1e-9)
    np.testing.assert_allclose(want * (J @ J.T @ want), 1.0, atol=1e-9)
    weights, _ = run("nash_mtl", J)
    # float32 Gramian: α is exact to about cond(G)·eps(float32) relative.
    G = J @ J.T
    tol = 10 * np.linalg.cond(G) * np.finfo(np.float32).eps
    np.testing.assert_allclose(weights, want, rtol=tol)
    # The scale-free variant differs by exactly √‖G‖_F.
    variant, _ = run("nash_mtl", J, normalize_gramian=True)
    np.testing.assert_allclose(variant, np.sqrt(np.linalg.norm(G)) * want, rtol=tol)


def test_nash_mtl_default_weights_scale_as_one_over_the_gradients() -> None:
    # Authors' convention: α(c·J) = α(J)/c, so the update's improvements ⟨g_i, d⟩ = 1/α_i
    # scale with c² / c = c and d = Σ α_i g_i keeps its size.
    J = jacobian("random", seed=12)
    weights, _ = run("nash_mtl", J)
    scaled, _ = run("nash_mtl", 37.0 * J)
    np.testing.assert_allclose(scaled, weights / 37.0, rtol=1e-5)
    np.testing.assert_allclose(weights @ J, scaled @ (37.0 * J), rtol=1e-5, atol=1e-6)
