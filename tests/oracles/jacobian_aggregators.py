"""NumPy (float64) oracles of the aggregators that need the per-loss gradients themselves.

Trimmed mean, GradDrop, ConFIG / M-ConFIG, MoCo and ExcessMTL, each written
from its paper's equations (and the authors' published conventions) on the
explicit K×P Jacobian ``J``, one row per loss, with plain loops where the
paper has them. They never call covjax.
"""

from __future__ import annotations

import numpy as np


def trimmed_mean(J: np.ndarray, trim: int) -> np.ndarray:
    """Yin et al. 2018: per coordinate, drop the ``trim`` smallest and largest values; average."""
    k, p = J.shape
    direction = np.empty(p)
    for column in range(p):
        values = sorted(J[:, column])
        direction[column] = np.mean(values[trim : k - trim])
    return direction


def graddrop(J: np.ndarray, uniform: np.ndarray, leak: np.ndarray | float = 0.0) -> np.ndarray:
    """Chen et al. 2020, Alg. 1 lines 10-15 (f = identity) with the given draws U (P,)."""
    k, p = J.shape
    leak = np.broadcast_to(np.asarray(leak, np.float64), (k,))
    direction = np.zeros(p)
    for column in range(p):
        values = J[:, column]
        magnitude = np.sum(np.abs(values))
        purity = 0.5 * (1.0 + np.sum(values) / magnitude) if magnitude > 0 else 0.5
        for i in range(k):
            if purity > uniform[column]:
                mask = float(values[i] > 0)
            elif purity < uniform[column]:
                mask = float(values[i] < 0)
            else:
                mask = 0.0
            direction[column] += (leak[i] + (1.0 - leak[i]) * mask) * values[i]
    return direction


def graddrop_batch_separated(
    per_grads: list[np.ndarray],
    activations: list[np.ndarray],
    uniform: np.ndarray,
    leak: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Chen et al. 2020, Alg. 1 with batch-separated inputs, as LibMTL's ``GradDrop`` forms it.

    ``per_grads[m]``: (K, B, F) gradients w.r.t. activation m (B, F); ``uniform``: one
    draw per feature of the maps in order. Returns the direction, maps flattened in order.
    """
    k = per_grads[0].shape[0]
    leak = np.broadcast_to(np.asarray(leak, np.float64), (k,))
    out = []
    offset = 0
    for grads, activation in zip(per_grads, activations, strict=True):
        signed = (grads * np.sign(activation)[None]).sum(axis=1)  # (K, F)
        features = signed.shape[1]
        direction = np.zeros(grads.shape[1:])
        for f in range(features):
            magnitude = np.abs(signed[:, f]).sum()
            purity = 0.5 * (1.0 + signed[:, f].sum() / magnitude) if magnitude > 0 else 0.5
            draw = uniform[offset + f]
            for i in range(k):
                keep = (purity > draw and signed[i, f] > 0) or (purity < draw and signed[i, f] < 0)
                direction[:, f] += (leak[i] + (1.0 - leak[i]) * float(keep)) * grads[i, :, f]
        out.append(direction.ravel())
        offset += features
    return np.concatenate(out)


def config(J: np.ndarray, preference: np.ndarray | None = None) -> np.ndarray:
    """Liu et al. 2024, Eq. 2: x = pinv(unit rows) t, u = x/‖x‖, d = (Σ_j g_j·u) u."""
    k = J.shape[0]
    preference = np.ones(k) if preference is None else np.asarray(preference, np.float64)
    norms = np.linalg.norm(J, axis=1, keepdims=True)
    units = np.divide(J, norms, out=np.zeros_like(J), where=norms > 0)
    target = np.linalg.pinv(units) @ preference
    if not np.any(target):
        return np.zeros(J.shape[1])
    unit = target / np.linalg.norm(target)
    length = sum(J[j] @ unit for j in range(k))
    return length * unit


def m_config(
    jacobians: list[np.ndarray], beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
) -> list[np.ndarray]:
    """M-ConFIG (the authors' pseudo-momentum operator) fed every gradient at every step."""
    k, p = jacobians[0].shape
    momenta = np.zeros((k, p))
    pseudo_momentum = np.zeros(p)
    second = np.zeros(p)
    directions = []
    for t, J in enumerate(jacobians, start=1):
        momenta = beta1 * momenta + (1 - beta1) * J
        corrected = momenta / (1 - beta1**t)
        final = config(corrected)
        new_pseudo = final * (1 - beta1**t)
        pseudo_gradient = (new_pseudo - beta1 * pseudo_momentum) / (1 - beta1)
        pseudo_momentum = new_pseudo
        second = beta2 * second + (1 - beta2) * pseudo_gradient**2
        directions.append(final / (np.sqrt(second / (1 - beta2**t)) + eps))
    return directions


def moco(
    jacobians: list[np.ndarray],
    losses: list[np.ndarray],
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fernando et al. 2023 as in the authors' shared code: (λ, d) after every step."""
    k, p = jacobians[0].shape
    tracked = np.zeros((k, p))
    weights = np.full(k, 1.0 / k)
    history = []
    for t, (J, loss) in enumerate(zip(jacobians, losses, strict=True), start=1):
        targets = np.stack([J[i] / (np.linalg.norm(J[i]) + 1e-8) * loss[i] for i in range(k)])
        tracked = tracked - beta / t**beta_sigma * (tracked - targets)
        logits = (
            weights - gamma / t**gamma_sigma * (tracked @ tracked.T + rho * np.eye(k)) @ weights
        )
        weights = np.exp(logits - logits.max())
        weights = weights / weights.sum()
        history.append((weights.copy(), tracked.T @ weights))
    return history


def excess_mtl(jacobians: list[np.ndarray], robust_step_size: float = 1e-2) -> list[np.ndarray]:
    """He et al. 2024 as in the authors' code: the loss weights used after every step."""
    k, p = jacobians[0].shape
    loss_weight = np.ones(k)
    squared = np.zeros((k, p))
    initial = None
    used = []
    for J in jacobians:
        excess = np.zeros(k)
        for i in range(k):
            squared[i] += J[i] ** 2
            excess[i] = J[i] * (1.0 / np.sqrt(squared[i] + 1e-7)) @ J[i]
        if initial is None:
            initial = excess
        else:
            loss_weight = loss_weight * np.exp(excess / initial * robust_step_size)
            loss_weight = loss_weight / loss_weight.sum() * k
        used.append(loss_weight.copy())
    return used
