"""Smooth Tchebycheff scalarization, STCH (Lin, Zhang, Zhang, Liu, Zhang, ICML 2024).

"Smooth Tchebycheff Scalarization for Multi-Objective Optimization"
(https://arxiv.org/abs/2402.19078). The Tchebycheff scalarization
max_i λ_i (L_i − z_i) is smoothed with the log-sum-exp::

    STCH_μ(L) = μ log Σ_i exp( λ_i (L_i − z_i) / μ )

(preference λ, ideal point z, smoothing μ > 0; μ → 0 gives the max). Like
every covjax scalarization, the weights are the gradient of the scalarized
objective with respect to the losses, at the current losses::

    α_i = ∂STCH_μ/∂L_i = λ_i softmax( λ (L − z) / μ )_i

so ``Σ α_i ∇L_i`` is exactly ∇STCH_μ (the weights are held constant in the
backward pass). With the default λ = 1 they sum to 1.

**Warm-up form** (``warmup_steps > 0``): the multi-task recipe of the
authors' released code (Xi-L/STCH, ``STCH_MTL``), also in LibMTL's ``STCH``.
During the warm-up the network trains on Σ_i log L_i (α_i = 1/L_i) while the
losses are averaged into a nadir point n; afterwards on the log-normalized
losses::

    K μ log Σ_i exp( λ_i log(L_i / n_i) / μ ),
    α_i = K λ_i softmax( λ log(L / n) / μ )_i / L_i

These weights divide each loss by its own scale: a loss multiplied by c gets
its weight divided by c. Deviation from the released code: it averages the
losses of the last warm-up *epoch* (and trains on Σ log L during the earlier
ones); covjax averages the losses of all ``warmup_steps`` steps (pass one
epoch's steps to match). The released code adds 1e-20 inside the logarithms;
covjax instead rejects a step with a loss ≤ 0 in this form.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, make_weighting
from covjax._src.scalarization import check_concrete_preference, check_positive, preference_vector


class StchState(NamedTuple):
    """STCH's warm-up record.

    Attributes:
      loss_sum: (K,) sum of the losses of the warm-up steps so far (then frozen).
    """

    loss_sum: Array


def stch(
    mu: float | Array = 1.0,
    preference: Array | None = None,
    ideal: float | Array = 0.0,
    warmup_steps: int = 0,
) -> Weighting:
    """Smooth Tchebycheff scalarization (Lin et al., ICML 2024): α = ∇_L μ log Σ e^{λ(L−z)/μ}.

    Args:
      mu: the smoothing μ > 0 (μ → 0: the Tchebycheff max; large μ: λ-weighted
        mean); may be a traced array (a sweep is one ``jax.vmap``).
      preference: λ, (K,) non-negative; default ones (then Σ α = 1).
      ideal: the ideal point z, a scalar or (K,) (default 0); only in the plain
        form.
      warmup_steps: 0 (default) for the paper's scalarization of the raw
        losses; n > 0 for the released multi-task recipe: n steps on Σ log L
        while the losses are averaged into a nadir point, then the
        scalarization of log(L / nadir) (see the module docstring).

    Returns:
      A :class:`~covjax.Weighting` whose weights are the gradient of the
      scalarized objective with respect to the losses.

    The plain form accepts any finite losses. In the warm-up form losses must
    be positive: a step with a loss ≤ 0 (or a non-finite one) is rejected —
    state unchanged, previous weights returned (uniform before the first
    accepted step), the step reported as not accepted.

    References:
      Lin et al., ICML 2024, https://arxiv.org/abs/2402.19078;
      code: https://github.com/Xi-L/STCH (STCH_MTL);
      LibMTL: https://github.com/median-research-group/LibMTL (weighting/STCH.py).
    """
    check_positive(mu, "mu", "stch")
    check_concrete_preference(preference, "stch")
    if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
        raise ValueError(f"covjax.stch: warmup_steps must be an integer ≥ 0, got {warmup_steps!r}")
    log_form = warmup_steps > 0
    if log_form and not (isinstance(ideal, int | float) and ideal == 0):
        raise ValueError(
            "covjax.stch: the warm-up form normalizes by its nadir point and takes no ideal point."
        )

    def init_fn(losses: Array) -> StchState:
        preference_vector(preference, losses.shape[0], "stch")  # shape check at trace time
        return StchState(jnp.zeros(losses.shape, jnp.float32))

    def update_fn(
        losses: Array, state: StchState, count: Array, gramian: Array | None
    ) -> tuple[Array, StchState]:
        del gramian
        k = losses.shape[0]
        weight = preference_vector(preference, k, "stch")
        if not log_form:
            shifted = weight * (losses - jnp.asarray(ideal, losses.dtype))
            return weight * jax.nn.softmax(shifted / mu), state
        warming_up = count < warmup_steps
        loss_sum = jnp.where(warming_up, state.loss_sum + losses, state.loss_sum)
        nadir = state.loss_sum / warmup_steps
        # log(L/n) from the logarithms: scale-free, and no ratio overflows.
        log_ratio = jnp.log(losses) - jnp.log(numerics.at_least_tiny(nadir))
        smooth_max = k * weight * jax.nn.softmax(weight * log_ratio / mu) / losses
        weights = jnp.where(warming_up, 1.0 / losses, smooth_max)
        return weights, StchState(loss_sum)

    return make_weighting(
        init_fn,
        update_fn,
        name="stch",
        positive_losses=log_form,
        weights_sum="1" if preference is None and not log_form else "free",
        loss_scale="compensated" if log_form else "no",
    )
