"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liang, Sun, Wu, Liu; NeurIPS 2023).

FAMO balances the *rate* at which the losses decrease, at O(K) cost per step
and with one backward pass (https://arxiv.org/abs/2306.03792). It keeps logits
ξ ∈ R^K, z = softmax(ξ),
and descends the z-weighted log losses, normalized::

    D_i = max(L_i − m_i, 0) + ε                  (m: known loss minima, default 0)
    c   = Σ_j z_j / D_j
    α_i = z_i / (c D_i)                          (Σ α = 1)

so that Σ α_i ∇L_i = ∇ Σ_i z_i log D_i / c. After the network moves, the
observed decrease of each log loss::

    δ_i = log D_i(t−1) − log D_i(t)

is the gradient signal for ξ: ξ takes one step of its own optimiser along
∇_ξ = J_softmax(ξ)ᵀ δ = z ⊙ (δ − ⟨z, δ⟩) (tasks that improved fast lose weight).
The reference uses Adam (lr 0.025) with L2 weight decay γ on ξ (PyTorch's
``weight_decay``), which is the default here (γ = 1e-3; the reference class's
own default is γ = 0.01).

Like the paper's practical algorithm, δ compares consecutive steps' losses
(the reference re-evaluates the same batch after the update; with losses only,
we use the next step's losses, which is what one backward per step allows).
So the update at step t first updates ξ from (L(t−1), L(t)) — nothing at
t = 0 — and then returns the weights for L(t) from the new ξ. The state keeps
the previous losses.

Requires L_i > m_i (positive losses for the default m = 0): a step with a
loss at or below its minimum is rejected like a non-finite one (a loss at its
minimum would take all of the weight).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from covjax._src.base import Weighting, make_weighting


class FamoState(NamedTuple):
    """FAMO's state.

    Attributes:
      logits: (K,) float32, ξ (z = softmax(ξ)).
      optimizer_state: the optax state of the optimiser of ξ.
      previous_losses: (K,) float32, the losses of the last accepted step.
    """

    logits: Array
    optimizer_state: optax.OptState
    previous_losses: Array


def famo(
    learning_rate: float | Array = 0.025,
    weight_decay: float | Array = 1e-3,
    min_losses: float | Array = 0.0,
    epsilon: float = 1e-8,
    optimizer: optax.GradientTransformation | None = None,
) -> Weighting:
    """FAMO (Liu et al., NeurIPS 2023): weights z_i/(c·(L_i − m_i + ε)), Σ α = 1.

    Args:
      learning_rate: Adam learning rate of the logits ξ (reference 0.025).
      weight_decay: L2 decay γ added to ξ's gradient before Adam (PyTorch
        ``Adam(weight_decay=γ)``, as in the reference).
      min_losses: m, a scalar or (K,) lower bound of each loss (0 by default).
      epsilon: ε of D = L − m + ε.
      optimizer: replaces ``add_decayed_weights(weight_decay) → adam(learning_rate)``.

    All numeric arguments may be traced arrays (one ``jax.vmap`` per sweep).

    Losses must exceed their minima m (be positive by default): a step with a
    loss L_i ≤ m_i (or a non-finite one) is rejected — state unchanged,
    previous weights returned (uniform before the first accepted step), the
    step reported as not accepted.

    Returns:
      A :class:`~covjax.Weighting` with positive weights that sum to 1, which
      compensate a loss's scale when ``min_losses`` is 0.

    References:
      Liu, Liang, Gong, Chen, Stone & Liu, "FAMO: Fast Adaptive Multitask
      Optimization", NeurIPS 2023, https://arxiv.org/abs/2306.03792; authors'
      code https://github.com/Cranial-XIX/FAMO.
    """
    if isinstance(epsilon, int | float) and not epsilon > 0:
        raise ValueError(f"covjax.famo: epsilon must be positive, got {epsilon}")
    if optimizer is None:
        optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

    def log_gap(losses: Array) -> Array:
        return jnp.log(jnp.maximum(losses - min_losses, 0.0) + epsilon)

    def init_fn(losses: Array) -> FamoState:
        logits = jnp.zeros(losses.shape, jnp.float32)
        return FamoState(logits, optimizer.init(logits), jnp.zeros(losses.shape, jnp.float32))

    def update_fn(
        losses: Array, state: FamoState, count: Array, gramian: Array | None
    ) -> tuple[Array, FamoState]:
        del gramian
        log_d = log_gap(losses)
        # ξ step from the decrease of the log losses since the previous step.
        z = jax.nn.softmax(state.logits)
        decrease = log_gap(state.previous_losses) - log_d
        gradient = z * (decrease - jnp.sum(z * decrease))
        updates, optimizer_state = optimizer.update(gradient, state.optimizer_state, state.logits)
        stepped = optax.apply_updates(state.logits, updates).astype(jnp.float32)
        first = count == 0
        logits = jnp.where(first, state.logits, stepped)
        optimizer_state = jax.tree.map(
            lambda new, old: jnp.where(first, old, new), optimizer_state, state.optimizer_state
        )
        # α_i = z_i/(c D_i) = softmax(ξ − log D)_i: the log-space form cannot overflow.
        weights = jax.nn.softmax(logits - log_d)
        return weights, FamoState(logits, optimizer_state, losses.astype(jnp.float32))

    return make_weighting(
        init_fn,
        update_fn,
        name="famo",
        positive_losses=True,
        loss_minimum=min_losses,
        weights_sum="1",
        # D = L − m scales with L only when m = 0 (a traced m is not known to be 0).
        loss_scale="compensated" if _is_zero(min_losses) else "no",
    )


def _is_zero(value: float | Array) -> bool:
    if isinstance(value, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(value) == 0))
