"""The weighting API: ``Weighting(init, update)`` over an immutable state pytree.

A weighting scheme maps the K loss values of a training step (and, for the
gradient-based schemes, the K×K Gramian of the per-loss gradients) to K weights
α_i; the network is then trained on Σ stop_gradient(α_i) L_i.

Every scheme is written once, on a flat float32 vector of losses, by a pair of
private functions ``init_fn(losses) -> inner`` and
``update_fn(losses, inner, count, gramian) -> (weights, inner)``.
:func:`make_weighting` wraps them into the public :class:`Weighting`, which
owns, in one place for all schemes:

* the loss structure: a 1-D array of K losses or any pytree of scalar losses;
  mismatches between ``init`` and ``update`` and non-scalar losses are errors
  raised at trace time;
* dtype: bf16/f16 losses are promoted and all statistics live in float32;
* the step counter (int32: float32 counters stop at 2²⁴ steps);
* robustness: a step with a NaN/±Inf loss or Gramian entry, or whose update
  would produce a non-finite weight, leaves the state exactly as it was and
  returns the previous weights (uniform before the first finite step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import struct
from jax import Array

PyTree = Any
Losses = PyTree  # a 1-D array of K losses, or a pytree whose leaves are scalar losses
Weights = PyTree  # same structure as the losses


@dataclasses.dataclass(frozen=True)
class LossStructure:
    """Static description of how a scheme's losses are laid out."""

    treedef: jax.tree_util.PyTreeDef
    num_losses: int
    names: tuple[str, ...]
    is_vector: bool  # a single 1-D array of K losses rather than a pytree of scalars

    def unflatten(self, vector: Array) -> PyTree:
        """Turn a (K,) vector back into the losses' structure."""
        if self.is_vector:
            return vector
        return jax.tree_util.tree_unflatten(self.treedef, list(vector))

    def describe(self) -> str:
        if self.is_vector:
            return f"a 1-D array of {self.num_losses} losses"
        return f"{self.num_losses} losses named {list(self.names)}"


