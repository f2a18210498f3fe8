"""Convolutions that stay on XLA:CPU's fast kernels when a feature map is smaller than its kernel.

XLA's algebraic simplifier swaps a convolution's operands when the kernel's
window covers more positions than the input map (product of the spatial
sizes): the map becomes the "kernel" and the kernel the "input". On XLA:CPU
the swapped convolution has a reversed window and feature-major dimension
numbers (``01fb_o01i->f01b``), which neither YNNPACK nor Eigen implements,
so it is compiled to a naive loop: in ResNet-50's last stage at 128×256
(3×3 kernels, 512 channels, a 2×4 map) one such convolution takes ~140 ms
instead of ~1 ms. The backward pass has the same problem one step later:
the input gradient of a convolution is a convolution over the *output*
cotangent, swapped whenever the output map is smaller than the kernel.

:func:`conv_general_dilated` is ``jax.lax.conv_general_dilated`` with a
detour for exactly those shapes (decided from static shapes at trace time,
every other convolution is left untouched): the input is zero-padded
explicitly, with an extra margin so that the output map is at least the
kernel's size too, the padded input and the output sit behind
``jax.lax.optimization_barrier`` (so the simplifier can fold neither the
pad nor the crop back into the convolution's window), the convolution runs
unpadded ("VALID"), and the output is cropped back. The extra margin adds
only zeros to every sum, so the result is the same function, up to
float32 rounding; the barriers are their own transposes in JAX, so the
backward pass gets the same protection. Pass it to ``flax.nnx.Conv`` as
``conv_general_dilated=``: parameters and checkpoints are unchanged.

:func:`naive_loop_convolutions` is the matching detector: it lists the
convolutions of a compiled XLA:CPU program that neither library can run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from jax import Array, lax

#: Convolutions in the layout XLA:CPU's libraries take: batch first, features
#: last, spatial dimensions in the same order in input, kernel and output.
_LIBRARY_DIM_LABELS = re.compile(r"b(0?1?2?)f_\1io->b\1f")
_DIM_LABELS = re.compile(r"dim_labels=([^,\s}]+)")


def naive_loop_convolutions(compiled_hlo: str) -> list[str]:
    """The convolutions XLA:CPU compiles to a naive loop, as HLO lines.

    Args:
      compiled_hlo: the optimised HLO text of a program compiled for CPU,
        ``jax.jit(f).lower(*args).compile().as_text()``.

    Returns:
      One line per ``convolution`` instruction that YNNPACK and Eigen cannot
      run: a reversed window, or dimension numbers other than batch-first,
      feature-last with the spatial dimensions in order (XLA:CPU's
      ``PotentiallyImplementedAsEigenConvolution``). An empty list means every
      convolution goes to a library.
    """
    naive = []
    for line in compiled_hlo.splitlines():
        if " convolution(" not in line:
            continue
        labels = _DIM_LABELS.search(line)
        if labels is None or "reversal=" in line or not _LIBRARY_DIM_LABELS.fullmatch(labels[1]):
            naive.append(line.strip())
    return naive


def _explicit_padding(
    padding: str | Sequence[tuple[int, int]],
    in_spatial: Sequence[int],
    dilated_kernel: Sequence[int],
    strides: Sequence[int],
) -> list[tuple[int, int]]:
    if isinstance(padding, str):
        return list(lax.padtype_to_pads(in_spatial, dilated_kernel, strides, padding))
    return [(int(low), int(high)) for low, high in padding]


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> Array:
    """``jax.lax.conv_general_dilated`` that avoids XLA:CPU's naive loop on small maps.

    Same arguments and result as ``jax.lax.conv_general_dilated`` (see the
    module docstring for why and how). The detour is taken where XLA would
    swap some convolution's operands: the kernel covers more positions than
    the input map (forward) or the output map (input gradient), or the
    output map more than the input map (weight gradient); and only for
    plain convolutions (no input dilation, feature or batch groups, or
    output sharding). Anything else goes to ``jax.lax.conv_general_dilated``
    unchanged.
    """
    plain = dict(
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    lhs_spatial_axes, rhs_spatial_axes = numbers.lhs_spec[2:], numbers.rhs_spec[2:]
    out_spatial_axes = numbers.out_spec[2:]
    num_spatial = len(lhs_spatial_axes)
    dilation = tuple(rhs_dilation or (1,) * num_spatial)
    in_spatial = [lhs.shape[axis] for axis in lhs_spatial_axes]
    kernel = [rhs.shape[axis] for axis in rhs_spatial_axes]
    dilated_kernel = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    pads = _explicit_padding(padding, in_spatial, dilated_kernel, window_strides)
    out_spatial = [
        (n + low + high - k) // s + 1
        for n, (low, high), k, s in zip(
            in_spatial, pads, dilated_kernel, window_strides, strict=True
        )
    ]
    kernel_area, in_area, out_area = map(math.prod, (kernel, in_spatial, out_spatial))
    would_swap = kernel_area > min(in_area, out_area) or out_area > in_area
    plain_kind = (
        all(d == 1 for d in lhs_dilation or ())
        and feature_group_count == 1
        and batch_group_count == 1
        and out_sharding is None
        and min(out_spatial) > 0
    )
    if not (would_swap and plain_kind):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, out_sharding=out_sharding, **plain
        )
    # Margin (in output pixels, each side) that makes every output side at least the kernel's.
    margins = [max(0, -(-(k - o) // 2)) for k, o in zip(kernel, out_spatial, strict=True)]
    pad_config = [(0, 0, 0)] * lhs.ndim
    for axis, (low, high), margin, stride in zip(
        lhs_spatial_axes, pads, margins, window_strides, strict=True
    ):
        pad_config[axis] = (low + margin * stride, high + margin * stride, 0)
    padded = lax.optimization_barrier(lax.pad(lhs, lax.full((), 0, lhs.dtype), pad_config))
    out = lax.conv_general_dilated(padded, rhs, window_strides, [(0, 0)] * num_spatial, **plain)
    out = lax.optimization_barrier(out)
    for axis, margin, size in zip(out_spatial_axes, margins, out_spatial, strict=True):
        out = lax.slice_in_dim(out, margin, margin + size, axis=axis)
    return out
