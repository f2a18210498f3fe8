"""Oracles for the gradient-based schemes (GradNorm, MGDA), float64 NumPy/SciPy from SPEC §2.3-§2.4.

Written independently of covjax: GradNorm is a literal loop with its own Adam
(PyTorch's defaults); the min-norm QP is solved by exhaustive enumeration of
supports (exact, small K) or by SLSQP from several starts (large K).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize


def gradnorm_weights(
    losses: np.ndarray,
    gradient_norms: np.ndarray,
    alpha: float = 1.5,
    form: str = "reference",
    learning_rate: float = 0.025,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> np.ndarray:
    """Weights used at every step of a (T, K) trace of losses and ‖∇_W L_i‖ values."""
    losses = np.asarray(losses, np.float64)
    gradient_norms = np.asarray(gradient_norms, np.float64)
    steps, k = losses.shape
    total = float(k) if form == "paper" else 1.0
    w = np.full(k, total / k)
    m = np.zeros(k)
    v = np.zeros(k)
    initial = losses[0]
    used = np.zeros((steps, k))
    for t in range(steps):
        used[t] = w
        big_g = w * gradient_norms[t]
        ratio = losses[t] / initial
        inverse_rate = ratio / ratio.mean()
        target = big_g.mean() * inverse_rate**alpha
        grad = np.sign(big_g - target) * gradient_norms[t]
        if form == "reference":
            grad = grad / k  # the mean of |G − C| (PyTorch's L1Loss)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad**2
        m_hat = m / (1 - beta1 ** (t + 1))
        v_hat = v / (1 - beta2 ** (t + 1))
        w = w - learning_rate * m_hat / (np.sqrt(v_hat) + eps)
        w = np.maximum(w, 0.0)
        w = total * w / w.sum()
    return used


def min_norm_objective(gramian: np.ndarray, weights: np.ndarray) -> float:
    weights = np.asarray(weights, np.float64)
    return float(weights @ np.asarray(gramian, np.float64) @ weights)


def min_norm_by_enumeration(gramian: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact min of αᵀGα on the simplex: the best feasible KKT point over all supports."""
    gramian = np.asarray(gramian, np.float64)
    k = gramian.shape[0]
    best, best_alpha = np.inf, None
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            idx = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = gramian[np.ix_(idx, idx)]
            kkt[:size, size] = 1.0
            kkt[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
            alpha = np.zeros(k)
            alpha[idx] = solution[:size]
            if alpha.min() < -1e-12 or abs(alpha.sum() - 1.0) > 1e-9:
                continue
            alpha = np.maximum(alpha, 0.0)
            alpha /= alpha.sum()
            value = min_norm_objective(gramian, alpha)
            if value < best:
                best, best_alpha = value, alpha
    return best, best_alpha


def min_norm_by_slsqp(gramian: np.ndarray, starts: int = 2) -> float:
    """min αᵀGα on the simplex by SLSQP from the centre and a few vertices."""
    gramian = np.asarray(gramian, np.float64)
    k = gramian.shape[0]
    best = np.inf
    for x0 in [np.full(k, 1.0 / k)] + [np.eye(k)[i] for i in range(min(k, starts - 1))]:
        result = minimize(
            lambda a: a @ gramian @ a,
            x0,
            jac=lambda a: 2.0 * gramian @ a,
            bounds=[(0.0, 1.0)] * k,
            constraints=[
                {"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(k)}
            ],
            method="SLSQP",
            options={"ftol": 1e-16, "maxiter": 2000},
        )
        alpha = np.maximum(result.x, 0.0)
        best = min(best, min_norm_objective(gramian, alpha / alpha.sum()))
    return best


def min_norm_optimum(gramian: np.ndarray) -> float:
    """The QP optimum: exact enumeration for K ≤ 10, otherwise SLSQP."""
    if gramian.shape[0] <= 10:
        return min_norm_by_enumeration(gramian)[0]
    return min_norm_by_slsqp(gramian)


def two_vector_weights(gramian: np.ndarray) -> np.ndarray:
    """Sener & Koltun's closed form for K = 2: γ = (g22 − g12)/‖g1 − g2‖², clipped."""
    g11, g12, g22 = gramian[0, 0], gramian[0, 1], gramian[1, 1]
    gamma = float(np.clip((g22 - g12) / (g11 + g22 - 2 * g12), 0.0, 1.0))
    return np.array([gamma, 1.0 - gamma])


def normalized_gramian(gramian: np.ndarray, losses: np.ndarray, normalization: str) -> np.ndarray:
    """Gramian of g_i / n_i for Sener & Koltun's gradient normalizers."""
    gramian = np.asarray(gramian, np.float64)
    norms = np.sqrt(np.diag(gramian))
    n = {
        "none": np.ones_like(norms),
        "l2": norms,
        "loss": np.asarray(losses, np.float64),
        "loss+": np.asarray(losses, np.float64) * norms,
    }[normalization]
    return gramian / np.outer(n, n)
