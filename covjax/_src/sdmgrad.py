"""SDMGrad: stochastic direction-oriented multi-objective gradient descent (Xiao et al., 2023)."""

from __future__ import annotations

import string
import textwrap
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from covjax._src.base import CROSS_GRAMIAN, Weighting, make_weighting
from covjax._src.gramian import uniform_weights
from covjax._src.solvers import sdmgrad_weights

#: The training step of the double-sampling schemes (SDMGrad, MoDo), shown in their
#: docstrings with the scheme filled in (the tests run it from there, as written).
THREE_BATCH_EXAMPLE = string.Template(
    """\
import jax
import jax.numpy as jnp
import optax

import covjax

def loss_fn(params, x, y):  # K = $k losses, one per output
    prediction = jnp.tanh(x @ params["trunk"]) @ params["heads"]
    return jnp.mean((prediction - y) ** 2, axis=0)

scheme = $scheme
optimizer = optax.sgd(0.05)

@jax.jit
def train_step(params, opt_state, state, batch, batch_a, batch_b):
    # Per-loss gradients on two independent batches -> cross-Gramian.
    _, jacobian_a, _ = covjax.per_loss_jacobian(loss_fn, params, *batch_a)
    _, jacobian_b, _ = covjax.per_loss_jacobian(loss_fn, params, *batch_b)
    cross = covjax.cross_gramian(jacobian_a, jacobian_b)
    # The weights multiply a third batch's losses.
    losses, pull_back = jax.vjp(lambda p: loss_fn(p, *batch), params)
    weights, state = scheme.update(losses, state, gramian=cross)
    (grads,) = pull_back(weights.astype(losses.dtype))
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, state, losses

key = jax.random.PRNGKey(0)
target = jax.random.normal(key, (4, $k))

def sample(key):
    x = jax.random.normal(key, (32, 4))
    return x, jnp.tanh(x @ target)

params = {"trunk": 0.5 * jax.random.normal(key, (4, 8)), "heads": jnp.zeros((8, $k))}
opt_state, state = optimizer.init(params), scheme.init(jnp.ones($k))
for step in range(100):
    keys = jax.random.split(jax.random.fold_in(key, step), 3)
    batches = [sample(k) for k in keys]
    params, opt_state, state, losses = train_step(params, opt_state, state, *batches)
"""
)


def with_three_batch_example(function: Callable, scheme: str, k: int) -> Callable:
    """Put :data:`THREE_BATCH_EXAMPLE` for ``scheme`` in place of ``{example}`` in the docstring."""
    code = THREE_BATCH_EXAMPLE.substitute(scheme=scheme, k=k)
    lines = []
    for line in function.__doc__.splitlines(keepends=True):
        if line.strip() == "{example}":
            line = textwrap.indent(code, line[: len(line) - len(line.lstrip())])
        lines.append(line)
    function.__doc__ = "".join(lines)
    return function


class SDMGradState(NamedTuple):
    """The simplex weights w (K,) of the inner problem, carried from step to step."""

    simplex: Array


def check_non_negative(value: float | Array, what: str, name: str) -> None:
    if not isinstance(value, jax.core.Tracer) and not np.all(np.asarray(value) >= 0):
        raise ValueError(f"covjax.{name}: {what} must be ≥ 0, got {value}")


