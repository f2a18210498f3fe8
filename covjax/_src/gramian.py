"""Shared Gramian utilities of the gradient aggregators.

PCGrad, CAGrad, IMTL-G, Nash-MTL, Aligned-MTL, UPGrad, GradVac and DB-MTL
each turn the K per-loss gradients g_i (rows of the Jacobian J) into one
update direction d. Every one of them is a linear combination d = Σ_i w_i g_i
whose coefficients depend on the gradients only through their inner products,
so it is computed here from the K×K Gramian G = J Jᵀ alone: a modified
gradient is tracked as its coefficient vector c over the original gradients
(⟨Σ c_i g_i, g_j⟩ = (cᵀG)_j, ‖Σ c_i g_i‖² = cᵀGc). The returned weights are w,
and :func:`covjax.value_and_grad` then forms d with ONE weighted backward pass.

All schemes are built with ``requires={covjax.GRAMIAN}``. Conventions shared by all:

* The Gramian is symmetrised and divided by its mean diagonal before solving.
  Every aggregator here is invariant to that scale (or, for Nash-MTL, scales
  back explicitly), and float32 solvers behave much better on O(1) numbers.
* A loss whose gradient norm is below ``DEAD_GRADIENT`` (1e-5) times the
  largest is "dead": it cannot be projected on, normalized or bargained with.
  Each scheme says in its docstring what it does with dead losses; when every
  gradient is zero (G = 0) the direction is 0 whatever the weights, and the
  schemes return their documented neutral weights (never NaN).
* Randomness (PCGrad, GradVac) comes from a PRNG key in the state, split every
  step: the same seed and inputs give the same weights, jitted or not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

#: A gradient whose norm is below this fraction of the largest one is treated as zero:
#: 1e-5 ≈ 84·eps32, above what float32 leaves of a gradient that is zero in exact
#: arithmetic (n cancelling terms leave ≈ √n·eps32 of their scale; 84² ≈ 7000 terms),
#: and far below any gradient that carries signal next to the largest one.
DEAD_GRADIENT = 1e-5


class Normalized(NamedTuple):
    """A Gramian divided by its mean diagonal, with what is needed to undo it."""

    gramian: Array  # (K, K) symmetric, mean diagonal 1 (or all zero)
    scale: Array  # the mean diagonal of the original Gramian (0 when G = 0)
    live: Array  # (K,) bool: gradient norm ≥ DEAD_GRADIENT · the largest one


def normalized_gramian(gramian: Array) -> Normalized:
    symmetric = 0.5 * (gramian + gramian.T)
    diagonal = jnp.maximum(jnp.diagonal(symmetric), 0.0)
    scale = jnp.mean(diagonal)
    ok = scale > 0
    normalized = jnp.where(ok, symmetric / jnp.where(ok, scale, 1.0), 0.0)
    return Normalized(normalized, scale, live_gradients(normalized) & ok)


def live_gradients(gramian: Array) -> Array:
    """(K,) bool: ‖g_i‖ > ``DEAD_GRADIENT``·max_j ‖g_j‖; the others count as zero.

    All False when every gradient is zero or a diagonal entry is NaN or ±Inf.
    """
    norms_sq = jnp.maximum(jnp.diagonal(gramian), 0.0)
    return norms_sq > DEAD_GRADIENT**2 * jnp.max(norms_sq)


def positive_preference(task_weights: Array | None) -> bool:
    """Whether preference weights are the default (None) or concrete and all > 0.

    A scheme whose update is Σ_i t_i (something ≠ 0 unless Jᵀt = 0) is strongly
    stationary only for t > 0; a traced t cannot be checked, so it promises nothing.
    """
    if task_weights is None:
        return True
    if isinstance(task_weights, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(task_weights) > 0))


def uniform_weights(k: int) -> Array:
    return jnp.full((k,), 1.0 / k, jnp.float32)


def shuffled_orders(key: Array, k: int) -> tuple[Array, Array]:
    """A fresh key and one random permutation of range(K) per loss: (K, K) int32."""
    next_key, order_key = jax.random.split(key)
    keys = jax.random.split(order_key, k)
    orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(keys)
    return next_key, orders.astype(jnp.int32)


def cross_gramian(jacobian_a: Any, jacobian_b: Any) -> Array:
    """C = J_a J_bᵀ (K×K): C_ij = ⟨g_i(ξ), g_j(ξ')⟩ for the per-loss gradients of two batches.

    ``jacobian_a`` and ``jacobian_b`` are per-loss Jacobians of the same
    parameters (e.g. the ``jacobian`` of :func:`covjax.per_loss_jacobian` on
    two independent batches): pytrees with the same structure whose leaves
    are (K, ...) arrays, or two (K, P) arrays. With independent batches,
    C w is an unbiased estimate of G w for the true Gramian G (SDMGrad,
    MoDo), which the Gramian of one batch is not. C is not symmetric.

    Raises:
      ValueError: the two Jacobians differ in structure or shape.
    """
    leaves_a, tree_a = jax.tree.flatten(jacobian_a)
    leaves_b, tree_b = jax.tree.flatten(jacobian_b)
    if tree_a != tree_b or [x.shape for x in leaves_a] != [x.shape for x in leaves_b]:
        raise ValueError(
            "covjax.cross_gramian: the two Jacobians must have the same structure and shapes, "
            f"got {tree_a} with {[x.shape for x in leaves_a]} and {tree_b} with "
            f"{[x.shape for x in leaves_b]}."
        )
    if not leaves_a:
        raise ValueError("covjax.cross_gramian: the Jacobians are empty.")
    k = leaves_a[0].shape[0]
    dtype = jnp.promote_types(leaves_a[0].dtype, jnp.float32)
    cross = jnp.zeros((k, k), dtype)
    for a, b in zip(leaves_a, leaves_b, strict=True):
        rows_a, rows_b = a.reshape(k, -1).astype(dtype), b.reshape(k, -1).astype(dtype)
        # HIGHEST: accelerators would otherwise multiply float32 in bf16/TF32.
        cross = cross + jnp.matmul(rows_a, rows_b.T, precision=jax.lax.Precision.HIGHEST)
    return cross
