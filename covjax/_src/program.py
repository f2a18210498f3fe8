"""What the plan reads from the traced loss function: one walk over its jaxpr.

The loss function is traced to a jaxpr once (:func:`covjax._src.gradients.prepare`)
and :func:`walk` goes over its equations once, collecting every fact the plan needs:

* per variable, the bit masks of the selected leaves and of the *products*
  (differentiated matrix products and convolutions; an equation with
  sub-programs counts as one) it depends on. At the K losses these give each
  loss's reach — a leaf that one loss reaches is block-diagonal — and its
  *cone*, the products its backward pass runs through. Where a value is a
  stack of per-index parts (K per-task copies of z stacked for one batched
  head) its leaf masks are also kept index by index along that axis
  (:class:`Indexed`, :func:`index_masks`), through the ops that provably
  keep index i reading index i, so that a loss indexing entry k reaches
  copy k only; any other op merges them (conservative: a dependency is
  never dropped);
* per selected leaf, its uses, directly or through a transpose, reshape or
  dtype cast, inside the nested ``jit`` calls that receive it too (the tapped
  re-evaluation of :mod:`covjax._src.factorized` inlines them). One use as an
  operand of a matrix product makes a factorisable kernel; one use as
  ``z + p`` makes ``p`` a copy of z (``nnx.Module.perturb``, once per task).

Groups of losses. Under ``jax.vmap`` a zero cotangent still costs a full
backward pass, yet a loss often reaches only part of the network (monodepth's
coarse scales never touch the full-resolution decoder, a task's loss never
touches the other heads). Pulling each *group* of losses (same cone) back on
its own — the transpose of one linearisation restricted to the group's
outputs, which JAX prunes to the layers they reach — costs Σ_g |g| · cost(g)
instead of K · cost(everything), a cone costing its products' multiply-adds.
Groups are used only when there are 2 to ``max_groups`` of them and the
estimate saves at least ``min_saving`` (each group adds a transposed program
to compile). The Gramian is the same, up to rounding.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
from jax.extend import core as jex_core

#: At most this many groups (each adds a transposed program to compile).
MAX_GROUPS = 16
#: Group only when the estimated backward cost falls by at least this fraction.
MIN_SAVING = 0.25

_JIT_PRIMITIVE_NAMES = ("jit", "pjit")
#: Ops that only re-lay a parameter out (``W.T``, a dtype cast, a reshape): its
#: Gramian block is unchanged, so the product they feed can still be factorised.
LAYOUT_PRIMITIVES = (jax.lax.transpose_p, jax.lax.convert_element_type_p, jax.lax.reshape_p)


def jit_body(eqn: Any) -> Any | None:
    """The ClosedJaxpr of a nested ``jit`` equation, else None."""
    if eqn.primitive.name in _JIT_PRIMITIVE_NAMES:
        body = eqn.params.get("jaxpr")
        if isinstance(body, jex_core.ClosedJaxpr):
            return body
    return None


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


class Use(NamedTuple):
    """One use of a selected leaf (or a re-laid-out view of it).

    Attributes:
      eqn: the equation that reads it; None when the program (or a nested
        ``jit`` that receives it) returns it.
      operand: its position among ``eqn``'s inputs.
      added_to: for ``z + p`` with ``p`` the leaf itself (no re-layout), z of
        the same shape and dtype (no broadcasting) and not a selected leaf: z;
        else None.
      relaid: whether it reads a re-laid-out view (transpose, reshape, cast).
    """

    eqn: Any
    operand: int
    added_to: Any = None
    relaid: bool = False


class TracedProgram(NamedTuple):
    """The facts :func:`walk` collected (see the module docstring).

    Attributes:
      loss_leaves: per loss (the program's first outputs), the bit mask of the
        selected leaves it depends on.
      loss_products: per loss, the bit mask of the products it depends on.
      products: per product, its multiply-adds and the bit mask of the selected
        leaves it depends on.
      uses: per selected leaf, its uses.
    """

    loss_leaves: list[int]
    loss_products: list[int]
    products: list[tuple[float, int]]
    uses: dict[int, list[Use]]

    def reach(self, leaf: int) -> int:
        """The bit mask of the losses that depend on ``leaf`` (bit i: loss i)."""
        return sum(1 << i for i, leaves in enumerate(self.loss_leaves) if leaves >> leaf & 1)

    def marks(self) -> dict[int, Any]:
        """Selected leaves whose only use adds them to a value z (``z + p``): leaf → z's variable.

        ``nnx.Module.perturb(name, z)`` marks a feature map this way (as does a
        zero leaf of a plain pytree added to it); z is a variable of the
        traced program's top level.
        """
        return {
            leaf: uses[0].added_to
            for leaf, uses in self.uses.items()
            if len(uses) == 1 and uses[0].added_to is not None
        }

    def copies(self) -> list[tuple[int, ...]]:
        """Sets of ≥ 2 selected leaves whose only use adds each to one same value.

        ``z + p_a`` and ``z + p_b`` (``nnx.Module.perturb`` of one feature map
        under two names, or zero offsets of a plain pytree): ``p_a`` and
        ``p_b`` are copies of z, so the gradient w.r.t. z is the sum of theirs.
        """
        by_value: dict[Any, list[int]] = {}
        for leaf, value in self.marks().items():
            by_value.setdefault(value, []).append(leaf)
        return [tuple(sorted(leaves)) for leaves in by_value.values() if len(leaves) >= 2]

    def groups(
        self,
        differentiated: Sequence[bool],
        *,
        max_groups: int = MAX_GROUPS,
        min_saving: float = MIN_SAVING,
    ) -> list[tuple[int, ...]] | None:
        """Groups of loss indices to pull back separately, or None when one batch is as good.

        ``differentiated``: per leaf, whether its gradient is wanted (the
        backward pass runs through every product that depends on these).
        """
        num_losses = len(self.loss_leaves)
        if num_losses < 2:
            return None
        wanted = sum(1 << leaf for leaf, keep in enumerate(differentiated) if keep)
        live = sum(1 << p for p, (_, leaves) in enumerate(self.products) if leaves & wanted)

        def cost(cone: int) -> float:
            return sum(c for p, (c, _) in enumerate(self.products) if cone >> p & 1)

        groups: dict[int, list[int]] = {}
        for loss, products in enumerate(self.loss_products):
            groups.setdefault(products & live, []).append(loss)
        if not 2 <= len(groups) <= max_groups:
            return None
        batched = num_losses * cost(functools.reduce(operator.or_, groups))
        grouped = sum(len(members) * cost(cone) for cone, members in groups.items())
        if batched <= 0 or grouped > (1.0 - min_saving) * batched:
            return None
        return [tuple(members) for members in groups.values()]


class Indexed(NamedTuple):
    """A value's leaf masks index by index along one of its axes.

    A stack (or concatenation) of per-index parts — K per-task copies of z
    stacked for one batched head — depends on leaf set ``masks[i]`` at index
    i; its whole-variable mask is their union. Indexing one entry out of it
    then depends on that entry's leaves only.
    """

    axis: int
    masks: tuple[int, ...]


#: A tracked axis longer than this is merged to its union (its masks are kept per index).
MAX_INDICES = 4096

#: Ops computed position by position (operands of the output's shape, or scalars).
_ELEMENTWISE = frozenset(
    (
        jax.lax.abs_p,
        jax.lax.add_p,
        jax.lax.and_p,
        jax.lax.atan2_p,
        jax.lax.clamp_p,
        jax.lax.convert_element_type_p,
        jax.lax.copy_p,
        jax.lax.cos_p,
        jax.lax.div_p,
        jax.lax.eq_p,
        jax.lax.erf_p,
        jax.lax.exp2_p,
        jax.lax.exp_p,
        jax.lax.expm1_p,
        jax.lax.ge_p,
        jax.lax.gt_p,
        jax.lax.integer_pow_p,
        jax.lax.is_finite_p,
        jax.lax.le_p,
        jax.lax.log1p_p,
        jax.lax.log_p,
        jax.lax.logistic_p,
        jax.lax.lt_p,
        jax.lax.max_p,
        jax.lax.min_p,
        jax.lax.mul_p,
        jax.lax.ne_p,
        jax.lax.neg_p,
        jax.lax.not_p,
        jax.lax.or_p,
        jax.lax.pow_p,
        jax.lax.reduce_precision_p,
        jax.lax.rem_p,
        jax.lax.rsqrt_p,
        jax.lax.select_n_p,
        jax.lax.sign_p,
        jax.lax.sin_p,
        jax.lax.sqrt_p,
        jax.lax.square_p,
        jax.lax.sub_p,
        jax.lax.tan_p,
        jax.lax.tanh_p,
    )
)
#: Reductions over their ``axes``.
_REDUCTIONS = frozenset(
    (
        jax.lax.argmax_p,
        jax.lax.argmin_p,
        jax.lax.reduce_and_p,
        jax.lax.reduce_max_p,
        jax.lax.reduce_min_p,
        jax.lax.reduce_or_p,
        jax.lax.reduce_prod_p,
        jax.lax.reduce_sum_p,
    )
)
#: Ops that make an indexed value out of untracked parts.
_STACKING = (jax.lax.stack_p, jax.lax.concatenate_p)

#: Per output of an equation: its per-index masks, or its whole mask.
Narrowed = int | Indexed
_Whole = Callable[[Any], int]


def index_masks(eqn: Any, whole: _Whole, indexed: dict[Any, Indexed]) -> list[Narrowed] | None:
    """Per output of ``eqn``, what it depends on index by index (see :class:`Indexed`).

    ``whole(atom)``: an input's whole-variable mask; ``indexed``: the inputs
    tracked index by index. None where no rule applies: each output then
    depends on the union of the inputs, as any op may (nested ``jit``,
    ``scan``, ``cond``, ``custom_vjp``, gathers...). A rule may only narrow
    what an output depends on where the op's semantics guarantee it: one
    that under-reports a dependency would make the plan's block-diagonal
    gradients wrong.
    """
    tracked = {
        position: indexed[var]
        for position, var in enumerate(eqn.invars)
        if isinstance(var, jex_core.Var) and var in indexed
    }
    if not tracked and eqn.primitive not in _STACKING:
        return None
    rule = _nested_jit if jit_body(eqn) is not None else _INDEX_RULES.get(eqn.primitive)
    if rule is None and (eqn.primitive in _ELEMENTWISE or eqn.primitive.name == "stop_gradient"):
        rule = _elementwise
    if rule is None and eqn.primitive in _REDUCTIONS:
        rule = _reduction
    return None if rule is None else rule(eqn, whole, tracked)


def _untracked(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> int:
    """The union of the whole masks of ``eqn``'s untracked inputs."""
    masks = [whole(atom) for position, atom in enumerate(eqn.invars) if position not in tracked]
    return functools.reduce(operator.or_, masks, 0)


def _joined(axis: int, tracked: dict[int, Indexed], rest: int) -> list[Narrowed]:
    """Index i of every tracked input (all along ``axis``) and all of the rest, per index i."""
    size = len(next(iter(tracked.values())).masks)
    masks = [rest] * size
    for parts in tracked.values():
        masks = [mask | part for mask, part in zip(masks, parts.masks, strict=True)]
    return [Indexed(axis, tuple(masks))]


def _only_operand(eqn: Any, tracked: dict[int, Indexed]) -> Indexed | None:
    """The tracked input of a one-input op, else None."""
    return tracked.get(0) if len(eqn.invars) == 1 and len(eqn.outvars) == 1 else None


def _elementwise(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """Index i of the output reads index i of each tracked operand (of the output's rank;
    one whose axis has size 1 is broadcast: read whole), and all of the others."""
    (out,) = eqn.outvars
    full = {
        position: parts
        for position, parts in tracked.items()
        if eqn.invars[position].aval.ndim == out.aval.ndim
        and len(parts.masks) == out.aval.shape[parts.axis]
    }
    axes = {parts.axis for parts in full.values()}
    if len(axes) != 1:
        return None
    return _joined(axes.pop(), full, _untracked(eqn, whole, full))


def _dot_general(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """A batch or free axis of an operand becomes the output's (a contracted one merges)."""
    contracting, batch = eqn.params["dimension_numbers"]
    lhs_free = eqn.invars[0].aval.ndim - len(contracting[0]) - len(batch[0])
    out_axes = set()
    for position, parts in tracked.items():
        if parts.axis in contracting[position]:
            return None
        if parts.axis in batch[position]:
            out_axes.add(batch[position].index(parts.axis))
            continue
        ndim = eqn.invars[position].aval.ndim
        free = [d for d in range(ndim) if d not in contracting[position] + batch[position]]
        out_axes.add(len(batch[0]) + lhs_free * position + free.index(parts.axis))
    if len(out_axes) != 1:
        return None
    return _joined(out_axes.pop(), tracked, _untracked(eqn, whole, tracked))


def _reduction(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    parts = _only_operand(eqn, tracked)
    axes = eqn.params["axes"]
    if parts is None or parts.axis in axes:
        return None
    return [Indexed(parts.axis - sum(a < parts.axis for a in axes), parts.masks)]


def _broadcast_in_dim(
    eqn: Any, whole: _Whole, tracked: dict[int, Indexed]
) -> list[Narrowed] | None:
    parts = _only_operand(eqn, tracked)
    if parts is None:
        return None
    axis = eqn.params["broadcast_dimensions"][parts.axis]
    if eqn.outvars[0].aval.shape[axis] != len(parts.masks):
        return None  # a size-1 axis broadcast: every index reads the one entry
    return [Indexed(axis, parts.masks)]


def _reshape(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """The axis survives where the output has it after the same leading elements."""
    parts = _only_operand(eqn, tracked)
    if parts is None or eqn.params.get("dimensions") is not None:
        return None
    shape, new_shape = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    leading = math.prod(shape[: parts.axis])
    for axis, size in enumerate(new_shape):
        if size == shape[parts.axis] and math.prod(new_shape[:axis]) == leading:
            return [Indexed(axis, parts.masks)]
    return None


def _transpose(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    parts = _only_operand(eqn, tracked)
    if parts is None:
        return None
    return [Indexed(tuple(eqn.params["permutation"]).index(parts.axis), parts.masks)]


def _squeeze(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    parts = _only_operand(eqn, tracked)
    dimensions = eqn.params["dimensions"]
    if parts is None or parts.axis in dimensions:
        return None  # a size-1 axis: its one entry is the whole
    return [Indexed(parts.axis - sum(d < parts.axis for d in dimensions), parts.masks)]


def _slice(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    parts = _only_operand(eqn, tracked)
    if parts is None:
        return None
    axis, strides = parts.axis, eqn.params["strides"]
    start, limit = eqn.params["start_indices"][axis], eqn.params["limit_indices"][axis]
    return [Indexed(axis, parts.masks[start : limit : strides[axis] if strides else 1])]


def _dynamic_slice(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """A slice at a constant start along the tracked axis (clamped as XLA does)."""
    parts = tracked.get(0)
    if parts is None or len(tracked) != 1:
        return None
    start = eqn.invars[1 + parts.axis]
    if not isinstance(start, jex_core.Literal):
        return None
    size, length = eqn.params["slice_sizes"][parts.axis], len(parts.masks)
    first = min(max(int(start.val), 0), length - size)
    rest = _untracked(eqn, whole, tracked)
    return [Indexed(parts.axis, tuple(m | rest for m in parts.masks[first : first + size]))]


def _gather(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """A gather that keeps the operand's tracked axis whole: as a batching axis (paired with
    the indices' batching axis: ``take_along_axis``) or as an offset axis sliced in full from
    0 (``x[..., i]``: not indexed)."""
    parts = tracked.get(0)
    if parts is None:
        return None
    numbers = eqn.params["dimension_numbers"]
    operand, indices, (out,) = eqn.invars[0], eqn.invars[1], eqn.outvars
    out_batch = [d for d in range(out.aval.ndim) if d not in numbers.offset_dims]
    if parts.axis in numbers.operand_batching_dims:
        index_axis = numbers.start_indices_batching_dims[
            numbers.operand_batching_dims.index(parts.axis)
        ]
        if index_axis >= indices.aval.ndim - 1:  # the index vector is the indices' last axis
            return None
        axis = out_batch[index_axis]
        if 1 in tracked and tracked[1].axis != index_axis:
            return None
    elif (
        parts.axis in numbers.start_index_map
        or parts.axis in numbers.collapsed_slice_dims
        or eqn.params["slice_sizes"][parts.axis] != operand.aval.shape[parts.axis]
        or 1 in tracked
    ):
        return None
    else:
        sliced = [
            d
            for d in range(operand.aval.ndim)
            if d not in numbers.collapsed_slice_dims and d not in numbers.operand_batching_dims
        ]
        axis = numbers.offset_dims[sliced.index(parts.axis)]
    if out.aval.shape[axis] != len(parts.masks):
        return None
    return _joined(axis, tracked, _untracked(eqn, whole, tracked))


def _concatenate(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """Along the concatenated axis, each operand's entries in turn (an untracked one's whole
    mask at each of its indices); along another axis shared by the tracked operands, per index."""
    dimension = eqn.params["dimension"]
    axes = {parts.axis for parts in tracked.values()}
    if axes and dimension not in axes:
        if len(axes) != 1:
            return None
        return _joined(axes.pop(), tracked, _untracked(eqn, whole, tracked))
    if eqn.outvars[0].aval.shape[dimension] > MAX_INDICES:
        return None
    masks: list[int] = []
    for position, atom in enumerate(eqn.invars):
        parts = tracked.get(position)
        if parts is not None and parts.axis == dimension:
            masks.extend(parts.masks)
        else:
            masks.extend([whole(atom)] * atom.aval.shape[dimension])
    return [Indexed(dimension, tuple(masks))]


def _stack(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    if len(eqn.invars) > MAX_INDICES:
        return None
    return [Indexed(eqn.params["axis"], tuple(whole(atom) for atom in eqn.invars))]


def _unstack(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    parts = tracked.get(0)
    axis = eqn.params["axis"]
    if parts is None:
        return None
    if parts.axis == axis:
        return list(parts.masks)
    moved = Indexed(parts.axis - (parts.axis > axis), parts.masks)
    return [moved] * len(eqn.outvars)


def _nested_jit(eqn: Any, whole: _Whole, tracked: dict[int, Indexed]) -> list[Narrowed] | None:
    """A nested ``jit`` (``jnp.roll``, ``lax.dynamic_index_in_dim``...): its body, walked."""
    body = jit_body(eqn).jaxpr
    leaves_of = {inner: whole(outer) for inner, outer in zip(body.invars, eqn.invars, strict=True)}
    indexed = {body.invars[position]: parts for position, parts in tracked.items()}
    for inner in body.eqns:
        leaves = functools.reduce(operator.or_, (_mask(leaves_of, var) for var in inner.invars), 0)
        if leaves:
            _propagate(inner, leaves, leaves_of, indexed)
    return [
        indexed.get(var, leaves_of.get(var, 0)) if isinstance(var, jex_core.Var) else 0
        for var in body.outvars
    ]


_INDEX_RULES: dict[Any, Callable[[Any, _Whole, dict[int, Indexed]], list[Narrowed] | None]] = {
    jax.lax.dot_general_p: _dot_general,
    jax.lax.broadcast_in_dim_p: _broadcast_in_dim,
    jax.lax.reshape_p: _reshape,
    jax.lax.transpose_p: _transpose,
    jax.lax.squeeze_p: _squeeze,
    jax.lax.slice_p: _slice,
    jax.lax.dynamic_slice_p: _dynamic_slice,
    jax.lax.gather_p: _gather,
    jax.lax.concatenate_p: _concatenate,
    jax.lax.stack_p: _stack,
    jax.lax.unstack_p: _unstack,
}


def _record_uses(
    eqn: Any,
    views: dict[Any, tuple[int, bool]],
    uses: dict[int, list[Use]],
    nested: bool = False,
) -> None:
    """Add ``eqn``'s uses of the tracked variables ``views`` (var → (leaf, re-laid out)).

    A layout op makes its output another view of the leaf; a nested ``jit``
    that receives one is walked into. Copies are found outside nested ``jit``
    calls only: one body traced once may run on different values of z.
    """
    tracked = [
        (position, views[var])
        for position, var in enumerate(eqn.invars)
        if isinstance(var, jex_core.Var) and var in views
    ]
    if not tracked:
        return
    body = jit_body(eqn)
    if body is not None:
        inner = {body.jaxpr.invars[position]: view for position, view in tracked}
        for inner_eqn in body.jaxpr.eqns:
            _record_uses(inner_eqn, inner, uses, nested=True)
        _record_returned(body.jaxpr.outvars, inner, uses)
        return
    if eqn.primitive in LAYOUT_PRIMITIVES:
        ((_, (leaf, _)),) = tracked
        views[eqn.outvars[0]] = (leaf, True)
        return
    for position, (leaf, relaid) in tracked:
        added_to = None
        if eqn.primitive is jax.lax.add_p and len(eqn.invars) == 2 and not (relaid or nested):
            mine, other = eqn.invars[position], eqn.invars[1 - position]
            if (
                isinstance(other, jex_core.Var)
                and other not in views
                and other.aval.shape == mine.aval.shape == eqn.outvars[0].aval.shape
                and other.aval.dtype == mine.aval.dtype
            ):
                added_to = other
        uses[leaf].append(Use(eqn, position, added_to, relaid))


def _record_returned(
    outvars: Sequence[Any], views: dict[Any, tuple[int, bool]], uses: dict[int, list[Use]]
) -> None:
    for position, var in enumerate(outvars):
        if isinstance(var, jex_core.Var) and var in views:
            uses[views[var][0]].append(Use(None, position))


def walk(closed: Any, selected: Sequence[bool], num_losses: int) -> TracedProgram:
    """One walk over ``closed``: a ClosedJaxpr over the primal's leaves whose first
    ``num_losses`` outputs are scalar losses (or one array of them: ``num_losses=1``);
    ``selected``: per leaf, whether its per-loss gradients are wanted.

    Masks are kept index by index along one axis of a value stacked from parts
    (:class:`Indexed`, :func:`index_masks`): per-task copies of z stacked into
    one batched head, each loss indexing its entry, are each reached by one
    loss. A 1-D array of losses followed that way gets one ``loss_leaves``
    entry per loss; otherwise the array is one entry.
    """
    jaxpr = closed.jaxpr
    views = {var: (i, False) for i, var in enumerate(jaxpr.invars) if selected[i]}
    uses: dict[int, list[Use]] = {leaf: [] for leaf, _ in views.values()}
    # Per variable, bit masks of what it depends on (absent: nothing).
    leaves_of: dict[Any, int] = {var: 1 << leaf for var, (leaf, _) in views.items()}
    products_of: dict[Any, int] = {}
    products: list[tuple[float, int]] = []
    # Per variable stacked from per-index parts, its masks index by index along one axis.
    indexed: dict[Any, Indexed] = {}
    for eqn in jaxpr.eqns:
        _record_uses(eqn, views, uses)
        leaves = upstream = 0
        for var in eqn.invars:
            leaves |= _mask(leaves_of, var)
            upstream |= _mask(products_of, var)
        if not leaves:
            continue  # no backward pass runs through it
        cost = equation_cost(eqn)
        if cost > 0:
            upstream |= 1 << len(products)
            products.append((cost, leaves))
        for var in eqn.outvars:
            products_of[var] = upstream
        _propagate(eqn, leaves, leaves_of, indexed)
    _record_returned(jaxpr.outvars, views, uses)
    losses = jaxpr.outvars[:num_losses]
    loss_leaves = [_mask(leaves_of, var) for var in losses]
    loss_products = [_mask(products_of, var) for var in losses]
    if num_losses == 1 and isinstance(losses[0], jex_core.Var) and losses[0].aval.ndim == 1:
        entries = indexed.get(losses[0])
        if entries is not None:  # one array of losses, followed entry by entry
            loss_leaves = list(entries.masks)
            loss_products = loss_products * len(loss_leaves)
    return TracedProgram(loss_leaves, loss_products, products, uses)


def _propagate(
    eqn: Any, leaves: int, leaves_of: dict[Any, int], indexed: dict[Any, Indexed]
) -> None:
    """Set the masks of ``eqn``'s outputs: ``leaves`` (the union of its inputs'), narrowed
    index by index where a rule of :func:`index_masks` applies."""
    per_output = index_masks(eqn, lambda atom: _mask(leaves_of, atom), indexed)
    for position, var in enumerate(eqn.outvars):
        narrowed = leaves if per_output is None else per_output[position]
        if isinstance(narrowed, Indexed):
            indexed[var] = narrowed
            narrowed = functools.reduce(operator.or_, narrowed.masks, 0)
        leaves_of[var] = narrowed


def _mask(masks: dict[Any, int], atom: Any) -> int:
    return masks.get(atom, 0) if isinstance(atom, jex_core.Var) else 0
