"""Static loss weights: fixed (hand-tuned) weights and equal weighting.

The baselines of Groenendijk et al., "Multi-Loss Weighting with Coefficient of
Variations", WACV 2021 (https://arxiv.org/abs/2009.01717)::

    equal:       α_i = 1/K
    static:      α_i = w_i                 (or w_i / Σ_j w_j with ``normalize=True``)

The weights never change, so the state only holds the step counter; they are
still a :class:`~covjax.Weighting` so that every scheme is used the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from covjax._src.base import (
    AggregatorPromises,
    Losses,
    PyTree,
    Weighting,
    WeightingState,
    flatten_losses,
    stateless,
)


def _is_concrete(x: Array) -> bool:
    return not isinstance(x, jax.core.Tracer)


def static_weighting(weights: PyTree, normalize: bool = False) -> Weighting:
    """Fixed weights α_i = w_i, e.g. hand-tuned ones.

    Args:
      weights: a 1-D array of K weights, or a pytree of scalar weights with the
        same structure as the losses (checked at ``init``). May be a traced
        array, so that a sweep over weightings is one ``jax.vmap``.
      normalize: divide by Σ w so that the weights sum to 1. Off by default:
        the weights are used exactly as given (their scale then acts like a
        learning-rate factor, as in any hand-tuned objective).

    Losses may be any finite value; a step with a non-finite loss is rejected —
    state unchanged, previous weights returned, the step reported as not accepted.

    Raises:
      ValueError: (at construction) weights that are non-finite or negative;
        (at ``init``) weights whose number or structure differs from the losses'.
    """
    weight_vector, weight_structure = flatten_losses(weights)
    if _is_concrete(weight_vector):
        values = np.asarray(weight_vector)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"covjax.static_weighting: weights must be finite, got {values}.")
        if np.any(values < 0):
            raise ValueError(
                f"covjax.static_weighting: weights must be non-negative, got {values}."
            )
        if normalize and not values.sum() > 0:
            raise ValueError(
                "covjax.static_weighting: normalize=True needs weights with a positive sum."
            )

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        del gramian
        vector = jnp.broadcast_to(weight_vector.astype(losses.dtype), losses.shape)
        if normalize:
            vector = vector / jnp.sum(vector)
        return vector

    scheme = stateless(
        weights_fn,
        name="static_weighting",
        weights_sum="1" if normalize else "free",
        loss_scale="unchanged",
        # TorchJD's Constant: fixed weights (tied to the losses' order) make d linear
        # in the gradients, and d = 0 only if Jᵀw = 0, strongly stationary for w > 0.
        promises=AggregatorPromises(
            linear_under_scaling=True,
            strongly_stationary=_is_concrete(weight_vector)
            and bool(np.all(np.asarray(weight_vector) > 0)),
        ),
    )

    def init(losses: Losses) -> WeightingState:
        _, loss_structure = flatten_losses(losses)
        if weight_structure.num_losses != loss_structure.num_losses or (
            not weight_structure.is_vector and weight_structure.treedef != loss_structure.treedef
        ):
            raise ValueError(
                f"covjax.static_weighting: the weights are {weight_structure.describe()} but "
                f"the losses are {loss_structure.describe()}."
            )
        return scheme.init(losses)

    return scheme._replace(init=init)


def equal_weighting() -> Weighting:
    """Equal weights α_i = 1/K (the paper's "equal" baseline; Σ α = 1).

    Losses may be any finite value; a step with a non-finite loss is rejected —
    state unchanged, previous weights returned, the step reported as not accepted.
    """

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        del gramian
        return jnp.full_like(losses, 1.0 / losses.shape[0])

    return stateless(
        weights_fn,
        name="equal_weighting",
        weights_sum="1",
        loss_scale="unchanged",
        # TorchJD's Mean: d = mean of the gradients, 0 only if Jᵀ(1/K) = 0.
        promises=AggregatorPromises(
            permutation_invariant=True, linear_under_scaling=True, strongly_stationary=True
        ),
    )
