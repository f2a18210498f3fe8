"""Penalty-based boundary intersection, PBI (Zhang & Li, IEEE TEVC 2007), as a loss scalarization.

"MOEA/D: A Multiobjective Evolutionary Algorithm Based on Decomposition"
(https://doi.org/10.1109/TEVC.2007.892759). With a preference direction λ
(unit vector u = λ/‖λ‖) and an ideal point z, the losses are split into their
distance along the preference ray and their distance from it::

    d1 = (L − z)·u,     r = (L − z) − d1 u,     d2 = ‖r‖
    PBI_θ(L) = d1 + θ d2                         (θ = 5 in MOEA/D)

covjax's weights are the gradient of PBI_θ with respect to the losses at the
current losses (so Σ α_i ∇L_i is exactly ∇PBI_θ)::

    α = u + θ r / ‖r‖            (α = u when L − z lies on the ray: r = 0)

The penalty term pulls the losses back onto the preference ray, so a loss
that is ahead of its share gets a *negative* weight (it is traded off for the
others); Σ α is not normalized. Any finite losses are accepted.

covjax follows MOEA/D's definition, with z = 0 by default (losses ≥ 0 have
the ideal point 0).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, stateless
from covjax._src.scalarization import check_concrete_preference, check_positive, preference_vector


def pbi(
    theta: float | Array = 5.0,
    preference: Array | None = None,
    ideal: float | Array = 0.0,
) -> Weighting:
    """Penalty-based boundary intersection (Zhang & Li, 2007): α = ∇_L (d1 + θ d2).

    Args:
      theta: the penalty θ > 0 on the distance from the preference ray (5 in
        MOEA/D); may be a traced array (a sweep is one ``jax.vmap``).
      preference: λ, (K,) non-negative with a positive entry; default ones
        (the diagonal ray). Only its direction matters.
      ideal: the ideal point z, a scalar or (K,) (default 0).

    Returns:
      A :class:`~covjax.Weighting` whose weights are the gradient of PBI with
      respect to the losses; they may be negative and are not normalized.

    Accepts any finite losses (the scalarization is defined for all of them).

    References:
      Zhang & Li, IEEE TEVC 11(6), 2007, https://doi.org/10.1109/TEVC.2007.892759.
    """
    check_positive(theta, "theta", "pbi")
    check_concrete_preference(preference, "pbi")

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        del gramian
        direction = preference_vector(preference, losses.shape[0], "pbi")
        direction = direction / jnp.linalg.norm(direction)
        offset = losses - jnp.asarray(ideal, losses.dtype)
        along = jnp.dot(offset, direction)
        across = offset - along * direction
        # Once more: the rounding of `along` leaves a component along the ray.
        across = across - jnp.dot(across, direction) * direction
        distance = jnp.linalg.norm(across)
        # On the ray d2 has no gradient direction (its subgradient 0 is taken); a distance
        # within the rounding of `offset` (a few eps per entry) counts as on the ray.
        eps = jnp.finfo(losses.dtype).eps
        on_ray = distance <= 4 * losses.shape[0] * eps * jnp.linalg.norm(offset)
        unit_across = numerics.safe_divide(across, jnp.where(on_ray, 0.0, distance))
        return direction + theta * unit_across

    return stateless(weights_fn, name="pbi", weights_sum="free", loss_scale="no")
