"""MoCo: multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import DIRECTION, JACOBIAN, Weighting, make_weighting
from covjax._src.per_loss_state import check_columns, checked_num_params, per_loss_zeros

#: Added to ‖g_i‖ before normalizing a gradient, as LibMTL's MoCo.
NORM_EPSILON = 1e-8


class MoCoState(NamedTuple):
    """MoCo's tracked gradients and weights.

    Attributes:
      tracked: (K, P) y_i, the tracked estimate of each loss's (normalized) gradient.
      weights: (K,) λ on the simplex.
    """

    tracked: Array
    weights: Array


def moco(
    num_params: int,
    beta: float | Array = 0.5,
    beta_sigma: float | Array = 0.5,
    gamma: float | Array = 0.1,
    gamma_sigma: float | Array = 0.5,
    rho: float | Array = 0.0,
) -> Weighting:
    """MoCo, "Mitigating Gradient Bias in Multi-objective Learning: A Provably
    Convergent Approach" (Fernando et al., ICLR 2023).

    Stochastic MGDA is biased (the min-norm weights of noisy gradients are not
    those of the true gradients); MoCo tracks each gradient with a moving
    estimate y_i and moves the weights λ by a projected-gradient step on
    ½‖Yᵀλ‖² instead of solving the min-norm problem. At step t (1, 2, ...)::

        h_i = L_i · g_i / (‖g_i‖ + 1e-8)
        y_i ← y_i − β_t (y_i − h_i),                 β_t = β / t^β_σ
        λ   ← softmax(λ − γ_t (Y Yᵀ + ρ I) λ),       γ_t = γ / t^γ_σ
        d   = Yᵀ λ

    as in LibMTL's MoCo (from the authors' code), with its defaults. The
    direction d replaces the gradient of the selected parameters
    (``requires`` holds :data:`covjax.DIRECTION`); the weights λ (they sum to
    1, uniform before the first step) weigh the losses for every other
    parameter. y starts at 0 and is sized by ``num_params``.

    Any finite losses are used (they scale the normalized gradients; a
    negative loss flips its gradient's estimate, as in the reference code);
    a step with a non-finite loss or gradient is rejected (state unchanged,
    zero direction). A zero gradient gives h_i = 0.

    Args:
      num_params: P, the number of selected parameters (the Jacobian's
        columns), which sizes y.
      beta, beta_sigma: y's step β and its decay exponent β_σ.
      gamma, gamma_sigma: λ's step γ and its decay exponent γ_σ.
      rho: ρ, the ℓ2 regularization of λ's update.
      All but ``num_params`` may be traced (``jax.vmap`` over them).

    Deviations: the paper's Algorithm projects λ onto the simplex (and y onto
    a bounded set); the reference code (and LibMTL) use a softmax of the
    updated λ and no projection of y, as covjax does.

    Cost: the Jacobian, y's update and three products with y, O(K·P) each
    ((Y Yᵀ) λ as Y (Yᵀ λ): y's K×K Gramian is never formed); state (K, P) + (K,).

    References:
      Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient
      Bias in Multi-objective Learning: A Provably Convergent Approach", ICLR
      2023, https://openreview.net/forum?id=dLAYGdKTi2 (arXiv:
      https://arxiv.org/abs/2210.12624); LibMTL ``MoCo``,
      https://github.com/median-research-group/LibMTL.
    """
    columns = checked_num_params("moco", num_params)

    def init_fn(losses: Array) -> MoCoState:
        return MoCoState(
            per_loss_zeros(losses, columns), jnp.full_like(losses, 1.0 / losses.shape[0])
        )

    def update_fn(
        losses: Array, state: MoCoState, count: Array, jacobian: Array | None
    ) -> tuple[Array, MoCoState, Array]:
        check_columns("moco", jacobian, columns)
        step = (count + 1).astype(jacobian.dtype)
        highest = jax.lax.Precision.HIGHEST
        # ‖g_i‖² as a product: a reduction of g² would first write g² out (K × P).
        norms = jnp.sqrt(jnp.einsum("kp,kp->k", jacobian, jacobian, precision=highest))
        targets = jacobian * (losses / (norms + NORM_EPSILON))[:, None]
        tracked = state.tracked - beta / step**beta_sigma * (state.tracked - targets)
        weights = state.weights.astype(tracked.dtype)
        # (Y Yᵀ + ρ I) λ = Y (Yᵀ λ): two passes over Y (2·K·P) instead of the Gramian's K²·P.
        curvature_times_weights = (
            jnp.matmul(tracked, jnp.matmul(weights, tracked, precision=highest), precision=highest)
            + rho * weights
        )
        weights = jax.nn.softmax(weights - gamma / step**gamma_sigma * curvature_times_weights)
        return weights, MoCoState(tracked, weights), jnp.matmul(weights, tracked, precision=highest)

    return make_weighting(
        init_fn,
        update_fn,
        name="moco",
        requires={JACOBIAN, DIRECTION},
        weights_sum="1",
        loss_scale="no",
    )
