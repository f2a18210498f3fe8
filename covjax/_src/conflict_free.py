"""ConFIG and M-ConFIG: conflict-free updates (Liu et al., 2024)."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import optax
from jax import Array

from covjax._src.base import DIRECTION, GRAMIAN, JACOBIAN, Weighting, make_weighting
from covjax._src.gramian import normalized_gramian
from covjax._src.per_loss_state import check_columns, checked_num_params, per_loss_zeros

#: Added to Adam's √ŝ in M-ConFIG, as the authors' ``PseudoMomentumOperator``.
ADAM_EPSILON = 1e-8


class MConFIGState(NamedTuple):
    """M-ConFIG's moments over the selected parameters.

    Attributes:
      momenta: (K, P) m_i, each loss's EMA of its gradient (β1).
      pseudo_momentum: (P,) the ConFIG direction times (1 − β1^t) at the last step.
      second_moment: (P,) s, the EMA (β2) of the squared pseudo-gradient.
    """

    momenta: Array
    pseudo_momentum: Array
    second_moment: Array


def config_weights(gramian: Array, preference: Array) -> Array:
    """ConFIG's d = Σ_i w_i g_i from the Gramian: (K,) w.

    With unit gradients û_i = g_i/‖g_i‖ (rows of Û) and C = Û Ûᵀ, the target
    x = pinv(Û) t = Ûᵀ C⁺ t = Σ_i β_i g_i with β = C⁺t / ‖g‖, and
    d = (Σ_j ⟨g_j, x⟩ / ‖x‖²) x, so w = β (1ᵀGβ) / (βᵀGβ). Dead gradients
    (norm below ``DEAD_GRADIENT`` of the largest) count as zero rows.
    """
    g = normalized_gramian(gramian)
    norms = jnp.sqrt(jnp.where(g.live, jnp.diagonal(g.gramian), 1.0))
    inverse_norms = jnp.where(g.live, 1.0 / norms, 0.0)
    cosines = g.gramian * jnp.outer(inverse_norms, inverse_norms)
    # C's eigenvalues lie in [0, K]: C⁺ with eigenvalues below K·eps·λ_max dropped (numpy's rule).
    targets = jnp.linalg.pinv(cosines, hermitian=True) @ preference
    beta = targets * inverse_norms
    projected = g.gramian @ beta
    squared_norm = beta @ projected
    ok = squared_norm > 0
    return jnp.where(ok, beta * jnp.sum(projected) / jnp.where(ok, squared_norm, 1.0), 0.0)


def conflict_free(
    momentum: bool = False,
    preference: Array | None = None,
    *,
    num_params: int | None = None,
    beta1: float | Array = 0.9,
    beta2: float | Array = 0.999,
) -> Weighting:
    """ConFIG and M-ConFIG, "ConFIG: Towards Conflict-free Training of Physics
    Informed Neural Networks" (Liu, Chu, Thuerey, 2024; ICLR 2025).

    ConFIG (Eq. 2 of the paper; ``momentum=False``): with the unit gradients
    û_i = g_i/‖g_i‖ as the rows of Û and a preference t (ones by default)::

        x = pinv(Û) t,    u = x/‖x‖,    d = (Σ_j ⟨g_j, u⟩) u

    so that d makes the same angle with every gradient (⟨û_i, u⟩ ∝ t_i > 0:
    conflict-free when Û has full row rank) and its length is the sum of the
    gradients' projections. x is a combination of the gradients, so ConFIG is
    a Gramian scheme here (:func:`config_weights`): w = β (1ᵀGβ)/(βᵀGβ) with
    β = C⁺t/‖g‖, C = ÛÛᵀ the cosine matrix. The weights are not normalized
    (their sum is free) and compensate a loss's scale (û_i does not change).

    M-ConFIG (``momentum=True``, the authors' ``PseudoMomentumOperator``, fed
    every loss's gradient at every step): per-loss momenta
    m_i ← β1 m_i + (1 − β1) g_i, bias-corrected m̂_i = m_i/(1 − β1^t); the
    ConFIG direction d̃ of the m̂_i; then an Adam-like second moment of the
    pseudo-gradient that a momentum optimiser would need to produce d̃::

        m̃_t = (1 − β1^t) d̃,   p = (m̃_t − β1 m̃_{t−1})/(1 − β1),
        s ← β2 s + (1 − β2) p²,   d = d̃ / (√(s/(1 − β2^t)) + 1e-8)

    Use it with plain SGD, as the authors advise (d already carries Adam's
    moments). This form needs the Jacobian (``requires`` holds
    :data:`covjax.JACOBIAN` and :data:`covjax.DIRECTION`) and the number of
    selected parameters P (``num_params``) to size its (K, P) state; the
    reported weights are the ConFIG weights of the momenta.

    Any finite losses and gradients are used; a step with a non-finite one is
    rejected (weights, state unchanged; zero direction). Dead gradients are
    zero rows of Û (the authors' ``nan_to_num``); with every gradient zero the
    weights (and the direction) are 0.

    Args:
      momentum: M-ConFIG instead of ConFIG.
      preference: optional (K,) t, the target cosines up to scale (the
        authors' weight model; default ones, ``EqualWeight``).
      num_params: P, the number of selected parameters (M-ConFIG only).
      beta1, beta2: M-ConFIG's moment decays (the authors' 0.9 and 0.999).
        All numeric arguments may be traced (``jax.vmap`` over them).

    Deviations: the authors solve x by least squares on Û (TorchJD by its
    pseudo-inverse); covjax forms the same minimum-norm x from the K×K cosine
    matrix's pseudo-inverse (equal for any Û; in float32 a cosine matrix
    whose condition number nears 1/eps32 loses the directions below that).
    M-ConFIG here updates every momentum at every step; the paper's variant
    that back-propagates one loss per step (alternating) is not offered.

    Cost: ConFIG: the Gramian + one K×K symmetric eigendecomposition;
    M-ConFIG: the Jacobian, a K×K×P Gramian of the momenta, O(K·P) moments.

    References:
      Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics
      Informed Neural Networks", 2024, https://arxiv.org/abs/2408.11104;
      authors' code, https://github.com/tum-pbs/ConFIG; TorchJD ``ConFIG``,
      https://github.com/TorchJD/torchjd.
    """

    def check_preference(losses: Array) -> Array:
        if preference is None:
            return jnp.ones_like(losses)
        if jnp.shape(preference) != losses.shape:
            raise ValueError(
                f"covjax.conflict_free: preference has shape {jnp.shape(preference)}, "
                f"expected {losses.shape}."
            )
        return jnp.asarray(preference, losses.dtype)

    if not momentum:

        def stateless_init(losses: Array) -> optax.EmptyState:
            check_preference(losses)
            return optax.EmptyState()

        def config_update(
            losses: Array, state: optax.EmptyState, count: Array, gramian: Array | None
        ) -> tuple[Array, optax.EmptyState]:
            del count
            return config_weights(gramian, check_preference(losses)), state

        return make_weighting(
            stateless_init,
            config_update,
            name="conflict_free",
            requires={GRAMIAN},
            weights_sum="free",
            loss_scale="compensated",
        )

    columns = checked_num_params("conflict_free", num_params)

    def init_fn(losses: Array) -> MConFIGState:
        check_preference(losses)
        momenta = per_loss_zeros(losses, columns)
        return MConFIGState(momenta, jnp.zeros_like(momenta[0]), jnp.zeros_like(momenta[0]))

    def update_fn(
        losses: Array, state: MConFIGState, count: Array, jacobian: Array | None
    ) -> tuple[Array, MConFIGState, Array]:
        check_columns("conflict_free", jacobian, columns)
        step = (count + 1).astype(jacobian.dtype)
        momenta = beta1 * state.momenta + (1.0 - beta1) * jacobian
        corrected = momenta / (1.0 - beta1**step)
        weights = config_weights(corrected @ corrected.T, check_preference(losses))
        config = weights @ corrected
        pseudo_momentum = config * (1.0 - beta1**step)
        pseudo_gradient = (pseudo_momentum - beta1 * state.pseudo_momentum) / (1.0 - beta1)
        second_moment = beta2 * state.second_moment + (1.0 - beta2) * pseudo_gradient**2
        corrected_second = second_moment / (1.0 - beta2**step)
        direction = config / (jnp.sqrt(corrected_second) + ADAM_EPSILON)
        return weights, MConFIGState(momenta, pseudo_momentum, second_moment), direction

    return make_weighting(
        init_fn,
        update_fn,
        name="conflict_free",
        requires={JACOBIAN, DIRECTION},
        weights_sum="free",
        loss_scale="compensated",
    )
