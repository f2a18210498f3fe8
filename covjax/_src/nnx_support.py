"""Flax NNX support, imported only when NNX objects are actually handled.

covjax's core needs only jax, optax and numpy. An ``nnx.Module``,
``nnx.Variable`` or NNX filter can only reach covjax if the caller imported
Flax first, so the checks below look at :data:`sys.modules` and never import
Flax themselves; :func:`nnx` imports it for the code paths that handle such
objects.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax

_NNX_MODULE = "flax.nnx"
_FILTERLIB_MODULE = "flax.nnx.filterlib"


def nnx() -> ModuleType:
    """The ``flax.nnx`` module (imported on first use)."""
    from flax import nnx as flax_nnx

    return flax_nnx


def _loaded() -> ModuleType | None:
    return sys.modules.get(_NNX_MODULE)


def is_module(value: Any) -> bool:
    """Whether ``value`` is an ``nnx.Module`` (False, without importing Flax, if Flax is unused)."""
    loaded = _loaded()
    return loaded is not None and isinstance(value, loaded.Module)


def is_variable(value: Any) -> bool:
    """Whether ``value`` is an ``nnx.Variable`` (same rule as :func:`is_module`)."""
    loaded = _loaded()
    return loaded is not None and isinstance(value, loaded.Variable)


def is_filter(selector: Any) -> bool:
    """Whether a ``wrt`` selector is an NNX filter: a type (``nnx.Param``) or a filterlib object."""
    if _loaded() is None:
        return False
    return isinstance(selector, type) or type(selector).__module__ == _FILTERLIB_MODULE


def filter_predicate(selector: Any) -> Callable[[jax.tree_util.KeyPath, Any], bool]:
    """A ``(key_path, node) -> bool`` predicate applying an NNX filter as NNX does."""
    from flax.nnx import filterlib

    nnx_predicate = filterlib.to_predicate(selector)

    def predicate(path: jax.tree_util.KeyPath, node: Any) -> bool:
        # NNX filters see the raw keys ("layers", 0, "kernel"), not names.
        return bool(nnx_predicate(tuple(_raw_key(key) for key in path), node))

    return predicate


def _raw_key(key: Any) -> Any:
    for attribute in ("key", "name", "idx"):  # DictKey/FlattenedIndexKey, GetAttrKey, SequenceKey
        if hasattr(key, attribute):
            return getattr(key, attribute)
    return key


#: flax warns on each ``perturb`` call outside ``nnx.capture``; covjax calls it so on purpose.
_PERTURB_OUTSIDE_CAPTURE = r"\s*Using 'Module\.perturb\(\)' outside of 'nnx\.capture\(\)'"


def call(
    graphdef: Any,
    params: Any,
    perturbations: Any,
    rest: Any,
    fn: Callable[..., Any],
    args: Any,
    kwargs: dict[str, Any],
) -> tuple[Any, Any, Any]:
    """``fn(module, *args, **kwargs)`` on a merged copy, with the given perturbations added.

    Returns ``(output, new_rest, perturbations)``: the module's non-parameter,
    non-perturbation variables after the call (batch statistics...), and its
    Perturbation variables: the given ones, and a zero one for each
    ``module.perturb(name, z)`` call that had none.

    Outside ``nnx.capture`` a ``module.perturb(name, z)`` call returns z plus
    the module's Perturbation variable ``name``, and creates it (zero, on this
    copy only) when there is none. Not ``nnx.capture``: in flax 0.12 it also
    gives every ``nnx.Dict`` container of submodules a ``__captures__`` entry,
    which then breaks iterating over the container's items.
    """
    flax_nnx = nnx()
    model = flax_nnx.merge(graphdef, params, rest, copy=True)
    flax_nnx.update(model, perturbations)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _PERTURB_OUTSIDE_CAPTURE, DeprecationWarning)
        output = fn(model, *args, **kwargs)
    _, _, perturbations, new_rest = flax_nnx.split(
        model, flax_nnx.Param, flax_nnx.Perturbation, ...
    )
    return output, new_rest, perturbations


def find_perturbations(
    graphdef: Any,
    params: Any,
    rest: Any,
    fn: Callable[..., Any],
    args: Any,
    kwargs: dict[str, Any],
) -> Any:
    """Zero ``nnx.Perturbation`` state for each ``perturb`` call of ``fn`` (abstract evaluation)."""
    flax_nnx = nnx()

    def perturbations(params: Any, rest: Any) -> Any:
        return call(graphdef, params, flax_nnx.State({}), rest, fn, args, kwargs)[2]

    shapes = jax.eval_shape(perturbations, params, rest)
    return jax.tree.map(lambda shape: jax.numpy.zeros(shape.shape, shape.dtype), shapes)
