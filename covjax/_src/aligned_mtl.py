"""Aligned-MTL: independent component alignment (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, stateless
from covjax._src.gramian import normalized_gramian


def aligned_mtl(
    scale: Literal["min", "median", "rmse"] = "min", task_weights: Array | None = None
) -> Weighting:
    """Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, CVPR 2023).

    Make the system of gradients well-conditioned: with the eigendecomposition
    G = V Λ Vᵀ (Λ = Σ², Σ the Jacobian's singular values), the balance
    transformation B = σ V Λ^{-1/2} Vᵀ turns J into B J = σ U_J Vᵀ_J, whose
    rows are orthogonal with equal norm σ (condition number 1). The update is
    d = Σ_i t_i (BJ)_i = Σ_i (B t)_i g_i, so the weights are w = B t with
    task weights t (default all 1, the sum used by the authors and LibMTL).

    Args:
      scale: σ = the smallest kept singular value ("min", the paper's and
        default), their median ("median", the lower middle one for an even
        count), or √(mean Λ) ("rmse"), as in the authors' code.
      task_weights: optional (K,) preference weights t.

    Rank deficiency: eigenvalues below λ_max·K·eps(float32) are dropped
    (their directions get no weight), as in the authors' code; σ uses the
    kept ones. G = 0: weights t.

    References:
      Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component
      Alignment for Multi-Task Learning", CVPR 2023,
      https://arxiv.org/abs/2305.19000; authors' code
      https://github.com/SamsungLabs/MTL.
    """
    if scale not in ("min", "median", "rmse"):
        raise ValueError(
            f"covjax.aligned_mtl: scale must be 'min', 'median' or 'rmse', got {scale!r}"
        )

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        if task_weights is not None and jnp.shape(task_weights) != losses.shape:
            raise ValueError(
                f"covjax.aligned_mtl: task_weights has shape {jnp.shape(task_weights)}, "
                f"expected {losses.shape}."
            )
        k = losses.shape[0]
        preference = (
            jnp.ones((k,), jnp.float32)
            if task_weights is None
            else jnp.asarray(task_weights, jnp.float32)
        )
        g = normalized_gramian(gramian)
        eigenvalues, vectors = jnp.linalg.eigh(g.gramian)
        tolerance = jnp.max(eigenvalues) * k * jnp.finfo(jnp.float32).eps
        kept = eigenvalues > tolerance
        safe = jnp.where(kept, eigenvalues, 1.0)
        if scale == "min":
            sigma_sq = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
        elif scale == "median":
            # The lower middle value for an even count, as torch.median (the authors' code).
            ordered = jnp.sort(jnp.where(kept, eigenvalues, jnp.inf))
            sigma_sq = ordered[jnp.maximum(jnp.sum(kept) - 1, 0) // 2]
        else:
            sigma_sq = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(jnp.sum(kept), 1)
        inverse_root = jnp.where(kept, 1.0 / jnp.sqrt(safe), 0.0)
        balance = jnp.sqrt(sigma_sq) * (vectors * inverse_root) @ vectors.T
        weights = balance @ preference
        ok = jnp.any(kept) & jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, preference)

    return stateless(
        weights_fn,
        name="aligned_mtl",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
    )
