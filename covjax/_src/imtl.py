"""IMTL: Impartial Multi-Task Learning (Liu et al., ICLR 2021) — the loss part.

Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. "Towards Impartial Multi-task
Learning", ICLR 2021 (https://openreview.net/forum?id=IMPnRXEWpvr).

IMTL-L learns a log-scale s_i per loss so that every *scaled* loss stays near
a constant; the objective is::

    Σ_i e^{s_i} L_i − s_i,          α_i = e^{s_i},        ∂/∂s_i = e^{s_i} L_i − 1

(its minimum over s is at e^{s_i} = 1/L_i, i.e. every scaled loss equals 1).
Each update returns the weights from the current s and then takes one step of
the scheme's own optimiser on s with the closed-form gradient, which with the
network's optimiser is joint training. Weights are positive and unnormalized.

IMTL-G, the gradient part (equal projections of every task gradient onto the
aggregate), needs per-loss gradients and lives with the gradient aggregators
in :func:`imtl_g`.

IMTL-G (the gradient half) is :func:`imtl_g`; IMTL-L (the loss half) :func:`imtl_l`.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, WeightingState, make_weighting, stateless
from covjax._src.gramian import normalized_gramian, uniform_weights
from covjax._src.uncertainty import LearnedLogState


def imtl_g() -> Weighting:
    """IMTL-G, the gradient half of Impartial MTL (Liu et al., ICLR 2021).

    Find d = Σ α_i g_i with Σ α_i = 1 whose projections onto every unit
    gradient u_i = g_i/‖g_i‖ are equal: dᵀu_1 = dᵀu_i. The paper's closed form,
    with D = [g_1 − g_i]ᵀ and U = [u_1 − u_i]ᵀ (i = 2..K)::

        α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹,   α_1 = 1 − Σ_{i≥2} α_i

    is the solution of the (K+1)-square linear system
    Σ_j G_ij α_j / ‖g_i‖ − p = 0 (all i), Σ α = 1 in (α, p), solved here in
    Gramian terms by least squares, so a singular system (parallel or
    linearly dependent gradients) gives its minimum-norm solution rather than
    NaN. Dead losses get α_i = 0 (they have no direction to be impartial to);
    with every gradient zero the weights are uniform.

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
      Multi-task Learning", ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr.
    """

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        k = losses.shape[0]
        g = normalized_gramian(gramian)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g.gramian), 0.0))
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        projections = g.gramian / jnp.where(g.live, norms, 1.0)[:, None]
        rows = jnp.where(g.live[:, None], projections, eye)
        column = jnp.where(g.live, -1.0, 0.0)[:, None]
        system = jnp.concatenate(
            [
                jnp.concatenate([rows, column], axis=1),
                jnp.concatenate([jnp.ones((1, k)), jnp.zeros((1, 1))], axis=1),
            ],
            axis=0,
        )
        rhs = jnp.zeros((k + 1,), g.gramian.dtype).at[k].set(1.0)
        solution = jnp.linalg.lstsq(system, rhs, rcond=1e-6)[0]
        weights = jnp.where(g.live, solution[:k], 0.0)
        ok = jnp.any(g.live) & jnp.all(jnp.isfinite(weights))
        return jnp.where(ok, weights, uniform_weights(k))

    return stateless(
        weights_fn,
        name="imtl_g",
        requires={GRAMIAN},
        weights_sum="1",
        loss_scale="compensated",
    )


def imtl_l(
    optimizer: optax.GradientTransformation | None = None,
    init_log_scale: float | Array = 0.0,
) -> Weighting:
    """IMTL-L (Liu et al., ICLR 2021): learned loss scales e^{s_i}.

    Args:
      optimizer: trains s; default ``optax.adam(1e-4)`` (the network optimiser,
        as in the paper's joint training). Hyper-parameters may be traced.
      init_log_scale: initial s, a scalar or (K,) array.

    Returns:
      A :class:`~covjax.Weighting` with positive, unnormalized weights e^{s}.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted. (For L ≤ 0 the
    objective e^s L − s has no minimum in s: the weight e^s would grow
    without bound.)

    References:
      Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
      Multi-task Learning", ICLR 2021, https://openreview.net/forum?id=IMPnRXEWpvr.
    """
    optimizer = optax.adam(1e-4) if optimizer is None else optimizer

    def init_fn(losses: Array) -> LearnedLogState:
        s = jnp.broadcast_to(jnp.asarray(init_log_scale, jnp.float32), losses.shape)
        s = s.astype(jnp.float32)
        return LearnedLogState(s, optimizer.init(s))

    def update_fn(
        losses: Array, state: LearnedLogState, count: Array, gramian: Array | None
    ) -> tuple[Array, LearnedLogState]:
        del count, gramian
        s = state.log_weights
        weights = jnp.exp(s)
        gradient = weights * losses - 1.0
        updates, optimizer_state = optimizer.update(gradient, state.optimizer_state, s)
        new_s = optax.apply_updates(s, updates)
        return weights, LearnedLogState(new_s.astype(s.dtype), optimizer_state)

    return make_weighting(
        init_fn,
        update_fn,
        name="imtl_l",
        positive_losses=True,
        weights_sum="free",
        loss_scale="learned",
    )


def imtl_l_regularizer(state: WeightingState) -> Array:
    """R(s) = −Σ s_i, the part of the IMTL-L objective that is not Σ α_i L_i."""
    if not isinstance(state.inner, LearnedLogState):
        raise TypeError(
            "covjax.imtl_l_regularizer: expects the state of imtl_l, got inner state "
            f"{type(state.inner).__name__}."
        )
    return -jnp.sum(state.inner.log_weights)
