"""**SoftAdapt** (Heydari, Thompson, Mehmood, 2019). With slope s_i the secant
slope of L_i over the last n recorded values, (L_i(t) − L_i(t−n+1))/(n−1)::

    plain:          α = softmax(β s)
    normalized:     α = softmax(β s / Σ_j |s_j|)
    loss_weighted:  α_i = f_i e^{β s_i} / Σ_j f_j e^{β s_j},   f_i = mean of the window

equal weights 1/K until n values are recorded. Σ α = 1.

Loss values only (one backward pass per step). The ``"loss_weighted"``
variant multiplies by loss values and needs positive losses (a step with a
loss ≤ 0 is rejected like a non-finite one: state unchanged, previous weights
returned); the slopes of the other variants accept any finite losses. The
softmax is max-shifted.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, make_weighting

SoftAdaptVariant = Literal["plain", "normalized", "loss_weighted"]


class SoftAdaptState(NamedTuple):
    """SoftAdapt's window of the last n losses, oldest first: (n, K)."""

    window: Array


def softadapt(
    beta: float | Array = 0.1,
    window: int = 2,
    variant: SoftAdaptVariant = "plain",
) -> Weighting:
    """SoftAdapt (Heydari et al., 2019): softmax of loss slopes, Σ α = 1.

    Args:
      beta: β, the softmax inverse temperature (may be traced). β > 0 favours
        losses that increase (or decrease slowest).
      window: n ≥ 2, the number of recorded values the slope is taken over
        (n = 2 is the paper's first difference L(t) − L(t−1)).
      variant: ``"plain"``, ``"normalized"`` (slopes divided by Σ|s|) or
        ``"loss_weighted"`` (softmax numerators scaled by the window's mean loss).

    ``"plain"`` and ``"normalized"`` accept any finite losses (slopes are
    differences). ``"loss_weighted"`` takes the logarithm of the mean loss, so
    its losses must be positive: a step with a loss ≤ 0 is rejected. A step
    with a non-finite loss is always rejected — state unchanged, previous
    weights returned (uniform before the first accepted step), the step
    reported as not accepted.

    References:
      Heydari, Thompson & Mehmood, "SoftAdapt: Techniques for Adaptive Loss
      Weighting of Neural Networks with Multi-Part Loss Functions", 2019,
      https://arxiv.org/abs/1912.12355.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ValueError(f"covjax.softadapt: window must be an integer ≥ 2, got {window!r}")
    if variant not in ("plain", "normalized", "loss_weighted"):
        raise ValueError(
            "covjax.softadapt: variant must be 'plain', 'normalized' or 'loss_weighted', got "
            f"{variant!r}"
        )

    def init_fn(losses: Array) -> SoftAdaptState:
        return SoftAdaptState(jnp.zeros((window, *losses.shape), jnp.float32))

    def update_fn(
        losses: Array, state: SoftAdaptState, count: Array, gramian: Array | None
    ) -> tuple[Array, SoftAdaptState]:
        del gramian
        k = losses.shape[0]
        history = jnp.concatenate([state.window[1:], losses[None].astype(jnp.float32)])
        slope = (history[-1] - history[0]) / (window - 1)
        if variant == "normalized":
            slope = slope / numerics.at_least_tiny(jnp.sum(jnp.abs(slope)))
        logits = beta * slope
        if variant == "loss_weighted":
            # f_i e^{β s_i} = e^{β s_i + log f_i}; the clamp keeps a zero loss finite.
            logits = logits + jnp.log(numerics.at_least_tiny(jnp.mean(history, axis=0)))
        full = count + 1 >= window
        weights = jnp.where(full, numerics.capped_softmax(logits), 1.0 / k)
        return weights, SoftAdaptState(history)

    return make_weighting(
        init_fn,
        update_fn,
        name="softadapt",
        positive_losses=variant == "loss_weighted",
        weights_sum="1",
        loss_scale="no",
    )
