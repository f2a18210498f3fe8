"""Which losses can share a batched backward pass, and which should not.

The batched backward pass of :mod:`covjax._src.gradients` pulls every one-hot
cotangent e_i through the whole differentiated part of the network: under
``jax.vmap`` a zero cotangent still costs a full backward pass. Often a loss
reaches only part of the network: monodepth's coarse-scale losses never touch
the full-resolution decoder layers, a task's loss never touches the other
tasks' heads. Pulling each *group* of losses back on its own — the
transpose of one linearisation restricted to the group's outputs, which JAX
prunes to the layers they reach — then costs Σ_g |g| · cost(g) instead of
K · cost(everything) (:func:`covjax.gradients.gramian_of_function`).

How groups are found: the loss function is traced to a jaxpr once; each
loss's *cone* is the set of differentiated matrix products and convolutions
(equations with sub-programs count as one unit) that it depends on, and losses
with the same cone form a group. The cost of a cone is the multiply-adds of
its products. Grouping is used only when there are 2 to ``max_groups`` groups
and the estimate saves at least ``min_saving`` of the batched pass (each
group adds a transposed program to compile). The result is the same Gramian,
up to rounding.

The same traced program also gives the plan's block-diagonal facts
(:func:`loss_reach`: which losses depend on each differentiated leaf) and
the copies of one value (:func:`find_copies`: leaves added, each once, to the
same intermediate, as ``nnx.Module.perturb`` does per task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.extend import core as jex_core

#: At most this many groups (each adds a transposed program to compile).
MAX_GROUPS = 16
#: Group only when the estimated backward cost falls by at least this fraction.
MIN_SAVING = 0.25


def _sub_jaxprs(eqn: Any) -> list[Any]:
    """The jaxprs nested in an equation's parameters (jit, scan, cond, custom rules...)."""
    found = []
    for value in eqn.params.values():
        candidates = value if isinstance(value, tuple | list) else (value,)
        for candidate in candidates:
            if isinstance(candidate, jex_core.ClosedJaxpr):
                found.append(candidate.jaxpr)
            elif isinstance(candidate, jex_core.Jaxpr):
                found.append(candidate)
    return found


def equation_cost(eqn: Any) -> float:
    """Multiply-adds of a matrix product or convolution (nested ones summed), else 0."""
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = eqn.invars[0].aval.shape
        contracted = math.prod(lhs_shape[a] for a in lhs_contracting)
        return float(math.prod(eqn.outvars[0].aval.shape) * contracted)
    if name == "conv_general_dilated":
        kernel_shape = eqn.invars[1].aval.shape
        rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
        per_output = kernel_shape[rhs_spec[1]] * math.prod(kernel_shape[d] for d in rhs_spec[2:])
        return float(math.prod(eqn.outvars[0].aval.shape) * per_output)
    return float(sum(equation_cost(inner) for sub in _sub_jaxprs(eqn) for inner in sub.eqns))


def find_groups(
    closed: Any,
    differentiated: Sequence[bool],
    num_losses: int,
    *,
    max_groups: int = MAX_GROUPS,
    min_saving: float = MIN_SAVING,
) -> list[tuple[int, ...]] | None:
    """Groups of loss indices to pull back separately, or None when one batch is as good.

    Args:
      closed: ClosedJaxpr of the loss function; its invars are the primal's
        leaves and its first ``num_losses`` outvars the K scalar losses.
      differentiated: per invar, whether its gradient is wanted (the backward
        pass runs through everything that depends on these).
      num_losses: K.
      max_groups, min_saving: see the module docstring.
    """
    jaxpr = closed.jaxpr
    if num_losses < 2 or len(jaxpr.outvars) < num_losses:
        return None
    # Forward: which equations the backward pass will run through.
    tainted_vars = {var for var, keep in zip(jaxpr.invars, differentiated, strict=True) if keep}
    producer: dict[Any, int] = {}
    costly: dict[int, float] = {}
    for index, eqn in enumerate(jaxpr.eqns):
        for var in eqn.outvars:
            producer[var] = index
        if any(isinstance(var, jex_core.Var) and var in tainted_vars for var in eqn.invars):
            tainted_vars.update(eqn.outvars)
            cost = equation_cost(eqn)
            if cost > 0:
                costly[index] = cost

    def cone(var: Any) -> frozenset[int]:
        seen: set[int] = set()
        stack = [var]
        while stack:
            current = stack.pop()
            if not isinstance(current, jex_core.Var) or current not in producer:
                continue
            index = producer[current]
            if index in seen:
                continue
            seen.add(index)
            stack.extend(jaxpr.eqns[index].invars)
        return frozenset(index for index in seen if index in costly)

    cones = [cone(var) for var in jaxpr.outvars[:num_losses]]
    groups: dict[frozenset[int], list[int]] = {}
    for loss, loss_cone in enumerate(cones):
        groups.setdefault(loss_cone, []).append(loss)
    if not 2 <= len(groups) <= max_groups:
        return None
    union = frozenset().union(*cones)
    batched = num_losses * sum(costly[index] for index in union)
    grouped = sum(
        len(members) * sum(costly[index] for index in group_cone)
        for group_cone, members in groups.items()
    )
    if batched <= 0 or grouped > (1.0 - min_saving) * batched:
        return None
    return [tuple(members) for members in groups.values()]


