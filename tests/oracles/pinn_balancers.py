"""Oracles for the PINN balancers (learning-rate annealing, NTK weights), float64 loops written
from the papers' equations. They take the per-step Jacobians or Gramians and never import covjax."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _moving_average(
    estimates: Callable[[int], np.ndarray], steps: int, k: int, alpha: float, update_every: int
) -> np.ndarray:
    """λ = 1; at every update_every-th step λ ← α λ + (1 − α) λ̂(t); the weights of each step."""
    lam = np.ones(k)
    out = np.zeros((steps, k))
    for t in range(steps):
        if t % update_every == 0:
            lam = alpha * lam + (1 - alpha) * estimates(t)
        out[t] = lam
    return out


def lr_annealing_max_mean(
    jacobians: np.ndarray, alpha: float, reference: int = 0, update_every: int = 1
) -> np.ndarray:
    """Wang, Teng, Perdikaris (2021), Algorithm 1: λ̂_i = max|∇L_r| / mean|∇L_i|, λ̂_r = 1."""
    jacobians = np.asarray(jacobians, np.float64)
    steps, k, _ = jacobians.shape

    def estimate(t: int) -> np.ndarray:
        lam_hat = np.array(
            [np.max(np.abs(jacobians[t, reference])) / np.mean(np.abs(row)) for row in jacobians[t]]
        )
        lam_hat[reference] = 1.0
        return lam_hat

    return _moving_average(estimate, steps, k, alpha, update_every)


def lr_annealing_grad_norm(gramians: np.ndarray, alpha: float, update_every: int = 1) -> np.ndarray:
    """The grad-norm form: λ̂_i = Σ_j ‖∇L_j‖ / ‖∇L_i‖, the norms from the Gramian's diagonal."""
    gramians = np.asarray(gramians, np.float64)
    steps, k, _ = gramians.shape

    def estimate(t: int) -> np.ndarray:
        norms = np.sqrt(np.diag(gramians[t]))
        return norms.sum() / norms

    return _moving_average(estimate, steps, k, alpha, update_every)


def ntk(gramians: np.ndarray, alpha: float, update_every: int = 1) -> np.ndarray:
    """Wang, Yu, Perdikaris (2022): λ̂_i = Σ_j tr K_j / tr K_i, tr K_i = ‖∇L_i‖² (covjax's trace)."""
    gramians = np.asarray(gramians, np.float64)
    steps, k, _ = gramians.shape

    def estimate(t: int) -> np.ndarray:
        traces = np.diag(gramians[t])
        return traces.sum() / traces

    return _moving_average(estimate, steps, k, alpha, update_every)
