"""**ReLoBRaLo** — Relative Loss Balancing with Random Lookback (Bischof & Kraus,
2021)::

    λ̂(t, t′) = K softmax( L(t) / (T L(t′)) )
    λ(t) = a [ρ λ(t−1) + (1−ρ) λ̂(t, 0)] + (1 − a) λ̂(t, t−1),   ρ ~ Bernoulli(E[ρ])

with λ(−1) = 1, and as in the reference a = ρ = 1 at t = 0 (λ = 1) and
a = 0 at t = 1 (λ = λ̂(1, 0)). ρ is drawn from the PRNG key in the state:
``key, sub = jax.random.split(key); ρ = jax.random.bernoulli(sub, E[ρ])`` at
every step t ≥ 2. Σ λ = K.

Loss values only (one backward pass per step). The ratios need positive
losses: a step with a loss ≤ 0 is rejected like a non-finite one (state
unchanged, previous weights returned). Every softmax is max-shifted.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, make_weighting


class RelobraloState(NamedTuple):
    """ReLoBRaLo's state.

    Attributes:
      initial_losses: (K,) L(0).
      previous_losses: (K,) L(t−1).
      weights: (K,) λ(t−1).
      key: raw uint32[2] PRNG key for the Bernoulli lookback ρ.
    """

    initial_losses: Array
    previous_losses: Array
    weights: Array
    key: Array


def relobralo(
    alpha: float | Array = 0.999,
    temperature: float | Array = 0.1,
    expected_rho: float | Array = 0.999,
    seed: int | Array = 0,
) -> Weighting:
    """ReLoBRaLo (Bischof & Kraus, 2021): Σ λ = K.

    Args:
      alpha: a, the exponential-decay weight of the history (may be traced).
      temperature: T of the softmax of loss ratios (may be traced).
      expected_rho: E[ρ], the probability of *not* looking back to L(0).
      seed: seed of the PRNG key in the state.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted.

    References:
      Bischof & Kraus, "Multi-Objective Loss Balancing for Physics-Informed
      Deep Learning", 2021, https://arxiv.org/abs/2110.09813.
    """
    for value, what in ((alpha, "alpha"), (expected_rho, "expected_rho")):
        if isinstance(value, int | float) and not 0.0 <= value <= 1.0:
            raise ValueError(f"covjax.relobralo: {what} must lie in [0, 1], got {value}")
    if isinstance(temperature, int | float) and not temperature > 0:
        raise ValueError(f"covjax.relobralo: temperature must be positive, got {temperature}")

    def init_fn(losses: Array) -> RelobraloState:
        zeros = jnp.zeros(losses.shape, jnp.float32)
        return RelobraloState(
            zeros, zeros, jnp.ones(losses.shape, jnp.float32), jax.random.PRNGKey(seed)
        )

    def update_fn(
        losses: Array, state: RelobraloState, count: Array, gramian: Array | None
    ) -> tuple[Array, RelobraloState]:
        del gramian
        k = losses.shape[0]
        losses = losses.astype(jnp.float32)
        initial = jnp.where(count == 0, losses, state.initial_losses)

        def balance(reference: Array) -> Array:
            return k * numerics.capped_softmax(
                losses / numerics.at_least_tiny(temperature * reference)
            )

        key, draw_key = jax.random.split(state.key)
        rho = jax.random.bernoulli(draw_key, expected_rho).astype(jnp.float32)
        key = jnp.where(count >= 2, key, state.key)  # t < 2 draws nothing
        rho = jnp.where(count >= 2, rho, 1.0)
        a = jnp.where(count == 0, 1.0, jnp.where(count == 1, 0.0, alpha))
        weights = a * (rho * state.weights + (1.0 - rho) * balance(initial)) + (1.0 - a) * balance(
            state.previous_losses
        )
        weights = jnp.where(count == 0, state.weights, weights)  # no L(−1) to compare with
        return weights, RelobraloState(initial, losses, weights, key)

    return make_weighting(
        init_fn,
        update_fn,
        name="relobralo",
        positive_losses=True,
        weights_sum="K",
        loss_scale="unchanged",
    )
