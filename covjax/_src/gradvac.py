"""GradVac: gradient vaccine (Wang et al., ICLR 2021)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, make_weighting
from covjax._src.gramian import DEAD_GRADIENT, normalized_gramian, shuffled_orders


class GradVacState(NamedTuple):
    """GradVac's state.

    Attributes:
      key: PRNG key for the random visiting orders (split every step).
      targets: (K, K) EMA targets φ̂_ij of the cosine similarity (start at 0).
    """

    key: Array
    targets: Array


def gradvac(beta: float = 0.5, seed: int = 0) -> Weighting:
    """Gradient Vaccine (Wang, Tsvetkov, Firat, Cao, ICLR 2021).

    For every loss i, starting from g_i^PC = g_i, and every j ≠ i in a random
    order, with φ = cos(g_i^PC, g_j) and the target φ̂_ij::

        if φ < φ̂_ij:  g_i^PC ← g_i^PC + ‖g_i^PC‖ (φ̂ √(1−φ²) − φ √(1−φ̂²)) / (‖g_j‖ √(1−φ̂²)) · g_j
        φ̂_ij ← (1 − β) φ̂_ij + β φ          (every visit, with φ before the adjustment)

    and d = Σ_i g_i^PC (coefficient bookkeeping, w = Σ_i c_i). Targets start at
    0, so early steps behave like PCGrad with a gentler correction.

    Args:
      beta: EMA rate of the targets. The paper uses 1e-2; LibMTL's default,
        adopted here, is 0.5.
      seed: seed of the PRNG key kept in the state.

    Degenerate cases: a pair with a dead gradient (or a vanished g_i^PC) is
    skipped and its target left unchanged; a target ``|φ̂| = 1`` (√(1−φ̂²) = 0)
    makes no adjustment.

    References:
      Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and
      Improving Multi-task Optimization in Massively Multilingual Models",
      ICLR 2021, https://arxiv.org/abs/2010.05874.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"covjax.gradvac: beta must lie in (0, 1], got {beta}")

    def init_fn(losses: Array) -> GradVacState:
        k = losses.shape[0]
        return GradVacState(jax.random.PRNGKey(seed), jnp.zeros((k, k), jnp.float32))

    def update_fn(
        losses: Array, state: GradVacState, count: Array, gramian: Array | None
    ) -> tuple[Array, GradVacState]:
        del count
        k = losses.shape[0]
        g = normalized_gramian(gramian)
        next_key, orders = shuffled_orders(state.key, k)
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g.gramian), 0.0))

        def vaccinate(i: Array, order: Array, targets: Array) -> tuple[Array, Array]:
            def visit(carry: tuple[Array, Array], j: Array) -> tuple[tuple[Array, Array], None]:
                coef, row = carry
                pc_norm = jnp.sqrt(jnp.maximum(coef @ g.gramian @ coef, 0.0))
                valid = (j != i) & g.live[j] & (pc_norm > DEAD_GRADIENT * jnp.max(norms))
                denominator = jnp.where(valid, pc_norm * norms[j], 1.0)
                phi = jnp.clip((coef @ g.gramian[:, j]) / denominator, -1.0, 1.0)
                target = row[j]
                target_sine = jnp.sqrt(jnp.maximum(1.0 - target**2, 0.0))
                adjust = valid & (phi < target) & (target_sine > 1e-6)
                scale = jnp.where(adjust, pc_norm / jnp.where(adjust, norms[j], 1.0), 0.0)
                amount = (
                    scale
                    * (target * jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0)) - phi * target_sine)
                    / jnp.where(adjust, target_sine, 1.0)
                )
                coef = coef + jnp.where(adjust, amount, 0.0) * eye[j]
                # The EMA keeps the state's dtype (a float64 Gramian may update a float32 state).
                updated = jnp.where(valid, (1.0 - beta) * target + beta * phi, target)
                row = row.at[j].set(updated.astype(row.dtype))
                return (coef, row), None

            (coef, row), _ = jax.lax.scan(visit, (eye[i], targets), order)
            return coef, row

        coefficients, targets = jax.vmap(vaccinate)(jnp.arange(k), orders, state.targets)
        return jnp.sum(coefficients, axis=0), GradVacState(next_key, targets)

    return make_weighting(
        init_fn,
        update_fn,
        name="gradvac",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
        # Cosines and the targets are scale-free and each adjustment is proportional to
        # ‖g_i^PC‖; the random orders tie the result to the losses' order.
        promises=AggregatorPromises(linear_under_scaling=True),
    )
