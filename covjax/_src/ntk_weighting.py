"""NTK-based loss weights for PINNs (Wang, Yu, Perdikaris, J. Comput. Phys. 2022).

"When and why PINNs fail to train: A neural tangent kernel perspective"
(https://arxiv.org/abs/2007.14527, https://doi.org/10.1016/j.jcp.2021.110768).
Each loss term i has a block K_i of the neural tangent kernel; the weights
equalise the blocks' traces (their average convergence rates)::

    λ̂_i = Σ_j tr K_j / tr K_i,        λ_i ← α λ_i + (1 − α) λ̂_i

(the paper sets λ = λ̂ every ``update_every`` steps, i.e. α = 0; jaxpi's
``ntk`` scheme uses α = 0.9 and normalizes by the mean instead of the sum).

**How covjax obtains tr K_i.** covjax's losses are scalars, so it takes the
NTK of each scalar loss: the 1×1 kernel ∇_θL_i · ∇_θL_i, i.e. the Gramian's
diagonal G_ii = ‖∇L_i‖² (:data:`~covjax.GRAMIAN`, computed by the same batched
backward pass as every Gramian scheme). The paper and jaxpi instead sum
(jaxpi: average) the per-point kernel diagonal ‖∇_θ r(x_p)‖² of the network's
outputs or residuals r over the training points x_p — a kernel of the model,
not of the loss, which the loss values never enter. The two differ:

* G_ii = ‖(2/N) Σ_p r_p ∇r_p‖² weighs each point's gradient by its residual,
  so it shrinks as the residuals are fitted, while the per-point trace does
  not;
* a loss multiplied by c multiplies G_ii by c², so covjax's λ̂_i is divided
  by c² (over-compensating the loss scale: ``loss_scale="no"``), while the
  per-point weights ignore the scale.

For the per-point form, compute each term's per-point trace in the train
step and weigh the losses with :func:`covjax.weighted_sum`; covjax's form
needs nothing beyond the Gramian that every Gramian scheme already gets.

A trace below eps32² × the total (traces are squared norms: the round-off
of the total's square root) is raised to it, so λ̂ ≤ 1/eps32² ≈ 7e13 (jaxpi
adds 1e-5 × the mean trace, capping λ̂ near 1e5); λ̂ = 1 when every trace is 0.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, Weighting
from covjax._src.lr_annealing import MIN_RATIO, annealed_weighting, balance_ratio, check_alpha

#: Traces are squared norms: the floor of the norm ratio, squared.
MIN_TRACE_RATIO = MIN_RATIO**2


def ntk_weighting(alpha: float | Array = 0.0, update_every: int = 1) -> Weighting:
    """NTK weights (Wang, Yu, Perdikaris, 2022): λ_i = Σ_j tr K_j / tr K_i with tr K_i = G_ii.

    Args:
      alpha: weight of the previous λ in a moving average (0: the paper's
        plain refresh; jaxpi uses 0.9); may be a traced array.
      update_every: refresh λ every this many accepted steps (1; the paper
        refreshes every few hundred to thousand steps).

    Returns:
      A :class:`~covjax.Weighting` with ``requires={covjax.GRAMIAN}``:
      positive, unnormalized weights from the Gramian's diagonal (see the
      module docstring for how this trace differs from the paper's per-point
      one).

    The loss values are not used: any finite losses are accepted.

    References:
      Wang, Yu & Perdikaris, "When and why PINNs fail to train: A neural
      tangent kernel perspective", J. Comput. Phys. 449, 2022,
      https://doi.org/10.1016/j.jcp.2021.110768,
      https://arxiv.org/abs/2007.14527; jaxpi:
      https://github.com/PredictiveIntelligenceLab/jaxpi (models.py).
    """
    check_alpha(alpha, "ntk_weighting")

    def estimate(gramian: Array) -> Array:
        traces = jnp.maximum(jnp.diag(gramian), 0.0)
        return balance_ratio(jnp.sum(traces), traces, MIN_TRACE_RATIO)

    return annealed_weighting(
        estimate,
        name="ntk_weighting",
        alpha=alpha,
        update_every=update_every,
        requires=frozenset({GRAMIAN}),
        loss_scale="no",
    )
