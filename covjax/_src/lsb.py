"""Loss-scale balancing: LSB (Lee, Lee, Kim, ICCV 2021) and multi-loss rebalancing (ECCV 2020).

**LSB** — "Dynamic Multi-Task Learning via Loss Scale Balancing" (the second
seed of Groenendijk et al.'s line of work). No official code exists;
this follows the consensus of independent re-implementations. Instead of
steering each loss's trend, LSB periodically equalises the *loss scales*
w_k L̄_k and focuses on the tasks whose loss falls slowest. With L̄_k(p) the
mean of loss k over record period p and L̄(p) = Σ_k w_k L̄_k(p) its total
under the scale weights in force during p:

* scale balancing at the end of every period: w_k ← s_k L̄(p) / L̄_k(p), with
  priors s_k (default 1/K), so every loss scale becomes s_k L̄(p) and the
  total is preserved;
* difficulty from the end of the second period on::

      d_k = [ (L̄_k(p) / L̄_k(p−1)) / (L̄(p) / L̄(p−1)) ]^β,   optionally d ← K d / Σ d

  (a task whose loss falls more slowly than the total gets d_k > 1);
* weights α_k = d_k w_k: equal (1/K) in the first period, scale balancing only
  in the second, both from the third on. Not normalized.

Here L̄ is the total under the scale weights w (not d·w), so L̄(p)/L̄(p−1) is
the prior-weighted mean of the per-task ratios L̄_k(p)/L̄_k(p−1) and d
measures each task's ratio against that mean.

**Multi-loss rebalancing** — Lee & Kim, "Multi-Loss Rebalancing Algorithm for
Monocular Depth Estimation", ECCV 2020 (ref. [14] of the CoV paper;
its released code is followed exactly). Weights w_i = 1/K, target shares
s_i = 1/K; N rebalancing events per epoch, each on the per-loss means m_i
since the previous event (the record also resets at every epoch start):

* first event: T = Σ w_j m_j; w_i ← T s_i / m_i;
* later events: T = Σ w_j m_j; r_i = (T / T_prev)(m_prev,i / m_i);
  w_i ← w_i · clip(1 + λ_e (r_i − 1), 0.5, 2), λ_e = max(3 − 1.5 e, −3)
  for the 0-based epoch e;
* after every event: T_prev = Σ w_new m, m_prev = m. No renormalization.

Event j (1..N) of an epoch follows its step j·⌊steps_per_epoch / N⌋; steps
after the last event of an epoch are not recorded.

Both need positive losses (ratios of loss means): a step with a loss ≤ 0 is
rejected like a non-finite one (state unchanged, previous weights returned),
so the record only ever holds positive losses. The new weights apply from the
step after an event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, make_weighting

BetaSchedule = Literal["linear"] | Callable[[Array], Array] | None


class LsbState(NamedTuple):
    """LSB's record (all (K,) float32 unless noted).

    Attributes:
      period_sum: sum of each loss over the current period so far.
      scales: w, the scale-balancing weights in force.
      difficulty: d, the difficulty factors in force (1 until the third period).
      last_mean: L̄_k(p−1), each loss's mean over the last completed period.
      last_total: () L̄(p−1) = Σ w_k L̄_k(p−1) under that period's weights.
    """

    period_sum: Array
    scales: Array
    difficulty: Array
    last_mean: Array
    last_total: Array


def lsb(
    period: int,
    difficulty: bool = True,
    beta: float | Array = 1.0,
    priors: Array | None = None,
    normalize_difficulty: bool = True,
    beta_schedule: BetaSchedule = None,
    ramp_periods: int = 10,
) -> Weighting:
    """Loss Scale Balancing (Lee, Lee, Kim, ICCV 2021); weights α = d ⊙ w.

    Args:
      period: record period P in steps (one epoch in the paper).
      difficulty: apply the difficulty factors d (else scale balancing only).
      beta: β, the difficulty exponent (may be traced).
      priors: s, (K,) target shares of the loss scales; default 1/K.
      normalize_difficulty: rescale d so that Σ d = K.
      beta_schedule: ``None`` (constant β), ``"linear"`` (β·min(q/ramp_periods, 1)
        at the q-th difficulty update, q = 1, 2, ...), or a callable q ↦ β_q.
      ramp_periods: length of the linear ramp, in difficulty updates.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted.

    Returns:
      A :class:`~covjax.Weighting` with positive, unnormalized weights that
      compensate a loss's scale from the end of the first period on.

    References:
      Lee, Lee & Kim, "Learning Multiple Pixelwise Tasks Based on Loss Scale
      Balancing", ICCV 2021, pp. 5087–5096,
      https://openaccess.thecvf.com/content/ICCV2021/html/Lee_Learning_Multiple_Pixelwise_Tasks_Based_on_Loss_Scale_Balancing_ICCV_2021_paper.html;
      authors' code https://github.com/jaehanlee-mcl/LSB-MTL.
    """
    numerics.check_positive_int(period, "period", "lsb")
    numerics.check_positive_int(ramp_periods, "ramp_periods", "lsb")
    if not (beta_schedule is None or beta_schedule == "linear" or callable(beta_schedule)):
        raise ValueError(
            f"covjax.lsb: beta_schedule must be None, 'linear' or a callable, got {beta_schedule!r}"
        )

    def beta_at(update_index: Array) -> Array:
        q = update_index.astype(jnp.float32)
        if beta_schedule is None:
            return jnp.asarray(beta, jnp.float32)
        if beta_schedule == "linear":
            return beta * jnp.minimum(q / ramp_periods, 1.0)
        return jnp.asarray(beta_schedule(q), jnp.float32)

    def init_fn(losses: Array) -> LsbState:
        k = losses.shape[0]
        zeros = jnp.zeros((k,), jnp.float32)
        if priors is not None and jnp.shape(priors) != (k,):
            raise ValueError(f"covjax.lsb: priors has shape {jnp.shape(priors)}, expected ({k},)")
        return LsbState(
            zeros,
            jnp.full((k,), 1.0 / k, jnp.float32),
            jnp.ones((k,), jnp.float32),
            zeros,
            jnp.zeros((), jnp.float32),
        )

    def update_fn(
        losses: Array, state: LsbState, count: Array, gramian: Array | None
    ) -> tuple[Array, LsbState]:
        del gramian
        k = losses.shape[0]
        weights = state.difficulty * state.scales
        period_sum = state.period_sum + losses
        period_ends = (count + 1) % period == 0
        completed = (count + 1) // period  # periods completed after this step
        mean = period_sum / period
        total = jnp.sum(state.scales * mean)
        shares = jnp.full((k,), 1.0 / k) if priors is None else jnp.asarray(priors, jnp.float32)
        scales = shares * total / numerics.at_least_tiny(mean)
        new_difficulty = state.difficulty
        if difficulty:
            task_ratio = mean / numerics.at_least_tiny(state.last_mean)
            total_ratio = total / numerics.at_least_tiny(state.last_total)
            exponent = beta_at(completed - 1)
            d = (task_ratio / numerics.at_least_tiny(total_ratio)) ** exponent
            if normalize_difficulty:
                d = k * d / numerics.at_least_tiny(jnp.sum(d))
            new_difficulty = jnp.where(completed >= 2, d, state.difficulty)
        keep_or = lambda new, old: jnp.where(period_ends, new, old)  # noqa: E731
        new_state = LsbState(
            period_sum=keep_or(jnp.zeros_like(period_sum), period_sum),
            scales=keep_or(scales, state.scales),
            difficulty=keep_or(new_difficulty, state.difficulty),
            last_mean=keep_or(mean, state.last_mean),
            last_total=keep_or(total, state.last_total),
        )
        return weights, new_state

    return make_weighting(
        init_fn,
        update_fn,
        name="lsb",
        positive_losses=True,
        weights_sum="free",
        loss_scale="compensated",
    )


class RebalancingState(NamedTuple):
    """Multi-loss rebalancing's record.

    Attributes:
      record_sum: (K,) sum of each loss since the last event (or epoch start).
      record_steps: () int32, number of steps in that record.
      weights: (K,) the weights in force.
      previous_total: () T_prev.
      previous_mean: (K,) m_prev.
      events: () int32, rebalancing events so far.
    """

    record_sum: Array
    record_steps: Array
    weights: Array
    previous_total: Array
    previous_mean: Array
    events: Array


def multi_loss_rebalancing(steps_per_epoch: int, rebalances_per_epoch: int = 4) -> Weighting:
    """Multi-loss rebalancing (Lee & Kim, ECCV 2020), exactly as its released code.

    Args:
      steps_per_epoch: training steps per epoch (sets the epoch e of λ_e and
        the epoch-start record reset).
      rebalances_per_epoch: N, events per epoch (4 in the paper); at most
        ``steps_per_epoch``.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted.

    Returns:
      A :class:`~covjax.Weighting` with positive, unnormalized weights that
      compensate a loss's scale from the first event on.

    References:
      Lee & Kim, "Multi-Loss Rebalancing Algorithm for Monocular Depth
      Estimation", ECCV 2020.
    """
    numerics.check_positive_int(steps_per_epoch, "steps_per_epoch", "multi_loss_rebalancing")
    numerics.check_positive_int(
        rebalances_per_epoch, "rebalances_per_epoch", "multi_loss_rebalancing"
    )
    if rebalances_per_epoch > steps_per_epoch:
        raise ValueError(
            f"covjax.multi_loss_rebalancing: rebalances_per_epoch ({rebalances_per_epoch}) "
            f"exceeds steps_per_epoch ({steps_per_epoch})."
        )
    interval = steps_per_epoch // rebalances_per_epoch

    def init_fn(losses: Array) -> RebalancingState:
        k = losses.shape[0]
        zeros = jnp.zeros((k,), jnp.float32)
        return RebalancingState(
            zeros,
            jnp.zeros((), jnp.int32),
            jnp.full((k,), 1.0 / k, jnp.float32),
            jnp.zeros((), jnp.float32),
            zeros,
            jnp.zeros((), jnp.int32),
        )

    def update_fn(
        losses: Array, state: RebalancingState, count: Array, gramian: Array | None
    ) -> tuple[Array, RebalancingState]:
        del gramian
        k = losses.shape[0]
        epoch = count // steps_per_epoch
        step_in_epoch = count % steps_per_epoch
        # The record restarts at every epoch start (steps after the last event are dropped).
        epoch_start = step_in_epoch == 0
        record_sum = jnp.where(epoch_start, 0.0, state.record_sum) + losses
        record_steps = jnp.where(epoch_start, 0, state.record_steps) + 1
        is_event = ((step_in_epoch + 1) % interval == 0) & (
            (step_in_epoch + 1) // interval <= rebalances_per_epoch
        )
        mean = record_sum / record_steps.astype(jnp.float32)
        safe_mean = numerics.at_least_tiny(mean)
        total = jnp.sum(state.weights * mean)
        first_weights = total * (1.0 / k) / safe_mean
        strength = jnp.maximum(3.0 - 1.5 * epoch.astype(jnp.float32), -3.0)
        ratio = (total / numerics.at_least_tiny(state.previous_total)) * (
            state.previous_mean / safe_mean
        )
        later_weights = state.weights * jnp.clip(1.0 + strength * (ratio - 1.0), 0.5, 2.0)
        event_weights = jnp.where(state.events == 0, first_weights, later_weights)
        new_weights = jnp.where(is_event, event_weights, state.weights)
        new_state = RebalancingState(
            record_sum=jnp.where(is_event, 0.0, record_sum),
            record_steps=jnp.where(is_event, 0, record_steps),
            weights=new_weights,
            previous_total=jnp.where(is_event, jnp.sum(event_weights * mean), state.previous_total),
            previous_mean=jnp.where(is_event, mean, state.previous_mean),
            events=state.events + is_event.astype(jnp.int32),
        )
        return state.weights, new_state

    return make_weighting(
        init_fn,
        update_fn,
        name="multi_loss_rebalancing",
        positive_losses=True,
        weights_sum="free",
        loss_scale="compensated",
    )
