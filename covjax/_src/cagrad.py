"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian, uniform_weights
from covjax._src.solvers import cagrad_dual, dual_cone_projections


class CAGradState(NamedTuple):
    """CAGrad's warm start.

    Attributes:
      dual: (K,) the simplex weights w* of the last dual solution.
      passive: (K,) bool, the support of w* (the active set to start from).
    """

    dual: Array
    passive: Array


def cagrad(c: float = 0.4, rescale: bool = True, max_iters: int = 30) -> Weighting:
    """Conflict-Averse Gradient descent (Liu, Liu, Jin, Stone, Liu, NeurIPS 2021).

    With g0 = (1/K) Σ g_i, find d maximising the worst improvement
    min_i ⟨g_i, d⟩ within the ball ‖d − g0‖ ≤ c‖g0‖. Its dual over the simplex::

        w* = argmin_{w ∈ Δ}  ⟨g_w, g0⟩ + c ‖g0‖ ‖g_w‖,    g_w = Σ w_i g_i

    gives d = g0 + (c ‖g0‖ / ‖g_w*‖) g_w*, i.e. weights
    1/K + (c ‖g0‖/‖g_w*‖) w*. In Gramian terms ⟨g_w, g0⟩ = wᵀa with a = G1/K,
    and ‖g_w‖² = wᵀGw.

    Solver (exact, in-graph): with r = c‖g0‖, the KKT conditions say that
    v = (r/‖g_w‖) w solves the non-negative QP
    min_{v ≥ 0} ½vᵀGv + (a − ν1)ᵀv for the multiplier ν of Σw = 1, with
    vᵀGv = r². φ(ν) = v(ν)ᵀGv(ν) is convex and increasing, so ν is found by
    Newton steps from the right (monotone), each step jumping to the exact
    root on the current active face when that is closer; every QP is solved
    exactly by Lawson–Hanson, warm-started from the previous active set.
    Then w* = v/Σv and the weights are 1/K + r v/√φ.

    Degenerate dual (0 in the hull of the gradients, e.g. c ≥ 1 with
    conflicting gradients): the dual optimum is g_w* = 0 with value 0, so
    the formula above is undefined, and the problem's answers are the
    points of the ball with min_i ⟨g_i, d⟩ = 0. covjax returns the one
    closest to g0, the projection of g0 onto the dual cone
    {d : ⟨g_i, d⟩ ≥ 0 ∀i} (it lies in the ball whenever the optimum is 0),
    solved by :func:`dual_cone_projections`. When 0 is inside the hull that
    is d = 0 (TorchJD's answer); when g0 itself conflicts with no gradient
    it is g0. This projection also replaces the formula whenever it has a
    strictly better worst improvement within the ball (float32 round-off
    near the degenerate case).

    Args:
      c: radius of the ball relative to ‖g0‖ (default 0.4, the authors'
        value in their multi-task experiments). May be a traced value (e.g.
        ``jax.vmap`` over c); it is checked to be ≥ 0 only when concrete.
      rescale: divide d by 1 + c² as the authors' code (``rescale=1``, their
        default) and LibMTL do; ``False`` gives the paper's d exactly.
      max_iters: cap on the Newton steps in ν (a handful are used).

    Degenerate cases: dead losses (zero gradient) are left out of the worst
    case (w_i = 0: their improvement is 0 for every d); g0 = 0 or c = 0
    (a zero radius) gives d = g0 (weights 1/K, rescaled).

    References:
      Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
      Multi-task Learning", NeurIPS 2021, https://arxiv.org/abs/2110.14048;
      authors' code https://github.com/Cranial-XIX/CAGrad.
    """
    if not isinstance(c, jax.core.Tracer) and c < 0:
        raise ValueError(f"covjax.cagrad: c must be ≥ 0, got {c}")
    if max_iters < 1:
        raise ValueError(f"covjax.cagrad: max_iters must be ≥ 1, got {max_iters}")

    def init_fn(losses: Array) -> CAGradState:
        k = losses.shape[0]
        return CAGradState(uniform_weights(k), jnp.zeros((k,), bool))

    def update_fn(
        losses: Array, state: CAGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, CAGradState]:
        del count
        k = losses.shape[0]
        g = normalized_gramian(gramian)
        mean_weights = uniform_weights(k)
        linear = g.gramian @ mean_weights
        radius = c * jnp.sqrt(jnp.maximum(mean_weights @ linear, 0.0))
        # A dead loss's improvement is 0 whatever d: it is left out of the worst case.
        v, passive = cagrad_dual(g.gramian, linear, radius, g.live, state.passive, max_iters)
        phi = v @ g.gramian @ v
        total = jnp.sum(v)
        eps = jnp.finfo(g.gramian.dtype).eps
        largest = jnp.max(jnp.diagonal(g.gramian))
        # ‖g_w*‖² (w* = v/Σv) at the round-off of a K-term quadratic form: g_w* = 0.
        resolved = phi > 2.0 * k * eps * largest * total**2
        ok = (radius > 0) & resolved & (total > 0)
        formula = mean_weights + jnp.where(ok, radius * v / jnp.sqrt(jnp.where(ok, phi, 1.0)), 0.0)
        # The projection of g0 onto the dual cone of the live gradients.
        projected = (
            mean_weights
            + dual_cone_projections(
                g.gramian, mean_weights[None, :], (linear < 0)[None, :] & g.live[None, :]
            )[0][0]
        )

        def worst(w: Array) -> Array:
            return jnp.min(jnp.where(g.live, g.gramian @ w, jnp.inf))

        offset = projected - mean_weights
        in_ball = offset @ g.gramian @ offset <= radius**2 * (1.0 + 1e-3) + k * eps * largest
        strictly_better = worst(projected) > worst(formula) + 2.0 * k * eps * largest
        use_projection = ((radius > 0) & ~ok) | (in_ball & strictly_better)
        weights = jnp.where(use_projection, projected, formula)
        if rescale:
            weights = weights / (1.0 + c**2)
        dual = jnp.where(ok, v / jnp.where(ok, total, 1.0), mean_weights)
        ok = jnp.all(jnp.isfinite(weights))
        new_state = CAGradState(jnp.where(ok, dual, mean_weights), passive & ok)
        return jnp.where(ok, weights, mean_weights / (1.0 + c**2 if rescale else 1.0)), new_state

    return make_weighting(
        init_fn,
        update_fn,
        name="cagrad",
        requires={GRAMIAN},
        weights_sum="free",
        loss_scale="no",
        # Non-conflicting for c ≥ 1 (the ball then reaches the dual cone); d = 0 only
        # when g0 lies in the polar of the dual cone, −cone(g_i): Jᵀ(1/K + u) = 0, u ≥ 0.
        promises=AggregatorPromises(
            non_conflicting=not isinstance(c, jax.core.Tracer) and c >= 1.0,
            permutation_invariant=True,
            strongly_stationary=True,
        ),
    )
