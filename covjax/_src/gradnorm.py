"""GradNorm: learned weights that equalise the per-loss gradient norms at a shared layer.

Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

With learned weights w_i, the gradient norms at a chosen shared layer W and
the relative inverse training rates::

    G_i = ‖∇_W w_i L_i‖ = w_i ‖∇_W L_i‖ = w_i sqrt(Gram_ii)
    r̃_i = L_i / L_i(0),   r_i = r̃_i / mean(r̃)
    C_i = mean(G) · r_i^α                           (a constant target)
    L_grad = Σ_i |G_i − C_i|   (paper)   or   mean_i |G_i − C_i|   (reference)

The network is trained on Σ w_i L_i with the current w; then w takes one step
of its own optimiser (Adam, lr 0.025) on ∂L_grad/∂w_i = sign(G_i − C_i)‖∇_W L_i‖
(closed form: ‖∇_W L_i‖ and C are constants), is clamped at 0 and renormalized
to Σw = K (paper) or Σw = 1 (reference). L(0) are the first step's losses.

The "shared layer" W is chosen with ``wrt`` in :func:`covjax.value_and_grad`
(e.g. ``wrt="decoder/iconv4/kernel"``, the reference's choice for monodepth);
only the diagonal of the Gramian is used.

Defaults follow the CoV-Weighting authors' released code ("reference"):
w(0) = 1/K, mean over losses, Σw = 1. ``form="paper"`` gives Chen et al.'s
w(0) = 1, sum, Σw = K. Losses must be positive (a step with a loss ≤ 0 is
rejected), so L(0) > 0; if the clamp zeroes every weight they restart uniform
(the reference would divide by zero).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp
import optax
from jax import Array

from covjax._src import numerics
from covjax._src.base import GRAMIAN, AggregatorPromises, Weighting, make_weighting

Form = Literal["reference", "paper"]


class GradNormState(NamedTuple):
    """GradNorm's learned weights and what their update needs.

    Attributes:
      weights: (K,) the learned w used by the next step.
      initial_losses: (K,) L(0), the losses of the first accepted step.
      optimizer_state: the state of w's own optimiser (Adam by default).
    """

    weights: Array
    initial_losses: Array
    optimizer_state: optax.OptState


def gradnorm_weight_gradient(
    weights: Array,
    losses: Array,
    initial_losses: Array,
    gradient_norms: Array,
    alpha: float | Array,
    form: Form,
) -> Array:
    """∂L_grad/∂w with ‖∇_W L_i‖ and the targets C held constant (see module docstring)."""
    scaled_norms = weights * gradient_norms
    ratios = numerics.safe_divide(losses, initial_losses, fallback=1.0)
    inverse_rates = numerics.safe_divide(ratios, jnp.mean(ratios), fallback=1.0)
    targets = jnp.mean(scaled_norms) * inverse_rates**alpha
    gradient = jnp.sign(scaled_norms - targets) * gradient_norms
    return gradient / weights.shape[0] if form == "reference" else gradient


def gradnorm(
    alpha: float = 1.5,
    form: Form = "reference",
    learning_rate: float = 0.025,
    optimizer: optax.GradientTransformation | None = None,
) -> Weighting:
    """GradNorm (Chen et al., ICML 2018) as a covjax weighting.

    Args:
      alpha: the restoring force α (γ in the CoV-Weighting paper); 1.5.
      form: ``"reference"`` (w(0) = 1/K, mean of ``|G − C|``, Σw = 1; the
        CoV-Weighting authors' code) or ``"paper"`` (w(0) = 1, sum, Σw = K).
      learning_rate: learning rate of w's Adam (0.025 in the reference).
      optimizer: any optax optimiser for w instead of ``adam(learning_rate)``.

    Returns:
      A :class:`~covjax.Weighting` with ``requires={covjax.GRAMIAN}``: its update
      needs the Gramian of the per-loss gradients at the shared layer.

    Losses must be positive: a step with a loss ≤ 0 (or a non-finite one) is
    rejected — state unchanged, previous weights returned (uniform before the
    first accepted step), the step reported as not accepted. (The training
    rates L_i/L_i(0) are ratios of losses.)

    References:
      Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient
      Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
      ICML 2018, https://arxiv.org/abs/1711.02257.
    """
    if form not in ("reference", "paper"):
        raise ValueError(f"covjax.gradnorm: form must be 'reference' or 'paper', got {form!r}.")
    if isinstance(alpha, int | float) and alpha < 0:
        raise ValueError(f"covjax.gradnorm: alpha must be ≥ 0, got {alpha}.")
    weight_optimizer = optimizer if optimizer is not None else optax.adam(learning_rate)

    def total_weight(k: int) -> float:
        return float(k) if form == "paper" else 1.0

    def init_fn(losses: Array) -> GradNormState:
        k = losses.shape[0]
        weights = jnp.full((k,), total_weight(k) / k, jnp.float32)
        return GradNormState(weights, jnp.ones_like(losses), weight_optimizer.init(weights))

    def update_fn(
        losses: Array, state: GradNormState, count: Array, gramian: Array | None
    ) -> tuple[Array, GradNormState]:
        assert gramian is not None  # make_weighting checks it
        k = losses.shape[0]
        initial_losses = jnp.where(count == 0, losses, state.initial_losses)
        gradient_norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian), 0.0))
        gradient = gradnorm_weight_gradient(
            state.weights, losses, initial_losses, gradient_norms, alpha, form
        )
        updates, optimizer_state = weight_optimizer.update(
            gradient, state.optimizer_state, state.weights
        )
        stepped = jnp.maximum(optax.apply_updates(state.weights, updates), 0.0)
        new_weights = total_weight(k) * numerics.normalize(stepped)
        # This step's loss uses the current weights; the stepped ones are next.
        return state.weights, GradNormState(new_weights, initial_losses, optimizer_state)

    return make_weighting(
        init_fn,
        update_fn,
        name="gradnorm",
        requires={GRAMIAN},
        positive_losses=True,
        weights_sum="K" if form == "paper" else "1",
        loss_scale="learned",
        # A step's weights were learned at earlier steps: d is linear in this step's
        # gradients. The clamp at 0 can zero a weight, so d = 0 proves nothing.
        promises=AggregatorPromises(permutation_invariant=True, linear_under_scaling=True),
    )
