"""Learning-rate annealing for PINNs (Wang, Teng, Perdikaris, SIAM J. Sci. Comput. 2021).

"Understanding and Mitigating Gradient Flow Pathologies in Physics-Informed
Neural Networks" (https://arxiv.org/abs/2001.04536,
https://doi.org/10.1137/20M1318043). Loss 0 (``reference``) is the PDE
residual L_r, whose weight stays 1; every other loss i gets the estimate::

    λ̂_i = max_θ |∇_θ L_r| / mean_θ |∇_θ L_i|            (form="max_mean")

from per-coordinate statistics of the per-loss gradients (so this form
requires the :data:`~covjax.JACOBIAN`), and the weights follow the moving
average::

    λ_i ← α λ_i + (1 − α) λ̂_i          (λ_i = 1 initially, α = 0.9)

The grad-norm form of later work (e.g. Wang et al., "An Expert's Guide to
Training Physics-informed Neural Networks", https://arxiv.org/abs/2308.08468;
jaxpi's ``grad_norm`` scheme) balances every loss by its gradient norm,
which only needs the Gramian's diagonal (:data:`~covjax.GRAMIAN`)::

    λ̂_i = Σ_j ‖∇L_j‖ / ‖∇L_i‖                            (form="grad_norm")

Both balance the losses' gradient magnitudes: a loss multiplied by c gets its
estimate divided by c, so once the moving average has forgotten its start the
weights compensate loss scales (``loss_scale="learned"``). Σ λ is not
normalized. A denominator below eps32 × the numerator (round-off of it) is
raised to it, so λ̂ ≤ 1/eps32 ≈ 8.4e6 and a loss whose gradient vanishes is
not given an infinite weight (jaxpi adds 1e-5 × the mean norm, capping λ̂
near 1e5); λ̂ = 1 when the numerator is 0 too.

Deviations from the authors' code (PredictiveIntelligenceLab/
GradientPathologiesPINNs): it takes the max and mean over the weight matrices
only, as a mean of per-layer means, and refreshes λ every 10 steps with the
value computed at the previous refresh; covjax takes them over every
coordinate of the selected parameters (``wrt`` of :func:`covjax.value_and_grad`)
and uses the refreshed λ in the step whose gradients produced it (as jaxpi
does). jaxpi's grad-norm weights use the mean of the norms instead of the sum
(a factor K) and refresh every 1,000 steps (``update_every``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import GRAMIAN, JACOBIAN, LossScale, Weighting, make_weighting

AnnealingForm = Literal["max_mean", "grad_norm"]

#: A denominator below eps32 × the numerator is round-off of it: λ̂ ≤ 1/eps32 ≈ 8.4e6.
MIN_RATIO = float(jnp.finfo(jnp.float32).eps)


class AnnealingState(NamedTuple):
    """The moving average of a PINN balancer's weights.

    Attributes:
      weights: (K,) the current λ (ones initially).
    """

    weights: Array


def balance_ratio(numerator: Array, denominator: Array, min_ratio: float = MIN_RATIO) -> Array:
    """numerator / denominator, the denominator raised to ≥ min_ratio × numerator (1 at 0/0).

    Relative, not numerics.safe_divide's absolute floor: gradient norms and NTK
    traces have no natural scale (1e-14 is a legitimate trace).
    """
    floored = jnp.maximum(denominator, min_ratio * numerator)
    positive = floored > 0
    return jnp.where(positive, numerator / jnp.where(positive, floored, 1.0), 1.0)


def check_alpha(alpha: float | Array, name: str) -> None:
    if isinstance(alpha, int | float) and not 0.0 <= alpha < 1.0:
        raise ValueError(f"covjax.{name}: alpha must lie in [0, 1), got {alpha}")


def annealed_weighting(
    estimate: Callable[[Array], Array],
    *,
    name: str,
    alpha: float | Array,
    update_every: int,
    requires: frozenset[str],
    loss_scale: LossScale,
) -> Weighting:
    """λ ← α λ + (1 − α) estimate(gradients) every ``update_every`` accepted steps, from λ = 1.

    ``gradients`` is the Gramian or the Jacobian (``requires``); the refreshed
    λ weighs the step whose gradients produced it.
    """
    numerics.check_positive_int(update_every, "update_every", name)

    def init_fn(losses: Array) -> AnnealingState:
        return AnnealingState(jnp.ones(losses.shape, jnp.float32))

    def update_fn(
        losses: Array, state: AnnealingState, count: Array, gradients: Array | None
    ) -> tuple[Array, AnnealingState]:
        del losses
        assert gradients is not None  # make_weighting checks it
        refreshed = alpha * state.weights + (1.0 - alpha) * estimate(gradients)
        weights = jnp.where(count % update_every == 0, refreshed, state.weights)
        return weights, AnnealingState(weights)

    return make_weighting(
        init_fn,
        update_fn,
        name=name,
        requires=requires,
        weights_sum="free",
        loss_scale=loss_scale,
    )


def lr_annealing(
    alpha: float | Array = 0.9,
    form: AnnealingForm = "max_mean",
    reference: int = 0,
    update_every: int = 1,
) -> Weighting:
    """Learning-rate annealing (Wang, Teng, Perdikaris, 2021): λ_i ≈ max|∇L_r| / mean|∇L_i|.

    Args:
      alpha: weight of the previous λ in the moving average (0.9, the
        authors' code); may be a traced array (a sweep is one ``jax.vmap``).
      form: ``"max_mean"`` (the paper: per-coordinate statistics, requires the
        per-loss gradients, ``update(..., jacobian=J)``, which
        :func:`covjax.value_and_grad` passes) or ``"grad_norm"``
        (Σ_j ‖∇L_j‖/‖∇L_i‖ for every loss: requires the Gramian only).
      reference: the index of the residual loss L_r in the flattened losses
        (``"max_mean"`` only); its weight stays 1.
      update_every: refresh λ every this many accepted steps (1).

    Returns:
      A :class:`~covjax.Weighting` with ``requires={covjax.JACOBIAN}``
      (``"max_mean"``) or ``{covjax.GRAMIAN}`` (``"grad_norm"``); positive,
      unnormalized weights.

    The loss values are not used: any finite losses are accepted.

    References:
      Wang, Teng & Perdikaris, "Understanding and Mitigating Gradient Flow
      Pathologies in Physics-Informed Neural Networks", SIAM J. Sci. Comput.
      43(5), 2021, https://doi.org/10.1137/20M1318043,
      https://arxiv.org/abs/2001.04536; grad-norm form: Wang, Sankaran, Wang
      & Perdikaris, "An Expert's Guide to Training Physics-informed Neural
      Networks", 2023, https://arxiv.org/abs/2308.08468.
    """
    check_alpha(alpha, "lr_annealing")
    if form not in ("max_mean", "grad_norm"):
        raise ValueError(
            f"covjax.lr_annealing: form must be 'max_mean' or 'grad_norm', got {form!r}."
        )
    if not isinstance(reference, int) or isinstance(reference, bool) or reference < 0:
        raise ValueError(f"covjax.lr_annealing: reference must be an index ≥ 0, got {reference!r}")

    def max_mean_estimate(jacobian: Array) -> Array:
        k = jacobian.shape[0]
        if reference >= k:
            raise ValueError(
                f"covjax.lr_annealing: reference {reference} is not one of the {k} losses."
            )
        magnitudes = jnp.abs(jacobian)
        estimate = balance_ratio(jnp.max(magnitudes[reference]), jnp.mean(magnitudes, axis=1))
        return estimate.at[reference].set(1.0)

    def grad_norm_estimate(gramian: Array) -> Array:
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian), 0.0))
        return balance_ratio(jnp.sum(norms), norms)

    if form == "max_mean":
        estimate, requires = max_mean_estimate, frozenset({JACOBIAN})
    else:
        estimate, requires = grad_norm_estimate, frozenset({GRAMIAN})
    return annealed_weighting(
        estimate,
        name="lr_annealing",
        alpha=alpha,
        update_every=update_every,
        requires=requires,
        loss_scale="learned",
    )
