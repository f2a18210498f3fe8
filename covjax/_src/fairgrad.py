"""FairGrad: α-fair resource allocation among tasks (Ban & Ji, ICML 2024)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from covjax._src.base import GRAMIAN, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian, uniform_weights
from covjax._src.solvers import alpha_fair_weights

#: Squared Newton decrement below which FairGrad's solve counts as converged.
FAIR_CONVERGED = 1e-6

#: Largest weight (normalized Gramian: in units of rms‖g‖^(−2α/(α+1))) accepted without the ridge.
MAX_FAIR_WEIGHT = 1e6


class FairGradState(NamedTuple):
    """The last solution w on the normalized Gramian (K,) (warm start; 0 before the first)."""

    weights: Array


def fairgrad(
    alpha: float | Array = 1.0,
    max_iters: int = 50,
    ridge: float = 1e-6,
    tol: float = 1e-10,
) -> Weighting:
    """FairGrad, "Fair Resource Allocation in Multi-Task Learning" (Ban & Ji, ICML 2024).

    The update d = Σ_i w_i g_i maximizes the α-fair utility of the tasks'
    improvements u_i = ⟨g_i, d⟩ (Mo & Walrand's α-fairness), which the
    paper reduces to the K equations on the Gramian G (G_ij = ⟨g_i, g_j⟩)::

        (G w)_i = w_i^(−1/α),   w > 0,     i.e.   u_i = w_i^(−1/α).

    α = 1 is proportional fairness (Nash-MTL's equation (Gw)_i = 1/w_i),
    α → ∞ tends to max–min fairness (the worst improvement first); α = 0
    is the plain sum of improvements, maximized by the mean gradient:
    w_i = 1/K (the paper's §3, TorchJD's convention). The weights are not normalized
    (``weights_sum="free"``): scaling every gradient by c scales w by
    c^(−2α/(α+1)), and d by c^((1−α)/(1+α)). Scaling one loss (and its
    gradient) by c divides its weight by c at α = 1 (compensated, as
    Nash-MTL); at other α the weights respond otherwise.

    Solver: Newton's method on the strictly convex problem whose
    stationarity conditions are these equations (:func:`alpha_fair_weights`),
    on G divided by its mean diagonal s (the weights are then multiplied by
    s^(−α/(α+1)), exactly), warm-started from the previous step's solution
    when that is better than w_i = G_ii^(−α/(α+1)) (exact for orthogonal
    gradients). A handful of iterations are used.

    Args:
      alpha: the fairness exponent α ≥ 0 (default 1.0, the authors' and
        LibMTL's default; the paper tunes it per benchmark, e.g. 2.0 on
        QM9). May be traced (``jax.vmap`` over α); checked > 0 only when
        concrete.
      max_iters: Newton iteration cap.
      ridge: fallback regularization. The equations have no solution when a
        non-negative combination of the gradients vanishes and α ≥ 1 (e.g.
        two exactly opposing gradients); when the plain solve does not
        converge, or gives weights beyond 1e6 (normalized units), it is
        redone with G + ridge·mean(diag G)·I, whose weights stay bounded.
      tol: stop when the squared Newton decrement falls below this.

    Dead losses (zero gradient, see the shared Gramian utilities) get
    w_i = 0: no direction improves them, and their equation has no
    solution. All gradients zero: uniform weights.

    Deviations from the authors' code (OptMN-Lab/fairgrad,
    ``methods/weight_methods.py``) and LibMTL (``FairGrad.py``): both solve
    the same equations with ``scipy.optimize.least_squares`` (bounds w ≥ 0,
    from w = 1/K, stopping at its default tolerances); covjax solves them
    exactly in-graph. The authors' code then multiplies d by K ("to match
    the sum loss") and clips the shared gradient's norm to 1; LibMTL does
    neither, and neither does covjax (clip with
    ``optax.clip_by_global_norm`` if wanted, and multiply the learning rate
    by K to match the authors' step). TorchJD's ``FairGrad`` solves with
    ``least_squares`` as well, from w = 1/K.

    References:
      Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
      https://arxiv.org/abs/2402.15638; authors' code
      https://github.com/OptMN-Lab/fairgrad; Mo & Walrand, "Fair end-to-end
      window-based congestion control", IEEE/ACM Trans. Netw. 8 (2000),
      https://doi.org/10.1109/90.879343.
    """
    if not isinstance(alpha, jax.core.Tracer) and not np.all(np.asarray(alpha) >= 0):
        raise ValueError(f"covjax.fairgrad: alpha must be ≥ 0, got {alpha}")
    proportional = not isinstance(alpha, jax.core.Tracer) and bool(np.all(np.asarray(alpha) == 1))
    if max_iters < 1:
        raise ValueError(f"covjax.fairgrad: max_iters must be ≥ 1, got {max_iters}")
    if ridge <= 0:
        raise ValueError(f"covjax.fairgrad: ridge must be > 0, got {ridge}")

    def init_fn(losses: Array) -> FairGradState:
        return FairGradState(jnp.zeros_like(losses, dtype=jnp.float32))

    def update_fn(
        losses: Array, state: FairGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, FairGradState]:
        del count
        k = losses.shape[0]
        g = normalized_gramian(gramian)
        given = jnp.asarray(alpha, g.gramian.dtype)
        linear = given == 0
        a = jnp.where(linear, 1.0, given)  # α = 0 is solved below without the equations
        eye = jnp.eye(k, dtype=g.gramian.dtype)
        both = g.live[:, None] & g.live[None, :]
        # Dead losses are decoupled (identity rows): their weight is discarded below.
        system = jnp.where(both, g.gramian, eye)
        exponent = a / (a + 1.0)

        def solve(matrix: Array) -> tuple[Array, Array]:
            diagonal = jnp.maximum(jnp.diagonal(matrix), 1e-12)
            orthogonal = diagonal ** (-exponent)
            warm = state.weights.astype(matrix.dtype)
            warm_ok = jnp.all(warm > 0) & jnp.all(jnp.isfinite(warm))
            residual = lambda w: jnp.sum((matrix @ w - w ** (-1.0 / a)) ** 2)  # noqa: E731
            use_warm = warm_ok & (residual(jnp.where(warm_ok, warm, 1.0)) < residual(orthogonal))
            start = jnp.where(use_warm, warm, orthogonal)
            return alpha_fair_weights(matrix, a, start, max_iters, tol)

        weights, decrement_sq = solve(system)
        solved = (decrement_sq < FAIR_CONVERGED) & jnp.all(weights < MAX_FAIR_WEIGHT)
        weights = jax.lax.cond(solved, lambda: weights, lambda: solve(system + ridge * eye)[0])
        weights = jnp.where(g.live, weights, 0.0)
        unscale = jnp.where(g.scale > 0, g.scale, 1.0) ** (-exponent)
        ok = jnp.any(g.live) & jnp.all(jnp.isfinite(weights))
        new_state = FairGradState(jnp.where(ok, weights, state.weights).astype(jnp.float32))
        weights = jnp.where(ok & ~linear, weights * unscale, uniform_weights(k))
        return weights, new_state

    return make_weighting(
        init_fn,
        update_fn,
        name="fairgrad",
        requires={GRAMIAN},
        weights_sum="free",
        # A loss × c: (G w)_i = c·w_i^(−1/α) is solved by w_i/c only when c^(1/α) = c.
        loss_scale="compensated" if proportional else "no",
    )
