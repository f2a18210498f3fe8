"""CR-MOGM: exponential moving average of another scheme's weights (Zhou et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from covjax._src.base import (
    DIRECTION,
    GRAMIAN_REQUIREMENTS,
    JACOBIAN,
    LossScale,
    Weighting,
    make_weighting,
    step_accepted,
)


class CRMOGMState(NamedTuple):
    """The wrapped scheme's state and the smoothed weights λ_{k−1} (K,)."""

    inner: Any
    smoothed: Array


#: How averaging over steps changes a scheme's response to a loss × c: weights that do not
#: move stay put, learned equilibria stay equilibria, but a per-step common factor (what
#: "compensated" allows) no longer cancels in a sum over steps.
SMOOTHED_LOSS_SCALE: dict[LossScale | None, LossScale | None] = {
    "unchanged": "unchanged",
    "learned": "learned",
    "compensated": "no",
    "no": "no",
    None: None,
}


def cr_mogm(
    weighting: Weighting,
    alpha: float | Array = 0.9,
    initial_weights: Array | None = None,
) -> Weighting:
    """CR-MOGM: the weights of ``weighting`` smoothed by an exponential moving average.

    From "On the Convergence of Stochastic Multi-Objective Gradient
    Manipulation and Beyond" (Zhou et al., NeurIPS 2022): stochastic
    gradient-manipulation methods (MGDA, PCGrad, CAGrad, ...) do not
    converge because their weights λ̂_k, computed from one noisy batch,
    fluctuate; averaging them over steps fixes that::

        λ_k = α λ_{k−1} + (1 − α) λ̂_k,

    with λ̂_k the wrapped scheme's weights at step k and λ_0 =
    ``initial_weights`` if given, else λ̂_1 (so the first weights are λ̂_1
    whatever α). The update is then Σ_i λ_k,i g_i. Any covjax scheme can be
    wrapped (Gramian-based or loss-statistics; not one whose update is a
    direction): ``requires`` and the loss-positivity rule are the wrapped
    scheme's, as is what the weights sum to (an average of weights summing
    to 1 or K sums to the same). A loss × c: "unchanged" and "learned"
    carry over; "compensated" does not (the common factor of each step no
    longer cancels in the average), so it becomes "no".

    A step the wrapped scheme rejects (non-finite inputs, a loss at or
    below its minimum) is rejected here too: both states stay as they were.

    Args:
      weighting: the scheme whose weights are smoothed, e.g.
        ``covjax.mgda()`` or ``covjax.upgrad()``.
      alpha: α ∈ [0, 1], the weight of the past (default 0.9, TorchJD's
        ``CRMOGMWeighting`` default). α = 0 returns the wrapped weights
        unchanged, α = 1 freezes them at λ_0. The paper's Corollary 1 lets
        α_k grow towards 1 as the learning rate decays (e.g.
        α_k = 1 − lr_k/lr_0): α may be traced, so pass a schedule's value
        through a closure re-built each step, or ``jax.vmap`` over α.
      initial_weights: optional (K,) λ_0; default λ̂_1.

    References:
      Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of
      Stochastic Multi-Objective Gradient Manipulation and Beyond",
      NeurIPS 2022, https://proceedings.neurips.cc/paper_files/paper/2022/hash/f91bd64a3620aad8e70a27ad9cb3ca57-Abstract-Conference.html;
      TorchJD's ``CRMOGMWeighting``, https://github.com/TorchJD/torchjd.
    """
    if not isinstance(weighting, Weighting):
        raise TypeError(f"covjax.cr_mogm: weighting must be a covjax.Weighting, got {weighting!r}.")
    if DIRECTION in weighting.requires:
        raise ValueError(
            "covjax.cr_mogm: the wrapped scheme returns a direction, not weights; CR-MOGM "
            "averages weights."
        )
    if not isinstance(alpha, jax.core.Tracer) and not np.all(
        (np.asarray(alpha) >= 0) & (np.asarray(alpha) <= 1)
    ):
        raise ValueError(f"covjax.cr_mogm: alpha must be in [0, 1], got {alpha}")
    properties = weighting.properties

    def init_fn(losses: Array) -> CRMOGMState:
        if initial_weights is not None and jnp.shape(initial_weights) != losses.shape:
            raise ValueError(
                f"covjax.cr_mogm: initial_weights has shape {jnp.shape(initial_weights)}, "
                f"expected {losses.shape}."
            )
        return CRMOGMState(weighting.init(losses), jnp.zeros(losses.shape, jnp.float32))

    def update_fn(
        losses: Array, state: CRMOGMState, count: Array, gradients: Array | None
    ) -> tuple[Array, CRMOGMState]:
        given = {}
        if GRAMIAN_REQUIREMENTS & weighting.requires:
            given["gramian"] = gradients
        if JACOBIAN in weighting.requires:
            given["jacobian"] = gradients
        raw, inner = weighting.update(losses, state.inner, **given)
        a = jnp.asarray(alpha, raw.dtype)
        if initial_weights is None:
            start = raw
        else:
            start = jnp.asarray(initial_weights, raw.dtype)
        previous = jnp.where(count == 0, start, state.smoothed.astype(raw.dtype))
        smoothed = a * previous + (1.0 - a) * raw
        # A step the wrapped scheme rejected: non-finite weights make the wrapper reject it too.
        accepted = step_accepted(state.inner, inner)
        weights = jnp.where(accepted, smoothed, jnp.nan)
        return weights, CRMOGMState(inner, smoothed.astype(state.smoothed.dtype))

    return make_weighting(
        init_fn,
        update_fn,
        name="cr_mogm",
        requires=weighting.requires,
        positive_losses=properties.positive_losses,
        weights_sum=properties.weights_sum,
        loss_scale=SMOOTHED_LOSS_SCALE[properties.loss_scale],
    )
