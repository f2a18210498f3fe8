"""Oracles for the loss scalarizations (STCH, PBI, COSMOS), float64.

Each scalarization is written as its paper's objective S(L) and differentiated
by the complex step, ∂S/∂L_i = Im S(L + i h e_i) / h (h = 1e-30: exact to
float64 rounding, no cancellation), so the oracle never uses the closed-form
weights covjax computes. They never import covjax.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

COMPLEX_STEP = 1e-30


def complex_step_gradient(
    objective: Callable[[np.ndarray], complex], losses: np.ndarray
) -> np.ndarray:
    """∇S at ``losses`` by the complex step (S must be analytic: no abs, max of reals only)."""
    losses = np.asarray(losses, np.float64)
    gradient = np.zeros_like(losses)
    for i in range(len(losses)):
        perturbed = losses.astype(np.complex128)
        perturbed[i] += 1j * COMPLEX_STEP
        gradient[i] = np.imag(objective(perturbed)) / COMPLEX_STEP
    return gradient


def _logsumexp(x: np.ndarray) -> complex:
    shift = np.max(np.real(x))  # a real constant: the complex step passes through
    return shift + np.log(np.sum(np.exp(x - shift)))


def _norm(x: np.ndarray) -> complex:
    return np.sqrt(np.sum(x * x))  # not |x|: analytic in the complex step


def stch(
    trace: np.ndarray,
    mu: float,
    preference: np.ndarray | None = None,
    ideal: float = 0.0,
    warmup_steps: int = 0,
) -> np.ndarray:
    """Lin et al.: ∇ μ log Σ exp(λ(L − z)/μ); with a warm-up, Σ log L for the first steps,
    then ∇ K μ log Σ exp(λ log(L/n)/μ) with n the mean of the warm-up losses."""
    trace = np.asarray(trace, np.float64)
    steps, k = trace.shape
    weight = np.ones(k) if preference is None else np.asarray(preference, np.float64)
    out = np.zeros((steps, k))
    for t in range(steps):
        if warmup_steps == 0:
            objective = lambda x: mu * _logsumexp(weight * (x - ideal) / mu)  # noqa: E731
        elif t < warmup_steps:
            objective = lambda x: np.sum(np.log(x))  # noqa: E731
        else:
            nadir = trace[:warmup_steps].mean(axis=0)
            objective = lambda x, n=nadir: k * mu * _logsumexp(weight * np.log(x / n) / mu)  # noqa: E731
        out[t] = complex_step_gradient(objective, trace[t])
    return out


def pbi(
    trace: np.ndarray, theta: float, preference: np.ndarray | None = None, ideal: float = 0.0
) -> np.ndarray:
    """MOEA/D's PBI: ∇ (d1 + θ d2), d1 = (L − z)·λ/‖λ‖, d2 = ‖L − z − d1 λ/‖λ‖‖."""
    trace = np.asarray(trace, np.float64)
    k = trace.shape[1]
    direction = np.ones(k) if preference is None else np.asarray(preference, np.float64)
    direction = direction / np.linalg.norm(direction)

    def objective(x: np.ndarray) -> complex:
        d1 = np.sum((x - ideal) * direction)
        return d1 + theta * _norm(x - ideal - d1 * direction)

    return np.stack([complex_step_gradient(objective, losses) for losses in trace])


def cosmos(trace: np.ndarray, penalty: float, preference: np.ndarray | None = None) -> np.ndarray:
    """COSMOS: ∇ (r·L − λ cos(L, r)), r uniform 1/K by default."""
    trace = np.asarray(trace, np.float64)
    k = trace.shape[1]
    r = np.full(k, 1.0 / k) if preference is None else np.asarray(preference, np.float64)

    def objective(x: np.ndarray) -> complex:
        return np.sum(r * x) - penalty * np.sum(x * r) / (_norm(x) * np.linalg.norm(r))

    return np.stack([complex_step_gradient(objective, losses) for losses in trace])
