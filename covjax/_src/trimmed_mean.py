"""Coordinate-wise trimmed mean of the per-loss gradients (TorchJD's ``TrimmedMean``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import Array

from covjax._src.base import DIRECTION, JACOBIAN, Weighting, make_weighting
from covjax._src.gramian import uniform_weights


def coordinate_ranks(jacobian: Array) -> Array:
    """(K, P) int32: the rank of each entry within its column (0: the smallest; ties by row).

    K passes of comparisons, O(K²·P) work in O(K·P) memory: on XLA:CPU this is
    several times faster than sorting the columns (1.2 ms against 8 ms for a
    32×2000 Jacobian) and, unlike ``lax.top_k``, it serves a traced ``trim``.
    """
    k = jacobian.shape[0]
    rows = jnp.arange(k)[:, None]

    def count_below(rank: Array, j: Array) -> tuple[Array, None]:
        row = jacobian[j]
        below = (row < jacobian) | ((row == jacobian) & (j < rows))
        return rank + below.astype(jnp.int32), None

    return jax.lax.scan(count_below, jnp.zeros(jacobian.shape, jnp.int32), jnp.arange(k))[0]


def trimmed_mean(trim: int | Array) -> Weighting:
    """Coordinate-wise trimmed mean of the gradients, a robust aggregator.

    For every parameter coordinate p, sort the K values (g_1)_p, ..., (g_K)_p,
    drop the ``trim`` smallest and the ``trim`` largest, and average the rest::

        d_p = 1/(K − 2t) · Σ_{r=t}^{K−t−1} (g_(r))_p       (g_(r))_p: the r-th smallest

    (Yin et al., ICML 2018, as TorchJD's ``TrimmedMean(trim_number)``). With
    t = 0 it is the mean of the gradients. It is not a weighted sum of the
    gradients (each coordinate keeps other losses), so the scheme returns the
    direction (``requires`` holds :data:`covjax.DIRECTION`): it replaces the
    gradient of the selected parameters, and the weights, 1/K each (they sum to
    1), weigh the losses for every other parameter, as the mean does.

    Any finite losses and gradients are used; a step with a non-finite one is
    rejected (zero direction, state unchanged). Robust to up to t arbitrary
    gradients per coordinate; not non-conflicting, not linear under scaling.

    Args:
      trim: t, the number of values removed at EACH end of every coordinate
        (an int ≥ 0 with 2t + 1 ≤ K, checked at ``init``; it may also be a
        traced integer array, e.g. under ``jax.vmap``, and is then unchecked).

    Cost: the rank of every entry in its coordinate (K passes over the K×P
    Jacobian, :func:`coordinate_ranks`); no state.

    References:
      Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed
      Learning: Towards Optimal Statistical Rates", ICML 2018,
      https://arxiv.org/abs/1803.01498; TorchJD ``TrimmedMean``,
      https://github.com/TorchJD/torchjd.
    """
    if isinstance(trim, int | float) and (trim < 0 or int(trim) != trim):
        raise ValueError(f"covjax.trimmed_mean: trim must be an integer ≥ 0, got {trim}.")

    def init_fn(losses: Array) -> optax.EmptyState:
        k = losses.shape[0]
        if isinstance(trim, int) and 2 * trim + 1 > k:
            raise ValueError(
                f"covjax.trimmed_mean: trim={trim} removes {2 * trim} of the {k} values of each "
                f"coordinate; it needs 2·trim + 1 ≤ K (at most {(k - 1) // 2} for K = {k})."
            )
        return optax.EmptyState()

    def update_fn(
        losses: Array, state: optax.EmptyState, count: Array, jacobian: Array | None
    ) -> tuple[Array, optax.EmptyState, Array]:
        del count
        k = losses.shape[0]
        rank = coordinate_ranks(jacobian)
        kept = (rank >= trim) & (rank < k - trim)
        direction = jnp.sum(jnp.where(kept, jacobian, 0.0), axis=0) / (k - 2 * trim)
        return uniform_weights(k).astype(jacobian.dtype), state, direction

    return make_weighting(
        init_fn,
        update_fn,
        name="trimmed_mean",
        requires={JACOBIAN, DIRECTION},
        weights_sum="1",
        loss_scale="unchanged",
    )
