"""What the plan reads from the traced loss function: one walk over its jaxpr.

The loss function is traced to a jaxpr once (:func:`covjax._src.gradients.prepare`)
and :func:`walk` goes over its equations once, collecting every fact the plan needs:

* per variable, the bit masks of the selected leaves and of the *products*
  (differentiated matrix products and convolutions; an equation with
  sub-programs counts as one) it depends on. At the K losses these give each
  loss's reach — a leaf that one loss reaches is block-diagonal — and its
  *cone*, the products its backward pass runs through;
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
from collections.abc import Sequence
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

    def copies(self) -> list[tuple[int, ...]]:
        """Sets of ≥ 2 selected leaves whose only use adds each to one same value.

        ``z + p_a`` and ``z + p_b`` (``nnx.Module.perturb`` of one feature map
        under two names, or zero offsets of a plain pytree): ``p_a`` and
        ``p_b`` are copies of z, so the gradient w.r.t. z is the sum of theirs.
        """
        by_value: dict[Any, list[int]] = {}
        for leaf, uses in self.uses.items():
            if len(uses) == 1 and uses[0].added_to is not None:
                by_value.setdefault(uses[0].added_to, []).append(leaf)
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
    ``selected``: per leaf, whether its per-loss gradients are wanted."""
    jaxpr = closed.jaxpr
    views = {var: (i, False) for i, var in enumerate(jaxpr.invars) if selected[i]}
    uses: dict[int, list[Use]] = {leaf: [] for leaf, _ in views.values()}
    # Per variable, bit masks of what it depends on (absent: nothing).
    leaves_of: dict[Any, int] = {var: 1 << leaf for var, (leaf, _) in views.items()}
    products_of: dict[Any, int] = {}
    products: list[tuple[float, int]] = []
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
            leaves_of[var], products_of[var] = leaves, upstream
    _record_returned(jaxpr.outvars, views, uses)
    losses = jaxpr.outvars[:num_losses]
    loss_leaves = [_mask(leaves_of, var) for var in losses]
    return TracedProgram(loss_leaves, [_mask(products_of, v) for v in losses], products, uses)


def _mask(masks: dict[Any, int], atom: Any) -> int:
    return masks.get(atom, 0) if isinstance(atom, jex_core.Var) else 0
