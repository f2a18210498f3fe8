"""Weights from the recent trend of each loss: DWA, SoftAdapt, ReLoBRaLo.

All three look only at loss values (one backward pass per step) and turn the
relative change of each loss into softmax weights. Ratios and logarithms of
losses need positive losses: DWA, ReLoBRaLo and SoftAdapt's
``"loss_weighted"`` variant reject a step with a loss ≤ 0 like a non-finite
one (state unchanged, previous weights returned); SoftAdapt's slopes accept
any finite losses. Every softmax is max-shifted.

**DWA** — Dynamic Weight Average (Liu, Johns, Davison, "End-to-End Multi-Task
Learning with Attention", CVPR 2019). On the means L̄_i(p) of each loss over
record periods p (Liu et al. use epochs: period = steps per epoch; period = 1
gives the per-step variant)::

    r_i = L̄_i(p−1) / L̄_i(p−2),      α = K softmax(r / T)      (T = 2)

with α = 1 during the first two periods. Σ α = K.

**SoftAdapt** (Heydari, Thompson, Mehmood, 2019). With slope s_i the secant
slope of L_i over the last n recorded values, (L_i(t) − L_i(t−n+1))/(n−1)::

    plain:          α = softmax(β s)
    normalized:     α = softmax(β s / Σ_j |s_j|)
    loss_weighted:  α_i = f_i e^{β s_i} / Σ_j f_j e^{β s_j},   f_i = mean of the window

equal weights 1/K until n values are recorded. Σ α = 1.

**ReLoBRaLo** — Relative Loss Balancing with Random Lookback (Bischof & Kraus,
2021)::

    λ̂(t, t′) = K softmax( L(t) / (T L(t′)) )
    λ(t) = a [ρ λ(t−1) + (1−ρ) λ̂(t, 0)] + (1 − a) λ̂(t, t−1),   ρ ~ Bernoulli(E[ρ])

with λ(−1) = 1, and as in the reference a = ρ = 1 at t = 0 (λ = 1) and
a = 0 at t = 1 (λ = λ̂(1, 0)). ρ is drawn from the PRNG key in the state:
``key, sub = jax.random.split(key); ρ = jax.random.bernoulli(sub, E[ρ])`` at
every step t ≥ 2. Σ λ = K.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax import numerics
from covjax.base import Weighting, make_weighting

SoftAdaptVariant = Literal["plain", "normalized", "loss_weighted"]


def _check_positive_int(value: int, what: str, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"covjax.{name}: {what} must be a positive integer, got {value!r}")


#: Cap on softmax logits: a ratio over a zero loss stays finite (and dominant).
_MAX_LOGIT = 1e30


def _positive(x: Array) -> Array:
    return jnp.maximum(x, numerics.TINY)


def _softmax(logits: Array) -> Array:
    return jax.nn.softmax(jnp.minimum(logits, _MAX_LOGIT))


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
    """
    _check_positive_int(period, "period", "dwa")
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
        ratio = mean / _positive(state.last_mean)
        next_weights = jnp.where(
            completed >= 2, k * _softmax(ratio / temperature), jnp.ones_like(losses)
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
            slope = slope / _positive(jnp.sum(jnp.abs(slope)))
        logits = beta * slope
        if variant == "loss_weighted":
            # f_i e^{β s_i} = e^{β s_i + log f_i}; the clamp keeps a zero loss finite.
            logits = logits + jnp.log(_positive(jnp.mean(history, axis=0)))
        full = count + 1 >= window
        weights = jnp.where(full, _softmax(logits), 1.0 / k)
        return weights, SoftAdaptState(history)

    return make_weighting(
        init_fn,
        update_fn,
        name="softadapt",
        positive_losses=variant == "loss_weighted",
        weights_sum="1",
        loss_scale="no",
    )


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
            return k * _softmax(losses / _positive(temperature * reference))

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
