"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian, shuffled_orders


class PCGradState(NamedTuple):
    """PRNG key for the random projection orders (uint32[2], split every step)."""

    key: Array


def pcgrad(seed: int = 0) -> Weighting:
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020).

    For every loss i, starting from g_i^PC = g_i and visiting all j (i included,
    as the reference implementations do) in a random order::

        if ⟨g_i^PC, g_j⟩ < 0:   g_i^PC ← g_i^PC − ⟨g_i^PC, g_j⟩ / ‖g_j‖² · g_j

    (projection onto the normal plane of each conflicting ORIGINAL gradient),
    and d = Σ_i g_i^PC. Each g_i^PC is tracked as a coefficient vector c_i
    (starting at e_i), so w = Σ_i c_i. Dead (zero) gradients are never
    projected on; with no conflicts w = 1 (plain sum).

    Args:
      seed: seed of the PRNG key kept in the state (one permutation per loss
        per step, drawn from a key split every step).

    References:
      Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
      Multi-Task Learning", NeurIPS 2020, https://arxiv.org/abs/2001.06782.
    """

    def init_fn(losses: Array) -> PCGradState:
        del losses
        return PCGradState(jax.random.PRNGKey(seed))

    def update_fn(
        losses: Array, state: PCGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, PCGradState]:
        del count
        k = losses.shape[0]
        g = normalized_gramian(gramian)
        next_key, orders = shuffled_orders(state.key, k)
        eye = jnp.eye(k, dtype=g.gramian.dtype)

        def surgery(start: Array, order: Array) -> Array:
            def visit(coef: Array, j: Array) -> tuple[Array, None]:
                dot = coef @ g.gramian[:, j]
                conflict = (dot < 0) & g.live[j]
                shift = jnp.where(conflict, dot / jnp.where(conflict, g.gramian[j, j], 1.0), 0.0)
                return coef - shift * eye[j], None

            return jax.lax.scan(visit, start, order)[0]

        coefficients = jax.vmap(surgery)(eye, orders)
        return jnp.sum(coefficients, axis=0), PCGradState(next_key)

    return make_weighting(
        init_fn,
        update_fn,
        name="pcgrad",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
    )
