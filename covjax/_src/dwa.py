"""**DWA** — Dynamic Weight Average (Liu, Johns, Davison, "End-to-End Multi-Task
Learning with Attention", CVPR 2019). On the means L̄_i(p) of each loss over
record periods p (Liu et al. use epochs: period = steps per epoch; period = 1
gives the per-step variant)::

    r_i = L̄_i(p−1) / L̄_i(p−2),      α = K softmax(r / T)      (T = 2)

with α = 1 during the first two periods. Σ α = K.

Loss values only (one backward pass per step). The ratios need positive
losses: a step with a loss ≤ 0 is rejected like a non-finite one (state
unchanged, previous weights returned). The softmax is max-shifted.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, make_weighting


class DwaState(NamedTuple):
    """DWA's record of period means.

    Attributes:
      period_sum: (K,) sum of the losses of the current period so far.
      last_mean: (K,) L̄(p−1), the mean of the last completed period.
      weights: (K,) the weights in force during the current period.
    """

    period_sum: Array
    last_mean: Array
    weights: Array


def dwa(period: int, temperature: float | Array = 2.0) -> Weighting:
    """Dynamic Weight Average (Liu et al., CVPR 2019): α = K softmax(r/T), Σ α = K.

    Args:
      period: record period in steps (steps per epoch to follow Liu et al.;
        1 for the per-step variant).
      temperature: T (2 in the paper); may be a traced array.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted.

    References:
      Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
      CVPR 2019, https://arxiv.org/abs/1803.10704.
    """
    numerics.check_positive_int(period, "period", "dwa")
    if isinstance(temperature, int | float) and not temperature > 0:
        raise ValueError(f"covjax.dwa: temperature must be positive, got {temperature}")

    def init_fn(losses: Array) -> DwaState:
        zeros = jnp.zeros(losses.shape, jnp.float32)
        return DwaState(zeros, zeros, jnp.ones(losses.shape, jnp.float32))

    def update_fn(
        losses: Array, state: DwaState, count: Array, gramian: Array | None
    ) -> tuple[Array, DwaState]:
        del gramian
        k = losses.shape[0]
        weights = state.weights
        period_sum = state.period_sum + losses
        period_ends = (count + 1) % period == 0
        completed = (count + 1) // period  # periods completed after this step
        mean = period_sum / period
        # Weights for the next period, from the two most recent period means.
        ratio = mean / numerics.at_least_tiny(state.last_mean)
        next_weights = jnp.where(
            completed >= 2, k * numerics.capped_softmax(ratio / temperature), jnp.ones_like(losses)
        )
        new_state = DwaState(
            period_sum=jnp.where(period_ends, 0.0, period_sum),
            last_mean=jnp.where(period_ends, mean, state.last_mean),
            weights=jnp.where(period_ends, next_weights, weights),
        )
        return weights, new_state

    return make_weighting(
        init_fn,
        update_fn,
        name="dwa",
        positive_losses=True,
        weights_sum="K",
        loss_scale="unchanged",
    )
