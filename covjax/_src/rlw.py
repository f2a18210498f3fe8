"""Random Loss Weighting, RLW (Lin, Ye, Xu, Shi, Zhang, Kwok, TMLR 2022).

"Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
Learning" (https://arxiv.org/abs/2111.10603). Fresh random weights on the simplex every step::

    normal (default):  α = softmax(z),  z ~ N(0, I_K)
    uniform:           α = softmax(z),  z ~ U(0, 1)^K
    dirichlet:         α ~ Dir(1, ..., 1)   (uniform on the simplex)

The PRNG key lives in the state (split once per accepted step), so runs are
deterministic, resumable from a checkpoint, and a skipped (non-finite) step
does not consume randomness. Draw t uses ``jax.random.split(key)[1]`` of the
key after t splits of ``jax.random.PRNGKey(seed)``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from covjax._src.base import Weighting, make_weighting

RlwDistribution = Literal["normal", "uniform", "dirichlet"]


class RandomState(NamedTuple):
    """The PRNG key of a randomised scheme.

    A raw ``uint32[2]`` key (``jax.random.PRNGKey``) rather than a typed key
    array, so that it can be selected with ``jnp.where`` and checkpointed as a
    plain array.
    """

    key: Array


def rlw(seed: int | Array = 0, distribution: RlwDistribution = "normal") -> Weighting:
    """Random loss weighting: new simplex weights every step (Σ α = 1, α > 0).

    Args:
      seed: integer seed of the state's PRNG key.
      distribution: ``"normal"`` (softmax of N(0, I), LibMTL's default),
        ``"uniform"`` (softmax of U(0, 1)) or ``"dirichlet"`` (Dir(1)).

    Losses may be any finite value; a step with a non-finite loss is rejected —
    state unchanged, previous weights returned, the step reported as not accepted.

    References:
      Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
      Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022,
      https://arxiv.org/abs/2111.10603.
    """
    if distribution not in ("normal", "uniform", "dirichlet"):
        raise ValueError(
            "covjax.rlw: distribution must be 'normal', 'uniform' or 'dirichlet', got "
            f"{distribution!r}"
        )

    def init_fn(losses: Array) -> RandomState:
        del losses
        return RandomState(jax.random.PRNGKey(seed))

    def update_fn(
        losses: Array, state: RandomState, count: Array, gramian: Array | None
    ) -> tuple[Array, RandomState]:
        del count, gramian
        key, draw_key = jax.random.split(state.key)
        shape = losses.shape
        if distribution == "normal":
            weights = jax.nn.softmax(jax.random.normal(draw_key, shape, jnp.float32))
        elif distribution == "uniform":
            weights = jax.nn.softmax(jax.random.uniform(draw_key, shape, jnp.float32))
        else:
            weights = jax.random.dirichlet(draw_key, jnp.ones(shape, jnp.float32))
        return weights.astype(losses.dtype), RandomState(key)

    return make_weighting(init_fn, update_fn, name="rlw", weights_sum="1", loss_scale="unchanged")
