"""LB-PINN: self-adaptive loss-balanced weights (Xiang, Peng, Liu, Yao, Neurocomputing 2022).

"Self-adaptive loss balanced Physics-informed neural networks"
(https://doi.org/10.1016/j.neucom.2022.05.015). Each loss term gets a learned
ε_i (a Gaussian likelihood's standard deviation, as in Kendall et al.'s
uncertainty weighting), trained jointly with the network on::

    Σ_i  L_i / (2 ε_i²)  +  log(1 + ε_i²)

The regularizer log(1 + ε²) replaces Kendall's log ε², so it stays ≥ 0 and
the objective is bounded below. covjax learns s_i = log ε_i² (the same
parametrisation as :func:`covjax.uncertainty_weighting`, whose machinery it
shares)::

    α_i = ½ exp(−s_i),      ∂/∂s_i = −½ exp(−s_i) L_i + sigmoid(s_i)

At its fixed point L_i = 2 ε_i⁴/(1 + ε_i²): for small ε_i the weight
1/(2ε_i²) grows like 1/√(2 L_i), not like 1/L_i, so the weights do not
compensate a loss's scale (``loss_scale="no"``). Σ α is not normalized.

Deviations from the paper: it trains ε_i itself (initial ε chosen per
problem); covjax trains s = log ε² with its own optimiser (the optimum is the
same, the steps differ by the chain rule ∂s/∂ε), initial s = 0 (ε = 1,
α = ½). Pass the network's optimiser to train the weights jointly as the
paper does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import Array

from covjax._src.base import Weighting, WeightingState
from covjax._src.uncertainty import LearnedLogState, learned_log_weighting


def lbpinn(
    optimizer: optax.GradientTransformation | None = None,
    init_log_variance: float | Array = 0.0,
) -> Weighting:
    """LB-PINN (Xiang et al., 2022): α_i = 1/(2ε_i²), ε learned on Σ L/(2ε²) + log(1 + ε²).

    Args:
      optimizer: trains s = log ε²; default ``optax.adam(1e-3)``. Its
        hyper-parameters may be traced arrays (a learning-rate sweep is one
        ``jax.vmap``).
      init_log_variance: initial s = log ε², a scalar or (K,) array (0: ε = 1).

    Returns:
      A :class:`~covjax.Weighting` with positive, unnormalized weights.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted. (For L ≤ 0 the
    objective has no minimum in ε: the weight would grow without bound.)

    References:
      Xiang, Peng, Liu & Yao, "Self-adaptive loss balanced Physics-informed
      neural networks", Neurocomputing 496, 2022,
      https://doi.org/10.1016/j.neucom.2022.05.015.
    """
    return learned_log_weighting(
        name="lbpinn",
        optimizer=optax.adam(1e-3) if optimizer is None else optimizer,
        init_log_weights=init_log_variance,
        weights_of=lambda s: 0.5 * jnp.exp(-s),
        gradient_of=lambda s, losses: jax.nn.sigmoid(s) - 0.5 * jnp.exp(-s) * losses,
        loss_scale="no",
    )


def lbpinn_regularizer(state: WeightingState) -> Array:
    """R(s) = Σ log(1 + ε_i²) = Σ softplus(s_i), the part of the objective that is not Σ α L.

    Pass the state *before* the update whose weights it completes (the update
    already steps s).
    """
    if not isinstance(state.inner, LearnedLogState) or state.scheme != "lbpinn":
        raise TypeError(
            f"covjax.lbpinn_regularizer: expects the state of lbpinn, got {state.scheme!r}'s."
        )
    return jnp.sum(jax.nn.softplus(state.inner.log_weights))
