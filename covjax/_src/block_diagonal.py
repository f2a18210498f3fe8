"""The block-diagonal step: each private part pulled back once, the shared part once.

When every selected leaf is reached by one loss only (a task's own head,
per-task copies of a feature map z for MGDA-UB), one pull-back of Σ_i L_i
gives every per-loss gradient. The weighted backward pass of the step,
∇ Σ_i w_i L_i, need not pull back through the heads a second time: an
equation of the traced loss function whose outputs only loss i depends on
(a *private* equation) receives, under the cotangent w, exactly w_i times
what it receives under the all-ones cotangent. So the program is split in
two:

* the *shared* part: the equations that two or more losses depend on (the
  trunk), run once forward and pulled back once, seeded with the weighted
  cotangents of the values the private part reads from it;
* the *private* part: every other equation (the heads), run once forward and
  pulled back once, with ones, where each read of a shared value or of a leaf
  (a *use*) is a separate input, so that its cotangent c_u belongs to one
  loss.

Then the gradient of Σ_i w_i L_i w.r.t. a leaf is its shared part's
pull-back of Σ_u w_{loss(u)} c_u over the uses of shared values, plus
Σ_u w_{loss(u)} c_u over its own uses in the private part; and a selected
leaf's per-loss gradient is Σ_u c_u over its uses (all of one loss). Nothing
is pulled back twice.

Per-task copies of z stacked into ONE batched head that every loss reads at
its own index have no such split (the head is shared by every loss); they
are cut instead where each copy is added to z (:func:`cut_at_copies`): the
part after the cut is pulled back once with ones (copy k's cotangent is
∂L_k/∂z) and once with the weights for the heads' parameters only, and the
trunk once, seeded with Σ_k w_k ∂L_k/∂z.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.extend import core as jex_core

from covjax._src import program


class Use(NamedTuple):
    """One read of a shared value or a leaf by a private equation.

    Attributes:
      source: the variable read (a leaf's input variable or a shared one).
      loss: the loss the reading equation's outputs reach (None: none).
    """

    source: Any
    loss: int | None


class Split(NamedTuple):
    """The loss function's program split into its shared and private parts.

    Attributes:
      closed: the ClosedJaxpr (over the primal's leaves; the losses its first outputs).
      num_losses: K.
      shared: the shared equations, in program order.
      private: the private equations, in program order.
      uses: per private equation, per input position that reads a shared
        variable or a leaf: the index of its :class:`Use` in ``use_list``.
      use_list: every use.
    """

    closed: Any
    num_losses: int
    shared: list[Any]
    private: list[Any]
    uses: list[dict[int, int]]
    use_list: list[Use]


class Pass(NamedTuple):
    """One forward pass and one pull-back of Σ L_i under a :class:`Split`.

    Attributes:
      outputs: the program's outputs.
      summed: per leaf, its gradient of Σ_i L_i through the private part only
        (for a leaf that one loss reaches, that loss's gradient).
      weighted: ``weighted(cotangents)`` → per leaf, the gradient of
        Σ_i cotangents[i] · L_i (the VJP of the losses).
    """

    outputs: list[Any]
    summed: list[Array]
    weighted: Callable[[Sequence[Array]], list[Any]]


def _is_var(atom: Any) -> bool:
    return isinstance(atom, jex_core.Var)


def _differentiable(var: Any) -> bool:
    return jnp.issubdtype(var.aval.dtype, jnp.inexact)


#: Ops that only take a view of a parameter (a slice of a stacked kernel, ``W.T``...).
VIEW_PRIMITIVES = (
    *program.LAYOUT_PRIMITIVES,
    jax.lax.slice_p,
    jax.lax.squeeze_p,
    jax.lax.dynamic_slice_p,
)


def split(closed: Any, num_losses: int, selected: Sequence[bool]) -> Split | None:
    """``closed``'s split, or None where it does not apply.

    ``selected``: per leaf, whether its per-loss gradients are wanted. A
    private view of another leaf (head k's slice of a kernel stacked over the
    heads) is taken in the shared part, so that the private part's pull-back
    gives the view's cotangent, not one leaf-sized cotangent per head.

    It applies when each of the ``num_losses`` loss outputs is a distinct
    variable made by a private equation (a loss function under one nested
    ``jit`` is a single shared equation: no split), the program has no side
    effects, no private equation holds a ``jax.custom_vjp`` function (its
    backward rule need not be linear in the cotangent, e.g. gradient
    clipping, so it must see the weighted cotangent itself), and no shared
    equation reads a selected leaf: the plan finds a leaf that one loss
    reaches index by index (copy k stacked into one batched head that every
    loss reads at its own index), whose gradient is then not the sum over
    private uses; the plan's general block-diagonal path serves it.
    """
    jaxpr = closed.jaxpr
    losses = jaxpr.outvars[:num_losses]
    if closed.effects or len(set(losses)) != num_losses or not all(map(_is_var, losses)):
        return None
    # Backward: per variable, the bit mask of the losses that depend on it.
    reach: dict[Any, int] = {var: 1 << i for i, var in enumerate(losses)}
    equation_reach = []
    for eqn in reversed(jaxpr.eqns):
        mask = 0
        for var in eqn.outvars:
            mask |= reach.get(var, 0)
        equation_reach.append(mask)
        for var in eqn.invars:
            if _is_var(var):
                reach[var] = reach.get(var, 0) | mask
    equation_reach.reverse()
    shared, private, uses, use_list = [], [], [], []
    made_privately: set[Any] = set()
    constants = set(jaxpr.constvars)
    views = {var for var, keep in zip(jaxpr.invars, selected, strict=True) if not keep}
    selected_leaves = {var for var, keep in zip(jaxpr.invars, selected, strict=True) if keep}
    for eqn, mask in zip(jaxpr.eqns, equation_reach, strict=True):
        if mask.bit_count() >= 2:
            if any(_is_var(var) and var in selected_leaves for var in eqn.invars):
                # A selected leaf read where several losses meet (one index each of a batched
                # head over stacked copies): its gradient would not be its private uses' sum.
                return None
            shared.append(eqn)
            continue
        inputs = [var for var in eqn.invars if _is_var(var)]
        if eqn.primitive in VIEW_PRIMITIVES and inputs and all(v in views for v in inputs):
            shared.append(eqn)
            views.update(eqn.outvars)
            continue
        if _has_custom_vjp(eqn):
            return None
        loss = mask.bit_length() - 1 if mask else None
        positions = {}
        for position, var in enumerate(eqn.invars):
            if _is_var(var) and var not in made_privately and var not in constants:
                positions[position] = len(use_list)
                use_list.append(Use(var, loss))
        private.append(eqn)
        uses.append(positions)
        made_privately.update(eqn.outvars)
    if not all(var in made_privately for var in losses):
        return None
    return Split(closed, num_losses, shared, private, uses, use_list)


def _has_custom_vjp(eqn: Any) -> bool:
    """Whether ``eqn`` is, or nests, a ``jax.custom_vjp`` call."""
    if eqn.primitive.name.startswith("custom_vjp_call"):
        return True
    for value in eqn.params.values():
        for candidate in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(candidate, "jaxpr", candidate)  # a ClosedJaxpr's Jaxpr
            if isinstance(inner, jex_core.Jaxpr) and any(map(_has_custom_vjp, inner.eqns)):
                return True
    return False


def _bind(eqn: Any, invals: Sequence[Any]) -> list[Any]:
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
        outvals = eqn.primitive.bind(*invals, **bind_params)
    return list(outvals) if eqn.primitive.multiple_results else [outvals]


def _read(env: dict[Any, Any], atom: Any) -> Any:
    return atom.val if isinstance(atom, jex_core.Literal) else env[atom]


def _zero_cotangent(var: Any) -> Any:
    if _differentiable(var):
        return jnp.zeros(var.aval.shape, var.aval.dtype)
    return np.zeros(var.aval.shape, jax.dtypes.float0)


def run(plan: Split, leaves: Sequence[Array]) -> Pass:
    """The forward pass and the one pull-back of Σ L_i (see the module docstring)."""
    jaxpr, k = plan.closed.jaxpr, plan.num_losses
    constants = dict(zip(jaxpr.constvars, plan.closed.consts, strict=True))
    private_made = {var for eqn in plan.private for var in eqn.outvars}
    inputs = set(jaxpr.invars)
    # The shared values the private part and the outputs read, split by differentiability.
    read = [use.source for use in plan.use_list]
    read += [v for v in jaxpr.outvars if _is_var(v) and v not in private_made]
    read = [v for v in dict.fromkeys(read) if v not in inputs and v not in constants]
    wanted = [v for v in read if _differentiable(v)]
    others = [v for v in read if not _differentiable(v)]

    def shared_fn(flat_leaves: list[Array]) -> tuple[list[Any], list[Any]]:
        env = {**constants, **dict(zip(jaxpr.invars, flat_leaves, strict=True))}
        for eqn in plan.shared:
            values = _bind(eqn, [_read(env, var) for var in eqn.invars])
            env.update(zip(eqn.outvars, values, strict=True))
        return [env[v] for v in wanted], [env[v] for v in others]

    shared_values, shared_vjp, other_values = jax.vjp(shared_fn, list(leaves), has_aux=True)
    values = {
        **constants,
        **dict(zip(jaxpr.invars, leaves, strict=True)),
        **dict(zip(wanted, shared_values, strict=True)),
        **dict(zip(others, other_values, strict=True)),
    }
    differentiated = [u for u, use in enumerate(plan.use_list) if _differentiable(use.source)]
    fixed = {
        u: values[use.source]
        for u, use in enumerate(plan.use_list)
        if not _differentiable(use.source)
    }

    def private_fn(use_values: list[Array]) -> tuple[list[Array], list[Any]]:
        by_use = {**fixed, **dict(zip(differentiated, use_values, strict=True))}
        env = dict(constants)
        for eqn, positions in zip(plan.private, plan.uses, strict=True):
            invals = [
                by_use[positions[p]] if p in positions else _read(env, var)
                for p, var in enumerate(eqn.invars)
            ]
            env.update(zip(eqn.outvars, _bind(eqn, invals), strict=True))
        env = {**values, **env}
        outputs = [_read(env, var) for var in jaxpr.outvars]
        return outputs[:k], outputs[k:]

    initial = [values[plan.use_list[u].source] for u in differentiated]
    losses, private_vjp, rest = jax.vjp(private_fn, initial, has_aux=True)
    (per_use,) = private_vjp([jnp.ones_like(loss) for loss in losses])

    def accumulate(scales: Sequence[Array] | None) -> tuple[list[Any], list[Any]]:
        """Per leaf and per shared value, Σ_u scale_{loss(u)} · c_u (scales None: all 1)."""
        by_source: dict[Any, Array] = {}
        for u, cotangent in zip(differentiated, per_use, strict=True):
            use = plan.use_list[u]
            if use.loss is None:
                continue
            if scales is not None:
                cotangent = cotangent * scales[use.loss].astype(cotangent.dtype)
            previous = by_source.get(use.source)
            by_source[use.source] = cotangent if previous is None else previous + cotangent
        leaf_part = [by_source.get(var, _zero_cotangent(var)) for var in jaxpr.invars]
        shared_part = [by_source.get(var, _zero_cotangent(var)) for var in wanted]
        return leaf_part, shared_part

    summed = accumulate(None)[0]

    def weighted(cotangents: Sequence[Array]) -> list[Any]:
        leaf_part, shared_part = accumulate(cotangents)
        (through_shared,) = shared_vjp(shared_part)
        return [
            own if not _differentiable(var) else own + through
            for var, own, through in zip(jaxpr.invars, leaf_part, through_shared, strict=True)
        ]

    return Pass(list(losses) + list(rest), summed, weighted)


class CopyCut(NamedTuple):
    """The program cut where per-task copies of one value z are added to it.

    Attributes:
      closed: the ClosedJaxpr (over the primal's leaves; the losses its first outputs).
      num_outputs: how many of its outputs are losses (K scalars, or one (K,) array).
      z: the variable the copies are added to.
      additions: per equation position of a copy's ``z + p``, the copy's leaf.
      owners: per copy leaf, the one loss that reaches it.
    """

    closed: Any
    num_outputs: int
    z: Any
    additions: dict[int, int]
    owners: dict[int, int]


def cut_at_copies(
    closed: Any, num_outputs: int, copies: Sequence[int], owners: dict[int, int | None]
) -> CopyCut | None:
    """The cut for ``copies`` (leaf indices, each reached by one loss: ``owners``), or None.

    It applies when each copy p's only use is ``z + p`` with one same z, made
    by an equation of the program and read by nothing else (nor returned),
    nothing that depends on a copy holds a ``jax.custom_vjp`` function (the
    copies' cotangents must be linear in the losses'), and the program has
    no side effects. Then the losses are F(θ, z(θ), ...,
    z(θ)) with copy k's addition reading the k-th z: the weighted pull-back
    is F's (w.r.t. θ only: its heads' part for z is never formed) plus z's
    pull-back of Σ_k w_{owner(k)} ∂L/∂p_k, the per-copy gradients of the one
    pull-back of Σ L_i. A batched head over stacked copies, which every loss
    reads at its own index (no shared/private :func:`split`), is served this way.
    """
    jaxpr = closed.jaxpr
    if closed.effects or any(owners.get(leaf) is None for leaf in copies):
        return None
    copy_vars = {jaxpr.invars[leaf]: leaf for leaf in copies}
    additions: dict[int, int] = {}
    readers: dict[Any, list[int]] = {}
    z = None
    downstream = set(copy_vars)  # what depends on a copy
    for position, eqn in enumerate(jaxpr.eqns):
        for var in eqn.invars:
            if _is_var(var):
                readers.setdefault(var, []).append(position)
        if any(_is_var(var) and var in downstream for var in eqn.invars):
            if _has_custom_vjp(eqn):
                return None  # its backward rule need not be linear in the cotangent
            downstream.update(eqn.outvars)
        read = [var for var in eqn.invars if _is_var(var) and var in copy_vars]
        if not read:
            continue
        if eqn.primitive is not jax.lax.add_p or len(read) != 1 or len(eqn.invars) != 2:
            return None
        (copy,) = read
        other = eqn.invars[1 - eqn.invars.index(copy)]
        if z is None:
            z = other
        if other is not z or copy_vars[copy] in additions.values():
            return None
        additions[position] = copy_vars[copy]
    made = {var for eqn in jaxpr.eqns for var in eqn.outvars}
    if (
        z is None
        or len(additions) != len(copies)
        or not _is_var(z)
        or z not in made
        or any(var is z for var in jaxpr.outvars)
        or sorted(readers.get(z, [])) != sorted(additions)
        # every copy is read once, by its addition
        or any(len(readers.get(var, [])) != 1 for var in copy_vars)
    ):
        return None
    return CopyCut(closed, num_outputs, z, additions, {leaf: owners[leaf] for leaf in copies})


def _live(jaxpr: Any, roots: Sequence[Any], cut: dict[int, Any] | None = None) -> list[bool]:
    """Per equation, whether ``roots`` depend on it (``cut``: equation → input it does not read)."""
    needed = {var for var in roots if _is_var(var)}
    live = [False] * len(jaxpr.eqns)
    for position in reversed(range(len(jaxpr.eqns))):
        eqn = jaxpr.eqns[position]
        if not any(var in needed for var in eqn.outvars):
            continue
        live[position] = True
        skipped = (cut or {}).get(position)
        needed.update(var for var in eqn.invars if _is_var(var) and var is not skipped)
    return live


def run_cut(cut: CopyCut, leaves: Sequence[Array]) -> Pass:
    """The forward pass and the one pull-back of Σ L_i under a :class:`CopyCut`."""
    jaxpr = cut.closed.jaxpr
    constants = dict(zip(jaxpr.constvars, cut.closed.consts, strict=True))
    to_z = _live(jaxpr, [cut.z])
    from_z = _live(jaxpr, jaxpr.outvars, dict.fromkeys(cut.additions, cut.z))

    def evaluate(flat_leaves: list[Array], live: list[bool], z_value: Any) -> dict[Any, Any]:
        """The live equations; the copies' additions read ``z_value`` (not None) as z."""
        env = {**constants, **dict(zip(jaxpr.invars, flat_leaves, strict=True))}
        for position, (eqn, keep) in enumerate(zip(jaxpr.eqns, live, strict=True)):
            if not keep:
                continue
            reads_z = z_value is not None and position in cut.additions
            invals = [
                z_value if reads_z and var is cut.z else _read(env, var) for var in eqn.invars
            ]
            env.update(zip(eqn.outvars, _bind(eqn, invals), strict=True))
        return env

    def z_fn(flat_leaves: list[Array]) -> Array:
        return evaluate(flat_leaves, to_z, None)[cut.z]

    def heads_fn(flat_leaves: list[Array], z_value: Array) -> tuple[list[Array], list[Any]]:
        env = evaluate(flat_leaves, from_z, z_value)
        outputs = [_read(env, var) for var in jaxpr.outvars]
        return outputs[: cut.num_outputs], outputs[cut.num_outputs :]

    z_value, z_vjp = jax.vjp(z_fn, list(leaves))
    losses, heads_vjp, rest = jax.vjp(heads_fn, list(leaves), z_value, has_aux=True)
    summed, _ = heads_vjp([jnp.ones_like(loss) for loss in losses])

    def weighted(cotangents: Sequence[Array]) -> list[Any]:
        # F's pull-back w.r.t. θ (its part for z unused), then z's of Σ_k w_{owner(k)} ∂L/∂p_k.
        direct, _ = heads_vjp(list(cotangents))
        vector = jnp.concatenate([jnp.ravel(c) for c in cotangents])
        z_cotangent = sum(
            vector[owner].astype(summed[leaf].dtype) * summed[leaf]
            for leaf, owner in cut.owners.items()
        )
        (through_z,) = z_vjp(z_cotangent)
        return [
            own if not _differentiable(var) else own + through
            for var, own, through in zip(jaxpr.invars, direct, through_z, strict=True)
        ]

    return Pass(list(losses) + list(rest), summed, weighted)
