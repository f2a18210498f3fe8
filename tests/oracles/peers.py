"""The peers' inexact solvers, restated in float64 NumPy from their published algorithms.

These are not oracles of the optimum: they reproduce what LibMTL (and the
MGDA authors' ``MinNormSolver``) actually return, stopping rules included,
so the tests can show on recorded cases that covjax's exact solvers are never
worse where the peers stop early.

- MGDA (Sener & Koltun, NeurIPS 2018, https://arxiv.org/abs/1810.04650; the
  authors' ``find_min_norm_element``, which LibMTL's ``MGDA`` uses): start from
  the best pair (two-vector closed form, with the reference's clamp of γ to
  0.999 / 0.001 at the ends), then projected-gradient steps on the simplex with
  an exact two-point line search; at most 250 iterations, stop when a step
  moves α by less than 1e-5 in ℓ1.
- CAGrad (Liu et al., NeurIPS 2021, https://arxiv.org/abs/2110.14048; LibMTL's
  ``CAGrad``): SciPy's SLSQP from the uniform weights with its default options
  (ftol 1e-6, 100 iterations) on F(w) = wᵀG(1/K) + c‖g0‖·sqrt(wᵀGw + 1e-8),
  where ‖g0‖ = sqrt(mean(G) + 1e-8).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

MGDA_MAX_ITERS = 250
MGDA_STOP = 1e-5


def _two_point(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
    """min over γ ∈ [0, 1] of ‖γ v1 + (1 − γ) v2‖², with the reference's end clamps."""
    if v1v2 >= v1v1:
        return 0.999, v1v1
    if v1v2 >= v2v2:
        return 0.001, v2v2
    gamma = -(v1v2 - v2v2) / (v1v1 + v2v2 - 2.0 * v1v2)
    return gamma, v2v2 + gamma * (v1v2 - v2v2)


def _project_to_simplex(y: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {x ≥ 0, Σx = 1} (sort-based)."""
    k = y.shape[0]
    ordered = np.sort(y)[::-1]
    cumulative = 0.0
    threshold = (np.sum(y) - 1.0) / k
    for i in range(k - 1):
        cumulative += ordered[i]
        candidate = (cumulative - 1.0) / (i + 1)
        if candidate > ordered[i + 1]:
            threshold = candidate
            break
    return np.maximum(y - threshold, 0.0)


def _next_point(current: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """A projected-gradient step to the simplex's boundary along the centred gradient."""
    centred = gradient - np.sum(gradient) / gradient.shape[0]
    negative, positive = centred < 0, centred > 0
    to_zero = -current[negative] / centred[negative]
    to_one = (1.0 - current[positive]) / centred[positive]
    step = 1.0
    if np.any(to_zero > 1e-7):
        step = float(np.min(to_zero[to_zero > 1e-7]))
    if np.any(to_one > 1e-7):
        step = min(step, float(np.min(to_one[to_one > 1e-7])))
    return _project_to_simplex(centred * step + current)


def mgda_min_norm(gramian: np.ndarray) -> np.ndarray:
    """The simplex weights the reference MGDA solver returns for this Gramian."""
    gramian = np.asarray(gramian, np.float64)
    k = gramian.shape[0]
    best = (np.inf, 0, 1, 0.5)
    for i in range(k):
        for j in range(i + 1, k):
            gamma, cost = _two_point(gramian[i, i], gramian[i, j], gramian[j, j])
            if cost < best[0]:
                best = (cost, i, j, gamma)
    _, i, j, gamma = best
    weights = np.zeros(k)
    weights[i], weights[j] = gamma, 1.0 - gamma
    if k < 3:
        return weights
    for _ in range(MGDA_MAX_ITERS):
        candidate = _next_point(weights, -gramian @ weights)
        gamma, _ = _two_point(
            weights @ gramian @ weights,
            weights @ gramian @ candidate,
            candidate @ gramian @ candidate,
        )
        new = gamma * weights + (1.0 - gamma) * candidate
        if np.sum(np.abs(new - weights)) < MGDA_STOP:
            return weights
        weights = new
    return weights


def cagrad_slsqp(gramian: np.ndarray, c: float) -> np.ndarray:
    """The simplex weights LibMTL's CAGrad takes: SLSQP with SciPy's default stopping rule."""
    gramian = np.asarray(gramian, np.float64)
    k = gramian.shape[0]
    uniform = np.full(k, 1.0 / k)
    radius = c * np.sqrt(np.mean(gramian) + 1e-8) + 1e-8
    result = optimize.minimize(
        lambda w: w @ gramian @ uniform + radius * np.sqrt(w @ gramian @ w + 1e-8),
        uniform,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: 1.0 - np.sum(w)}],
    )
    return np.asarray(result.x, np.float64)
