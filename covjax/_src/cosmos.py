"""COSMOS's cosine-penalized linear scalarization (Ruchte & Grabocka, ICDM 2021).

"Scalable Pareto Front Approximation for Deep Multi-Objective Learning"
(https://arxiv.org/abs/2103.13392). For a preference vector r the objective
is the r-weighted sum of the losses minus a penalty on the angle between the
loss vector and r::

    COSMOS_λ(L) = Σ_i r_i L_i − λ cos(L, r),     cos(L, r) = L·r / (‖L‖ ‖r‖)

covjax's weights are its gradient with respect to the losses at the current
losses (so Σ α_i ∇L_i is exactly ∇COSMOS_λ)::

    α = r − λ ( r/(‖L‖ ‖r‖) − cos(L, r) L/‖L‖² )

The penalty pulls the loss vector towards the direction of r: a loss that is
ahead of its share may get a negative weight. Σ α is not normalized. Any
finite losses are accepted (a zero loss vector has no angle; its cosine term
is taken as 0 there).

Deviations from the authors' code (ruchtem/moo-mtl): COSMOS conditions the
network on a Dirichlet-sampled r at every step and min-max normalizes each
loss over a running window before the cosine; covjax is the scalarization for
one given r on the losses it is given (normalize them beforehand, or sample r
and pass it traced, to reproduce the rest).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from covjax._src import numerics
from covjax._src.base import Weighting, stateless
from covjax._src.scalarization import check_concrete_preference, check_positive, preference_vector


def cosmos(penalty: float | Array = 1.0, preference: Array | None = None) -> Weighting:
    """COSMOS (Ruchte & Grabocka, ICDM 2021): α = ∇_L (r·L − λ cos(L, r)).

    Args:
      penalty: λ > 0, the weight of the cosine penalty (the paper tunes it per
        data set); may be a traced array (a sweep is one ``jax.vmap``).
      preference: r, (K,) non-negative with a positive entry; default
        uniform 1/K (a point of the simplex, as the Dirichlet draws of COSMOS).

    Returns:
      A :class:`~covjax.Weighting` whose weights are the gradient of the
      scalarized objective with respect to the losses; they may be negative
      and are not normalized.

    Accepts any finite losses (the scalarization is defined for all of them).

    References:
      Ruchte & Grabocka, ICDM 2021, https://arxiv.org/abs/2103.13392;
      code: https://github.com/ruchtem/moo-mtl (methods/cosmos).
    """
    check_positive(penalty, "penalty", "cosmos")
    check_concrete_preference(preference, "cosmos")

    def weights_fn(losses: Array, gramian: Array | None) -> Array:
        del gramian
        k = losses.shape[0]
        r = preference_vector(preference, k, "cosmos") / (k if preference is None else 1.0)
        loss_norm = jnp.linalg.norm(losses)
        unit_r = r / jnp.linalg.norm(r)
        unit_losses = numerics.safe_divide(losses, loss_norm)
        cosine = jnp.dot(unit_losses, unit_r)
        # ∂cos/∂L = (u_r − cos · u_L) / ‖L‖; 0 at L = 0 (no angle there).
        cosine_gradient = numerics.safe_divide(unit_r - cosine * unit_losses, loss_norm)
        return r - penalty * cosine_gradient

    return stateless(weights_fn, name="cosmos", weights_sum="free", loss_scale="no")
