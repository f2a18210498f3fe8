"""``covjax.apply_if_accepted``: an optimiser that leaves the model alone on a rejected step.

A covjax step whose losses (or Gramian) are not usable — NaN, ±Inf, or a
value the scheme cannot take — is *rejected*: the weighting state stays as it
was and ``out.accepted`` is False (:class:`covjax.WeightedLosses`). The
gradients of such a step are usually non-finite too, and applying them makes
the parameters and the optimiser's moments NaN for good. Wrapping the
optimiser makes skipping the step the default::

    optimizer = nnx.Optimizer(model, covjax.apply_if_accepted(optax.adam(1e-2)), wrt=nnx.Param)
    ...
    out, grads = covjax.value_and_grad(loss_fn, scheme)(model, weighting_state, x, y)
    optimizer.update(model, grads, accepted=out.accepted)

On a rejected step the wrapped optimiser returns updates of −0.0 and the inner
state it was given, so ``p + u`` (``optax.apply_updates``, which
``nnx.Optimizer.update`` calls) is ``p`` bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import Array


def apply_if_accepted(
    inner: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so that a step with ``accepted=False`` changes nothing.

    The wrapped ``update(updates, state, params=None, *, accepted, **extra_args)``
    computes, with ``accepted`` the step's ``out.accepted``::

        accepted:      (u, s') = inner.update(updates, s, params, **extra_args)
        not accepted:  (u, s') = (−0.0 everywhere, s)

    selected with ``jax.lax.cond``, so the kept state is the very same bits
    (PRNG keys and integer counters included) and the inner transformation
    never sees the rejected gradients. The updates of a rejected step are
    −0.0, not +0.0: −0.0 is the exact identity of floating-point addition
    (``p + (−0.0)`` is ``p`` for every ``p``, while ``(−0.0) + (+0.0)`` is
    +0.0), so ``optax.apply_updates(params, u)`` returns ``params`` bit for bit.
    (Hardware that flushes subnormal floats to zero, as XLA on CPU does,
    flushes a subnormal parameter in any update; XLA never produces one.)

    The state is exactly ``inner``'s state (``init`` is ``inner.init``): no
    counter is added, so a checkpoint of the optimiser state is the same with
    and without the wrapper, and a rejected step leaves it bit-identical.
    ``nnx.Optimizer`` keeps its own ``step`` counter, outside the optax state,
    which counts ``update`` calls, skipped or not. To count skipped steps, sum
    ``~out.accepted`` in the train loop (the experiments log it as
    ``skipped_steps``).

    Compared with ``optax.apply_if_finite(inner, max_consecutive_errors)``:
    that wrapper looks only at the gradients, so it cannot see a step that
    covjax rejected with finite gradients (a non-finite Gramian, a loss a
    scheme cannot use), it accepts non-finite updates again after
    ``max_consecutive_errors`` of them, its state wraps the inner state with
    three counters that change on a skipped step, and it returns +0.0
    updates. The two compose: ``apply_if_accepted(optax.apply_if_finite(tx,
    n))`` also skips non-finite gradients of finite losses.

    Args:
      inner: the optimiser to protect, any ``optax.GradientTransformation``
        (extra keyword arguments of the update are passed on to it if it
        takes them, e.g. ``value`` for ``optax.contrib.reduce_on_plateau``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs the
      keyword argument ``accepted``: a boolean scalar (traced or not).

    Example::

        import optax
        import covjax

        tx = covjax.apply_if_accepted(optax.adam(1e-3))
        opt_state = tx.init(params)

        @jax.jit
        def train_step(params, opt_state, weighting_state, batch):
            out, grads = covjax.value_and_grad(loss_fn, scheme)(params, weighting_state, batch)
            updates, opt_state = tx.update(grads, opt_state, params, accepted=out.accepted)
            return optax.apply_updates(params, updates), opt_state, out.state

    With Flax NNX, ``nnx.Optimizer(model, covjax.apply_if_accepted(tx),
    wrt=nnx.Param)`` and ``optimizer.update(model, grads,
    accepted=out.accepted)``.

    References:
      optax's wrappers, ``optax.apply_if_finite``:
      https://optax.readthedocs.io/en/latest/api/optimizer_wrappers.html
    """
    inner_with_extra_args = optax.with_extra_args_support(inner)

    def update(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        *,
        accepted: Array | bool | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        accepted = _check_accepted(accepted)

        def apply() -> tuple[optax.Updates, optax.OptState]:
            return inner_with_extra_args.update(updates, state, params, **extra_args)

        applied_updates, applied_state = jax.eval_shape(apply)
        _check_state_keeps_its_types(state, applied_state)

        def skip() -> tuple[optax.Updates, optax.OptState]:
            return jax.tree.map(_additive_identity, applied_updates), state

        return jax.lax.cond(accepted, apply, skip)

    return optax.GradientTransformationExtraArgs(init=inner.init, update=update)


def _check_accepted(accepted: Any) -> Array:
    """``accepted`` as a boolean scalar, or a clear error naming what is wrong."""
    if accepted is None:
        raise TypeError(
            "covjax.apply_if_accepted: update needs accepted=..., the step's out.accepted "
            "(e.g. optimizer.update(model, grads, accepted=out.accepted), or "
            "tx.update(grads, opt_state, params, accepted=out.accepted))."
        )
    accepted = jnp.asarray(accepted)
    if accepted.shape != () or accepted.dtype != jnp.bool_:
        raise TypeError(
            "covjax.apply_if_accepted: accepted must be a boolean scalar (out.accepted), got "
            f"{accepted.dtype}{list(accepted.shape)}."
        )
    return accepted


def _check_state_keeps_its_types(old: optax.OptState, new: Any) -> None:
    """The kept state must be interchangeable with the updated one (same leaves, shapes, dtypes)."""
    old_structure, new_structure = jax.tree.structure(old), jax.tree.structure(new)
    if old_structure != new_structure:
        raise TypeError(
            "covjax.apply_if_accepted: the inner optimiser's update returned a state of another "
            f"structure than it was given ({new_structure} vs {old_structure}); such an optimiser "
            "cannot skip a step."
        )
    for (path, old_leaf), new_leaf in zip(
        jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new), strict=True
    ):
        old_type = jax.typeof(old_leaf)
        if (old_type.shape, old_type.dtype) != (new_leaf.shape, new_leaf.dtype):
            raise TypeError(
                "covjax.apply_if_accepted: the inner optimiser's update changes "
                f"state{jax.tree_util.keystr(path)} from {old_type.dtype}{list(old_type.shape)} to "
                f"{new_leaf.dtype}{list(new_leaf.shape)}; initialise it with the dtypes its "
                "update returns."
            )


def _additive_identity(leaf: jax.ShapeDtypeStruct) -> Array:
    """−0.0 of ``leaf``'s shape and dtype: ``x + (−0.0)`` is ``x`` bit for bit, ±0.0 included."""
    if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
        return jnp.full(leaf.shape, complex(-0.0, -0.0), leaf.dtype)
    if jnp.issubdtype(leaf.dtype, jnp.inexact):
        return jnp.full(leaf.shape, -0.0, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)
