"""Tolerances for the numerical tests, derived from what is compared, not tuned to one CPU.

float32 results change with the CPU's summation order (vector width, thread count,
fused multiply-adds: AVX-512 vs AVX2, one core vs many), so a test of an identity
(batched == looped, factorized == materialised, sharded == single device) runs
both sides in float64 (``jax.enable_x64(True)``, inputs through :func:`float64`)
and compares them with :data:`IDENTITY_RTOL64`. What has to stay in float32 (the
loss-statistics schemes keep float32 state) gets a tolerance derived from the
computation: :func:`normalization_rtol`, :func:`trace_rtol`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from covjax._src.numerics import Compensated

#: Machine epsilon of float32, the precision covjax computes in by default.
EPS32 = float(np.finfo(np.float32).eps)
#: Machine epsilon of float64.
EPS64 = float(np.finfo(np.float64).eps)
#: Two float64 evaluations of one quantity in different orders: each of the ≲ 10 chained
#: reductions (≲ 10³ terms) of these tiny networks adds ≲ √n·eps64 of the scale, so 1e4·eps64
#: (2e-12) bounds the reordering with a margin, and is still 5·10⁴ times below eps32: a path
#: that silently drops to float32, or a real error, fails it.
IDENTITY_RTOL64 = 1e4 * EPS64


def float64(tree):
    """The floating leaves of ``tree`` as float64 arrays (call inside ``jax.enable_x64(True)``)."""

    def cast(leaf):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.asarray(leaf, jnp.float64)
        return leaf

    return jax.tree.map(cast, tree)


def assert_trees_close64(got, want, scale: float | None = None) -> None:
    """Each leaf of ``got`` equals ``want``'s to ``IDENTITY_RTOL64`` of that leaf's largest entry
    (or of ``scale``: for a leaf whose true value is 0, relative to the terms that cancelled)."""
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), (jax.tree.structure(got), jax.tree.structure(want))
    for got_leaf, want_leaf in zip(got_leaves, want_leaves, strict=True):
        want_leaf = np.asarray(want_leaf)
        assert want_leaf.dtype == np.float64, f"not a float64 comparison: {want_leaf.dtype}"
        leaf_scale = float(np.max(np.abs(want_leaf), initial=0.0)) if scale is None else scale
        np.testing.assert_allclose(
            np.asarray(got_leaf, np.float64), want_leaf, rtol=0, atol=IDENTITY_RTOL64 * leaf_scale
        )


def normalization_rtol(k: int) -> float:
    """Relative error of float32 weights w = s·x/Σx over K losses, or of their float32 sum:
    the K-term sum carries ≤ K·eps32 in any order, the division and the scale s one rounding
    each, and summing the weights again ≤ K·eps32 more: (2K + 2)·eps32."""
    return (2 * k + 2) * EPS32


def trace_rtol(steps: int, per_step: float = EPS32) -> float:
    """A float32 recurrence over ``steps`` steps vs another evaluation of it: each step's
    roundings (``per_step``, relative) add up at most linearly, as the schemes' recurrences
    (EMAs, normalizations, Adam's normalized steps) do not amplify them."""
    return steps * per_step


def without_compensation(tree):
    """Kahan-compensated sums as value + error (the error terms alone are rounding residues)."""
    return jax.tree.map(
        lambda leaf: leaf.value + leaf.error if isinstance(leaf, Compensated) else leaf,
        tree,
        is_leaf=lambda leaf: isinstance(leaf, Compensated),
    )


def assert_states_close(got, want, rtol: float) -> None:
    """Each leaf of two scheme states agrees to ``rtol`` of that leaf's largest entry
    (compensated sums compared as value + error)."""
    got, want = without_compensation(got), without_compensation(want)
    for got_leaf, want_leaf in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        want_leaf = np.asarray(want_leaf, np.float64)
        scale = float(np.max(np.abs(want_leaf), initial=0.0))
        np.testing.assert_allclose(
            np.asarray(got_leaf, np.float64), want_leaf, rtol=0, atol=rtol * scale
        )


def network_rtol(params) -> float:
    """Two float32 evaluations of one network whose ops XLA fuses or orders differently
    (the whole forward vs the same forward split at a layer), relative to the output's scale.

    Each of the L kernels re-rounds reductions of at most n terms (its largest fan-in), which
    reordered differ by ≲ √n·eps32 relative (the random-walk bound of a reordered sum); with
    normalized, ELU/ReLU/sigmoid layers (Lipschitz ≈ 1) these add up over the layers:
    L·√n·eps32. For the tests' tiny networks this is 4e-5 to 1.3e-4, while a wrong split
    changes outputs by O(1).
    """
    kernels = [
        np.shape(leaf) for leaf in jax.tree.leaves(params) if np.ndim(leaf) >= 2
    ]  # Dense (in, out) and conv (..., in, out) kernels
    fan_in = max(int(np.prod(shape[:-1])) for shape in kernels)
    return len(kernels) * float(np.sqrt(fan_in)) * EPS32
