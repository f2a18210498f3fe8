"""Geometric Loss Strategy, GLS (Chennupati, Sistu, Yogamani, Rawashdeh, CVPRW 2019).

"MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for
Multi-Task Learning" (https://arxiv.org/abs/1904.08492). The objective is the geometric mean of the
losses::

    GLS = (Π_i L_i)^{1/K}

Its gradient is ∇GLS = Σ_i GLS/(K L_i) · ∇L_i, so the stop-gradient weights::

    α_i = GLS / (K L_i) = exp( mean_j log L_j − log L_i ) / K

give exactly ∇(Π L_i)^{1/K} in one ordinary weighted backward pass
(``Σ α_i L_i`` has the value of GLS as well: Σ_i GLS/K = GLS). Everything is
computed in log space, so no product of 32 losses under- or overflows.

Requires positive losses: a step with a loss ≤ 0 is rejected like a
non-finite one (the geometric mean is infinitely sensitive to a loss at 0, and
has no logarithm below). Weights are positive and stateless.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from covjax._src.base import Weighting, stateless


def gls(epsilon: float = 1e-12) -> Weighting:
    """Geometric loss strategy: α_i = GLS/(K L_i), i.e. the gradient of (Π L_i)^{1/K}.

    Args:
      epsilon: positive losses are clamped to at least this before the
        logarithm (bounds the weights of tiny losses).

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted.

    Returns:
      A :class:`~covjax.Weighting` with positive, unnormalized weights.

    References:
      Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream
      Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning",
      CVPR Workshops 2019, https://arxiv.org/abs/1904.08492.
    """
    if not epsilon > 0:
        raise ValueError(f"covjax.gls: epsilon must be positive, got {epsilon}")

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        del gramian
        log_losses = jnp.log(jnp.maximum(losses, epsilon))
        k = losses.shape[0]
        weights = jnp.exp(jnp.mean(log_losses) - log_losses) / k
        return weights

    return stateless(
        weights_fn,
        name="gls",
        positive_losses=True,
        weights_sum="free",
        loss_scale="compensated",
    )
