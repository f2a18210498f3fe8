"""DB-MTL: dual-balancing multi-task learning (Lin et al., 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, make_weighting
from covjax._src.gramian import DEAD_GRADIENT, normalized_gramian


class DBMTLState(NamedTuple):
    """EMA of the norms of the log-loss gradients ‖∇ log(L_i + ε)‖ ((K,) float32)."""

    ema_norms: Array


def db_mtl(beta: float = 0.9, beta_sigma: float = 0.5, epsilon: float = 1e-8) -> Weighting:
    """DB-MTL, "Dual-Balancing for Multi-Task Learning" (Lin et al., 2023).

    Loss-scale balancing: train on log(L_i + ε), whose gradient is
    ∇L_i / (L_i + ε). Gradient-magnitude balancing: rescale every log-loss
    gradient to the largest EMA gradient norm::

        n_i = ‖∇L_i‖ / (L_i + ε) = √G_ii / (L_i + ε)
        m_i ← n_i at the first step, else (1 − β_t) n_i + β_t m_i,  β_t = β / t^σ
        d = Σ_i (max_j m_j / m_i) ∇L_i / (L_i + ε)

    so w_i = (max_j m_j / m_i) / (L_i + ε). The authors' code (LibMTL) keeps
    an EMA of the gradient VECTORS and steps along the EMA itself, which is
    not a combination of the current gradients; here only the norms are
    averaged (the current gradients are rescaled), so the update is one
    weighted backward pass.

    Args:
      beta, beta_sigma: β and σ of the decaying EMA rate β_t = β / t^σ
        (LibMTL defaults 0.9 and 0.5).
      epsilon: ε inside the log.

    A loss whose EMA norm is below 1e-5 of the largest (a dead gradient)
    keeps its log-gradient unscaled (ratio 1).

    Losses must be positive (log L): a step with a loss ≤ 0 (or a non-finite
    one) is rejected — state unchanged, previous weights returned (uniform
    before the first accepted step), the step reported as not accepted.

    References:
      Lin, Ye, Xu, Shi & Kwok, "Dual-Balancing for Multi-Task Learning",
      2023, https://arxiv.org/abs/2308.12029; LibMTL,
      https://github.com/median-research-group/LibMTL.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"covjax.db_mtl: beta must lie in [0, 1), got {beta}")
    if beta_sigma < 0:
        raise ValueError(f"covjax.db_mtl: beta_sigma must be ≥ 0, got {beta_sigma}")
    if epsilon <= 0:
        raise ValueError(f"covjax.db_mtl: epsilon must be > 0, got {epsilon}")

    def init_fn(losses: Array) -> DBMTLState:
        return DBMTLState(jnp.zeros_like(losses, dtype=jnp.float32))

    def update_fn(
        losses: Array, state: DBMTLState, count: Array, gramian: Array | None
    ) -> tuple[Array, DBMTLState]:
        shifted = jnp.maximum(losses, 0.0) + epsilon
        g = normalized_gramian(gramian)
        # Work with the normalized Gramian: the EMA, ratios and weights are
        # all invariant to one common scale, except the norms kept in the
        # state, which are stored on the raw scale.
        root_scale = jnp.sqrt(g.scale)
        norms = root_scale * jnp.sqrt(jnp.maximum(jnp.diagonal(g.gramian), 0.0)) / shifted
        t = (count + 1).astype(jnp.float32)
        rate = beta / t**beta_sigma
        ema = jnp.where(count == 0, norms, (1.0 - rate) * norms + rate * state.ema_norms)
        largest = jnp.max(ema)
        alive = ema > DEAD_GRADIENT * largest
        ratio = jnp.where(alive, largest / jnp.where(alive, ema, 1.0), 1.0)
        return ratio / shifted, DBMTLState(ema)

    return make_weighting(
        init_fn,
        update_fn,
        name="db_mtl",
        requires={GRAMIAN},
        positive_losses=True,
        weights_sum="free",
        loss_scale="compensated",
    )
