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
in :mod:`covjax.aggregators`.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jax import Array

from covjax.base import Weighting, WeightingState, make_weighting
from covjax.uncertainty import LearnedLogState


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