def sdmgrad(
    lamda: float | Array = 0.3,
    num_steps: int = 20,
    learning_rate: float | Array = 5.0,
    momentum: float | Array = 0.5,
    pref_vector: Array | None = None,
) -> Weighting:
    """SDMGrad, "Direction-oriented Multi-objective Learning" (Xiao, Ban & Ji, NeurIPS 2023).

    MGDA's common descent direction, pulled towards the mean gradient
    g0 = (1/K) Σ g_i: the simplex weights solve::

        w* = argmin_{w ∈ Δ_K} ½ ‖g_w + λ g0‖²,   g_w = Σ_i w_i g_i,

    and the update is d = (g_w + λ g0)/(1 + λ), i.e. loss weights
    (w_i + λ/K)/(1 + λ), ≥ 0 and summing to 1. λ = 0 is MGDA; λ → ∞ the
    mean. The gradient of the inner objective in w is G w + λ G 1/K.

    **Stochastic gradients.** The method's point is that with noisy
    gradients the inner gradient must be estimated without bias: G w is
    estimated by C w with the cross-Gramian C = J(ξ) J(ξ')ᵀ of two
    independent batches ξ, ξ' (the product of two independent unbiased
    estimates), not by the Gramian of one batch (whose diagonal is biased
    upwards by the gradients' variance). The weights are then applied to
    the losses of a third batch ζ. So ``gramian=`` takes C
    (:func:`covjax.cross_gramian`, not symmetric; ``requires`` holds
    :data:`covjax.CROSS_GRAMIAN`); passing the ordinary Gramian of one
    batch gives the deterministic method. :func:`covjax.value_and_grad`
    takes ξ and ξ' as the two halves of the step's batch (an even size),
    whose whole losses the weights then multiply: the halves are part of
    the weighted batch, not independent of it as ζ is in the paper (the
    example below feeds three independent batches instead).

    Each step runs ``num_steps`` projected heavy-ball steps on w from the
    previous step's w (kept in the state, uniform at first)::

        b ← μ b + (Ĉ w + λ Ĉ 1/K)   (b = the gradient at the first step),
        w ← Π_Δ(w − lr · b),

    with Ĉ = C / (mean_i √max(C_ii, 0))², Π_Δ the Euclidean projection onto
    the simplex (exact, sort-based), as in the authors' code and LibMTL.

    Example (a training step fed by three independent batches)::

        {example}

    Args:
      lamda: λ ≥ 0, the pull towards the mean gradient (default 0.3,
        LibMTL's default; spelled as in the authors' code, ``lambda`` being
        a Python keyword). May be traced (``jax.vmap`` over λ).
      num_steps: inner projected-gradient steps per training step (20, as
        the authors' ``niter`` and LibMTL's ``SDMGrad_niter``).
      learning_rate: inner step size (5, as their code), may be traced.
      momentum: inner heavy-ball momentum (0.5, as their code), may be traced.
      pref_vector: optional (K,) direction weights p (Σ p = 1) replacing the
        mean g0 by g_p = Σ p_i g_i (TorchJD's ``pref_vector``); default 1/K.

    Deviations: TorchJD's ``SDMGradWeighting`` defaults to an inner step
    size of 10 (covjax: 5, the authors' and LibMTL's). The authors' code
    adds 1e-8 to the normalizing scale (mean √C_ii)²; covjax divides by
    the scale itself (guarded at 0), so the weights do not depend on the
    gradients' overall scale. The
    authors clip the shared gradient's norm to 1 (LibMTL does not); use
    ``optax.clip_by_global_norm`` for that. The paper's Algorithm 1 uses
    plain projected SGD steps; the momentum is the code's. A zero
    cross-Gramian leaves w where it is (the inner gradient is 0).

    References:
      Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple
      and Provable Stochastic Algorithms", NeurIPS 2023,
      https://arxiv.org/abs/2305.18409; authors' code
      https://github.com/OptMN-Lab/sdmgrad; LibMTL's ``SDMGrad``,
      https://github.com/median-research-group/LibMTL; Duchi et al.,
      "Efficient projections onto the l1-ball", ICML 2008,
      https://doi.org/10.1145/1390156.1390191.
    """
    check_non_negative(lamda, "lamda", "sdmgrad")
    check_non_negative(learning_rate, "learning_rate", "sdmgrad")
    check_non_negative(momentum, "momentum", "sdmgrad")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"covjax.sdmgrad: num_steps must be an int ≥ 1, got {num_steps!r}")

    def init_fn(losses: Array) -> SDMGradState:
        if pref_vector is not None and jnp.shape(pref_vector) != losses.shape:
            raise ValueError(
                f"covjax.sdmgrad: pref_vector has shape {jnp.shape(pref_vector)}, "
                f"expected {losses.shape}."
            )
        return SDMGradState(uniform_weights(losses.shape[0]))

    def update_fn(
        losses: Array, state: SDMGradState, count: Array, gramian: Array | None
    ) -> tuple[Array, SDMGradState]:
        del count
        k = losses.shape[0]
        dtype = gramian.dtype
        lam = jnp.asarray(lamda, dtype)
        preference = (
            uniform_weights(k) if pref_vector is None else jnp.asarray(pref_vector)
        ).astype(dtype)
        simplex = sdmgrad_weights(
            gramian,
            state.simplex.astype(dtype),
            preference,
            lam,
            jnp.asarray(learning_rate, dtype),
            jnp.asarray(momentum, dtype),
            num_steps,
        )
        weights = (simplex + lam * preference) / (1.0 + lam)
        return weights, SDMGradState(simplex.astype(state.simplex.dtype))

    return make_weighting(
        init_fn,
        update_fn,
        name="sdmgrad",
        requires={CROSS_GRAMIAN},
        weights_sum="1",
        loss_scale="no",
    )


with_three_batch_example(sdmgrad, "covjax.sdmgrad()", 3)