def _key_name(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:
            parts.append(str(key))
    return "/".join(parts) if parts else "loss"


def flatten_losses(losses: Losses) -> tuple[Array, LossStructure]:
    """Validate ``losses`` and return them as a float32 (K,) vector with their structure.

    Raises:
      ValueError: no losses, a non-scalar loss, or a loss array that is not 1-D.
      TypeError: a leaf that is not a numeric array.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(losses)
    if not leaves_with_path:
        raise ValueError("covjax: got zero losses; a weighting needs at least one loss.")
    if len(leaves_with_path) == 1 and jnp.ndim(leaves_with_path[0][1]) == 1:
        vector = jnp.asarray(leaves_with_path[0][1])
        if vector.shape[0] == 0:
            raise ValueError("covjax: got an empty loss vector; a weighting needs at least one.")
        names = tuple(f"loss_{i}" for i in range(vector.shape[0]))
        structure = LossStructure(treedef, int(vector.shape[0]), names, is_vector=True)
        return _as_float(vector, "losses"), structure
    names = tuple(_key_name(path) for path, _ in leaves_with_path)
    for name, (_, leaf) in zip(names, leaves_with_path, strict=True):
        if jnp.ndim(leaf) != 0:
            raise ValueError(
                f"covjax: loss {name!r} has shape {jnp.shape(leaf)}; every loss must be a "
                "scalar (reduce it with a mean or sum first), or pass one 1-D array of K losses."
            )
    vector = jnp.stack([_as_float(jnp.asarray(leaf), name) for _, leaf in leaves_with_path])
    return vector, LossStructure(treedef, len(names), names, is_vector=False)


def _as_float(x: Array, name: str) -> Array:
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"covjax: loss {name!r} has dtype {x.dtype}; losses must be real numbers.")
    # bf16/f16 losses accumulate in float32; float64 (x64 mode) is kept.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def loss_names(losses: Losses) -> tuple[str, ...]:
    """The names covjax gives to ``losses`` (``"a/b"`` for ``{"a": {"b": ...}}``)."""
    return flatten_losses(losses)[1].names


def named(values: PyTree) -> dict[str, Array]:
    """A flat ``{name: value}`` dict of losses or weights, for logging."""
    vector, structure = flatten_losses(values)
    return {name: vector[i] for i, name in enumerate(structure.names)}


@struct.dataclass
class WeightingState:
    """State of any covjax weighting: only arrays, plus static structure metadata.

    Attributes:
      count: int32, number of steps accepted so far (steps with non-finite
        inputs are not counted).
      weights: (K,) float32, the weights returned by the last accepted step.
      inner: the scheme's own state (a NamedTuple of arrays).
      structure: the loss structure seen at ``init`` (static, not a leaf).
    """

    count: Array
    weights: Array
    inner: Any
    structure: LossStructure = struct.field(pytree_node=False)


class InitFn(Protocol):
    def __call__(self, losses: Losses) -> WeightingState: ...


class UpdateFn(Protocol):
    def __call__(
        self, losses: Losses, state: WeightingState, gramian: Array | None = None
    ) -> tuple[Weights, WeightingState]: ...


class Weighting(NamedTuple):
    """A loss weighting scheme, optax-style.

    ``state = init(losses)``; ``weights, state = update(losses, state)``.
    ``requires`` names what the scheme needs besides the losses: ``"gramian"``
    (the K×K Gramian of the per-loss gradients, passed as ``gramian=``).
    """

    init: InitFn
    update: UpdateFn
    requires: frozenset[str] = frozenset()


FlatInit = Callable[[Array], Any]
FlatUpdate = Callable[[Array, Any, Array, Array | None], tuple[Array, Any]]


def make_weighting(
    init_fn: FlatInit,
    update_fn: FlatUpdate,
    *,
    name: str,
    requires: frozenset[str] = frozenset(),
) -> Weighting:
    """Build a public :class:`Weighting` from flat-vector ``init_fn``/``update_fn``.

    Args:
      init_fn: ``(losses (K,) float32) -> inner_state``; the values are those
        given to ``init`` and only their shape should usually matter.
      update_fn: ``(losses (K,), inner_state, count int32, gramian (K,K) | None)
        -> (weights (K,), inner_state)``. It sees only finite inputs.
      name: the scheme's name, used in error messages.
      requires: ``{"gramian"}`` for schemes that need per-loss gradients.
    """
    needs_gramian = "gramian" in requires

    def init(losses: Losses) -> WeightingState:
        vector, structure = flatten_losses(losses)
        k = structure.num_losses
        return WeightingState(
            count=jnp.zeros((), jnp.int32),
            weights=jnp.full((k,), 1.0 / k, jnp.float32),
            inner=init_fn(vector),
            structure=structure,
        )

    def update(
        losses: Losses, state: WeightingState, gramian: Array | None = None
    ) -> tuple[Weights, WeightingState]:
        if not isinstance(state, WeightingState):
            raise TypeError(
                f"covjax.{name}: update expects the state returned by init, got {type(state)}."
            )
        vector, structure = flatten_losses(losses)
        if structure != state.structure:
            raise ValueError(
                f"covjax.{name}: update got {structure.describe()}, but the state was "
                f"initialised with {state.structure.describe()}."
            )
        k = structure.num_losses
        finite = jnp.all(jnp.isfinite(vector))
        # Non-finite steps are discarded below; feed the scheme harmless values
        # so that iterative solvers do not spin on NaNs meanwhile.
        safe_vector = jnp.where(finite, vector, jnp.ones_like(vector))
        if needs_gramian:
            if gramian is None:
                raise ValueError(
                    f"covjax.{name} needs the Gramian of the per-loss gradients: call "
                    "update(losses, state, gramian=G) or use covjax.value_and_grad."
                )
            gramian = jnp.asarray(gramian)
            if gramian.shape != (k, k):
                raise ValueError(
                    f"covjax.{name}: gramian has shape {gramian.shape}, expected ({k}, {k})."
                )
            gramian = gramian.astype(jnp.promote_types(gramian.dtype, jnp.float32))
            gramian_finite = jnp.all(jnp.isfinite(gramian))
            finite = finite & gramian_finite
            gramian = jnp.where(gramian_finite, gramian, jnp.eye(k, dtype=gramian.dtype))
        new_weights, new_inner = update_fn(safe_vector, state.inner, state.count, gramian)
        new_weights = new_weights.astype(state.weights.dtype)
        accept = finite & jnp.all(jnp.isfinite(new_weights))
        keep = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        new_state = WeightingState(
            count=state.count + accept.astype(jnp.int32),
            weights=keep(new_weights, state.weights),
            inner=jax.tree.map(keep, new_inner, state.inner),
            structure=state.structure,
        )
        return structure.unflatten(new_state.weights), new_state

    return Weighting(init=init, update=update, requires=frozenset(requires))


def step_accepted(old: WeightingState, new: WeightingState) -> Array:
    """Whether the update from ``old`` to ``new`` accepted its losses (all finite)."""
    return new.count > old.count


def weighted_sum(losses: Losses, weights: Weights) -> Array:
    """``Σ stop_gradient(w_i) · L_i`` in at least float32."""
    loss_vector, loss_structure = flatten_losses(losses)
    weight_vector, weight_structure = flatten_losses(weights)
    if loss_structure.num_losses != weight_structure.num_losses or (
        not weight_structure.is_vector and weight_structure.treedef != loss_structure.treedef
    ):
        raise ValueError(
            f"covjax.weighted_sum: weights are {weight_structure.describe()} but losses are "
            f"{loss_structure.describe()}."
        )
    return jnp.sum(jax.lax.stop_gradient(weight_vector).astype(loss_vector.dtype) * loss_vector)
