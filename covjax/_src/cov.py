"""CoV-Weighting: weights from the coefficient of variation of the loss ratios.

Groenendijk, Karaoglu, Gevers, Mensink. "Multi-Loss Weighting with
Coefficient of Variations", WACV 2021.

A loss whose relative variance has gone to zero is taken to be satisfied. For
every loss i and step t, with μ_L the running mean of the observed loss::

    ℓ_it = L_it / μ_{L_i, t-1}                     (loss ratio, paper Eq. 3)
    c_it = σ_{ℓ_it} / μ_{ℓ_it}                     (coefficient of variation, Eq. 2)
    α_it = c_it / Σ_j c_jt                         (weights, Eq. 4; Σ α = 1)

with the mean and standard deviation of ℓ from steps 0..t-1 (Welford, Eq. 5–7).
The ratio puts every loss on a common scale, so multiplying a loss by c > 0
leaves all weights unchanged.

Defaults follow the released code exactly: uniform weights for the first two
steps, ℓ = 1 at step 0, population variance over the t observed ratios,
σ = sqrt(S/t + 1e-8). Fixes of the reference's hazards: σ/μ and L/μ_L are
guarded (where μ_L ≤ 0, e.g. a loss that has been exactly 0 so far, ℓ is taken
as 1; where μ_ℓ is 0 the coefficient is 0), counters are integers, statistics
are Kahan-compensated float32 (10⁷ steps stay accurate), and nothing leaves the
device. So CoV-Weighting needs no positive losses: for any finite losses its
weights lie in [0, 1] and sum to 1 (the ratio is meant for positive losses;
zero and negative ones are accepted, not rejected).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, make_weighting

#: The released code's variance floor inside the square root.
VARIANCE_FLOOR = 1e-8


class CovState(NamedTuple):
    """Per-loss running statistics of CoV-Weighting (all (K,) float32).

    Attributes:
      loss_mean: μ_L, running mean of the raw losses (the ratio's denominator).
      stat_mean: running mean of the tracked statistic (ℓ, or L for
        ``statistic="loss"``).
      stat_spread: Welford's sum of squared deviations S (cumulative and hybrid
        modes) or the exponentially weighted variance (``decay`` mode).
    """

    loss_mean: numerics.Compensated
    stat_mean: numerics.Compensated
    stat_spread: numerics.Compensated


def cov_weighting(
    decay: float | Array | None = None,
    statistic: Literal["ratio", "loss"] = "ratio",
    inverse: bool = False,
    reference_decay: bool = False,
    warmup_steps: int = 2,
) -> Weighting:
    """CoV-Weighting (Groenendijk et al., WACV 2021).

    Args:
      decay: ``None`` (default) for statistics over the full history (the
        paper's main setting, β = 1 − 1/(t+1)); a β in (0, 1), possibly a traced
        array, for exponentially weighted statistics. The paper's "t = 20/100/
        1000" (Table 2) is β = 1 − 1/t.
      statistic: ``"ratio"`` (default) tracks ℓ = L/μ_L; ``"loss"`` tracks L
        itself (paper Table 7; not scale invariant).
      inverse: α ∝ μ/σ instead of σ/μ (paper Table 7).
      reference_decay: with ``decay``, reproduce the released code's hybrid:
        only the two means are decayed, S is a plain sum divided by t. Without
        it, ``decay`` gives a true exponentially weighted mean and variance.
      warmup_steps: steps with uniform weights at the start (2 in the paper).

    Returns:
      A :class:`~covjax.Weighting` whose weights are non-negative and sum to 1.

    Losses may be any finite value (the guards above keep every weight in
    [0, 1]); a step with a non-finite loss is rejected — state unchanged,
    previous weights returned, the step reported as not accepted.

    References:
      Groenendijk, Karaoglu, Gevers & Mensink, "Multi-Loss Weighting with
      Coefficient of Variations", WACV 2021, https://arxiv.org/abs/2009.01717;
      authors' code https://github.com/rickgroen/cov-weighting.
    """
    if statistic not in ("ratio", "loss"):
        raise ValueError(
            f"covjax.cov_weighting: statistic must be 'ratio' or 'loss', got {statistic!r}"
        )
    if reference_decay and decay is None:
        raise ValueError("covjax.cov_weighting: reference_decay=True needs a decay.")
    if isinstance(decay, int | float) and not 0.0 < decay < 1.0:
        raise ValueError(f"covjax.cov_weighting: decay must lie in (0, 1), got {decay}")
    exponential_variance = decay is not None and not reference_decay

    def init_fn(losses: Array) -> CovState:
        zeros = lambda: numerics.compensated_zeros(losses.shape)  # noqa: E731
        return CovState(zeros(), zeros(), zeros())

    def update_fn(
        losses: Array, state: CovState, count: Array, gramian: Array | None
    ) -> tuple[Array, CovState]:
        del gramian
        t = count.astype(jnp.float32)
        first = count == 0
        loss_mean = state.loss_mean.value
        if statistic == "ratio":
            # ℓ = 1 at the first step; a loss whose history is all zeros has no
            # scale yet, and its ratio is taken as 1 rather than 0/0.
            ratio = numerics.safe_divide(losses, loss_mean, fallback=1.0)
            observed = jnp.where(first, jnp.ones_like(losses), ratio)
        else:
            observed = losses

        # Weights from the statistics of steps 0..t-1, before this step's update.
        mean = state.stat_mean.value
        spread = state.stat_spread.value
        variance = spread if exponential_variance else spread / jnp.maximum(t, 1.0)
        std = jnp.sqrt(jnp.maximum(variance, 0.0) + VARIANCE_FLOOR)
        if inverse:
            cov = mean / std
        else:
            cov = numerics.safe_divide(std, jnp.abs(mean), fallback=0.0)
        weights = jnp.where(count < warmup_steps, 1.0 / losses.shape[0], numerics.normalize(cov))

        # Mixing weight of the new sample, 1 − β: 1 at t = 0, then 1/(t+1) or 1 − decay.
        if decay is None:
            rate = 1.0 / (t + 1.0)
        else:
            rate = jnp.where(first, 1.0, 1.0 - jnp.asarray(decay, jnp.float32))
        deviation = observed - mean
        stat_mean = numerics.compensated_add(state.stat_mean, rate * deviation)
        if exponential_variance:
            # West (1979): var ← (1 − a)(var + a·d²) with a = 1 − β.
            new_var = (1.0 - rate) * (spread + rate * deviation**2)
            stat_spread = numerics.compensated_set(new_var)
        else:
            stat_spread = numerics.compensated_add(
                state.stat_spread, deviation * (observed - stat_mean.value)
            )
        loss_mean_new = numerics.compensated_add(state.loss_mean, rate * (losses - loss_mean))
        return weights, CovState(loss_mean_new, stat_mean, stat_spread)

    return make_weighting(
        init_fn,
        update_fn,
        name="cov_weighting",
        weights_sum="1",
        # ℓ = L/μ_L is scale free; the raw loss's σ/μ is not, through σ's floor.
        loss_scale="unchanged" if statistic == "ratio" else "no",
    )