def trace(fn: Any, primal: Any) -> tuple[Any, int]:
    """``(ClosedJaxpr of fn over primal's leaves, number of loss leaves)``; fn returns losses."""
    leaves, treedef = jax.tree.flatten(primal)

    def flat_fn(*flat_leaves: Any) -> list[Any]:
        return jax.tree.leaves(fn(jax.tree.unflatten(treedef, flat_leaves)))

    closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*leaves)
    return closed, len(out_shape)


def loss_reach(closed: Any, num_losses: int) -> list[int]:
    """Per invar of ``closed``, the bit mask of the losses that depend on it.

    Bit i is set when the i-th of the first ``num_losses`` outvars depends on
    the invar. A walk backwards over the equations; one with sub-programs
    counts as one unit (each of its outputs depends on all its inputs).
    """
    jaxpr = closed.jaxpr
    reached: dict[Any, int] = {}
    for index, var in enumerate(jaxpr.outvars[:num_losses]):
        if isinstance(var, jex_core.Var):
            reached[var] = reached.get(var, 0) | (1 << index)
    for eqn in reversed(jaxpr.eqns):
        bits = 0
        for var in eqn.outvars:
            bits |= reached.get(var, 0)
        if not bits:
            continue
        for var in eqn.invars:
            if isinstance(var, jex_core.Var):
                reached[var] = reached.get(var, 0) | bits
    return [reached.get(var, 0) for var in jaxpr.invars]


def find_copies(closed: Any, selected: Sequence[bool]) -> list[tuple[int, ...]]:
    """Sets of ≥ 2 selected invars that are added, each once, to one same value.

    ``z + p_a`` and ``z + p_b`` (``nnx.Module.perturb`` of one feature map
    under two names, or zero offsets of a plain pytree): ``p_a`` and ``p_b``
    are copies of z, so the gradient w.r.t. z is the sum of theirs.
    An invar qualifies only when that addition (same shape and dtype as z, no
    broadcasting) is its only use.
    """
    jaxpr = closed.jaxpr
    candidates = {var: i for i, var in enumerate(jaxpr.invars) if selected[i]}
    uses: dict[int, int] = dict.fromkeys(candidates.values(), 0)
    added_to: dict[int, Any] = {}

    def count(var: Any) -> None:
        if isinstance(var, jex_core.Var) and var in candidates:
            uses[candidates[var]] += 1

    for eqn in jaxpr.eqns:
        for var in eqn.invars:
            count(var)
        if eqn.primitive is jax.lax.add_p and len(eqn.invars) == 2:
            for mine, other in (eqn.invars, eqn.invars[::-1]):
                if (
                    isinstance(mine, jex_core.Var)
                    and mine in candidates
                    and isinstance(other, jex_core.Var)
                    and other not in candidates
                    and other.aval.shape == mine.aval.shape == eqn.outvars[0].aval.shape
                    and other.aval.dtype == mine.aval.dtype
                ):
                    added_to[candidates[mine]] = other
    for var in jaxpr.outvars:
        count(var)
    by_value: dict[Any, list[int]] = {}
    for leaf, value in added_to.items():
        if uses[leaf] == 1:
            by_value.setdefault(value, []).append(leaf)
    return [tuple(sorted(leaves)) for leaves in by_value.values() if len(leaves) >= 2]
