"""monodepth's ResNet encoder/decoder ("ResNet50MD", "ResNet18MD") in Flax NNX.

The network of the depth experiment of Groenendijk et al. (WACV 2021, Sec. 4.1,
https://arxiv.org/abs/2009.01717), itself the ResNet-50 variant of Godard, Mac Aodha and Brostow,
"Unsupervised Monocular Depth Estimation with Left-Right Consistency",
CVPR 2017. From the left image it predicts left and right disparities, as a
fraction of the image width, at four scales.

Layer table (H×W input, channels at ``width=1``)::

    conv1    7×7 stride 2, ELU                                   64   H/2
    pool1    3×3 max-pool stride 2 (zero padded)                 64   H/4
    conv2-5  residual stages, stride 2 on the first block       256  H/8 ... 2048 H/64
             (ResNet-50: bottlenecks 3,4,6,3; ResNet-18: basic blocks 2,2,2,2)
    upconvN  ×2 bilinear upsample (align_corners) + 3×3 conv, ELU
    iconvN   3×3 conv, ELU, on [upconvN, skip (, upsampled dispN+1)]
             iconv6 512 (skip conv4), iconv5 256 (conv3), iconv4 128 H/8 (conv2),
             iconv3 64 H/4 (pool1), iconv2 32 H/2 (conv1), iconv1 16 H (no skip)
    dispN    3×3 conv to 2 channels, 0.3·sigmoid   (disp4 H/8 ... disp1 H)

Details follow the reference code (``networks/blocks.py`` of the CoV-Weighting
release, a port of monodepth): every convolution pads ``(k-1)//2`` zeros on
each side (also when strided), the max-pool pads zeros (not −∞) after the ELU;
a bottleneck is 1×1 (ELU) → 3×3 stride s (ELU) → 1×1 to 4c, plus a 1×1 stride s
projection of its input, then ELU of the sum. The reference decides on the
projection with ``in_channels != c or stride == 2``, which is always true for a
bottleneck (its input has 4c channels) and true only for the first block of a
stage for a basic block; we reproduce exactly that. Optional batch norm
(``batch_norm=True``, the paper's text) sits where the reference's
``normalize`` does: after each ELU-activated conv, before the ELU, and on the
residual sum; never on the disparity heads.

Initialisation as the reference's PyTorch layers: ResNet-18MD uses Glorot
uniform kernels, ResNet-50MD PyTorch's default (uniform ±1/√fan_in, i.e.
variance scaling 1/3); biases uniform ±1/√fan_in in both.

Parameter paths (for the gradient-based schemes):

* GradNorm's shared layer is the kernel of ``iconv4``:
  ``model.iconv4.conv.kernel``, path ``("iconv4", "conv", "kernel")``
  (regex ``"iconv4/conv/kernel"``); :data:`GRADNORM_LAYER` holds that path.
* MGDA-UB's shared representation is the ``iconv4`` feature map:
  ``model.encode(left)`` returns ``(iconv4, skips)`` and
  ``model.decode_from_iconv4(iconv4, skips)`` the disparities, so that
  ``model(left) == model.decode_from_iconv4(*model.encode(left))``. The
  trainer marks the ``iconv4`` map with ``model.perturb("representation",
  iconv4)`` between the two and takes the per-loss gradients with
  ``wrt=nnx.Perturbation`` (the skips are left out of the Gramian).

Images are NHWC, H and W divisible by 64 (the encoder downsamples six times).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from experiments.common.conv import conv_general_dilated

Encoder = Literal["resnet18", "resnet50"]

#: Block type, blocks per stage and base channels per stage of each encoder.
ENCODERS: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
#: Output channels of upconv/iconv 6..1 at width 1.
DECODER_CHANNELS = (512, 256, 128, 64, 32, 16)
#: Disparities are at most this fraction of the image width (0.3·sigmoid).
MAX_DISPARITY = 0.3
#: The encoder halves the resolution six times (conv1, pool1, conv2..conv5).
INPUT_MULTIPLE = 64
#: Minimum channel count of any layer under a width multiplier.
MIN_CHANNELS = 4
#: Parameter path of GradNorm's shared layer: the kernel of ``iconv4``.
GRADNORM_LAYER = ("iconv4", "conv", "kernel")
#: PyTorch BatchNorm2d defaults (momentum 0.1 on the new statistics, ε = 1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def scaled_channels(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least :data:`MIN_CHANNELS`."""
    return max(MIN_CHANNELS, round(channels * width))


Initializer = Callable[..., Array]


def _rbg_key(key: Array) -> Array:
    """A key of the ``rbg`` PRNG derived deterministically from ``key``.

    Eager initialisation compiles one random-number program per parameter
    shape; XLA:CPU takes about 1 s per threefry program but about 0.2 s per
    RngBitGenerator one, which makes building a MonoDepth ~5× faster (tens of
    seconds on a 2-core CPU). Keys that already have 4 words are used as they are.
    """
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    if data.shape[-1] == 4:
        return jax.random.wrap_key_data(data, impl="rbg")
    golden = jnp.uint32(0x9E3779B9)  # any fixed odd constant: two distinct extra words
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ golden]), impl="rbg")


def _fast_init(init: Initializer) -> Initializer:
    def wrapped(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Array:
        return init(_rbg_key(key), shape, dtype)

    return wrapped


def _uniform(bound: float) -> Initializer:
    def init(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(
    in_features: int,
    out_features: int,
    kernel: int,
    *,
    stride: int = 1,
    glorot: bool,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A conv with the reference's symmetric zero padding ``(k-1)//2`` and init."""
    pad = (kernel - 1) // 2
    fan_in = in_features * kernel * kernel
    if glorot:
        kernel_init = nnx.initializers.xavier_uniform()
    else:  # PyTorch's default Conv2d init: kaiming_uniform(a=√5) = U(±1/√fan_in).
        kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        conv_general_dilated=conv_general_dilated,
        kernel_init=_fast_init(kernel_init),
        bias_init=_fast_init(_uniform(1.0 / math.sqrt(fan_in))),
        rngs=rngs,
    )


def _batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


class ConvELU(nnx.Module):
    """Conv (+ optional batch norm) + ELU: the reference's ``Conv`` block."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel: int,
        *,
        stride: int = 1,
        batch_norm: bool,
        glorot: bool,
        rngs: nnx.Rngs,
    ):
        self.conv = _conv(
            in_features, out_features, kernel, stride=stride, glorot=glorot, rngs=rngs
        )
        self.norm = _batch_norm(out_features, rngs) if batch_norm else None

    def __call__(self, x: Array) -> Array:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return jax.nn.elu(x)


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride) → 1×1 to 4c, 1×1 projection shortcut, ELU of the sum."""

    def __init__(
        self,
        in_features: int,
        channels: int,
        *,
        stride: int,
        batch_norm: bool,
        glorot: bool,
        rngs: nnx.Rngs,
    ):
        out_features = EXPANSION["bottleneck"] * channels
        self.conv1 = ConvELU(
            in_features, channels, 1, batch_norm=batch_norm, glorot=glorot, rngs=rngs
        )
        self.conv2 = ConvELU(
            channels, channels, 3, stride=stride, batch_norm=batch_norm, glorot=glorot, rngs=rngs
        )
        self.conv3 = _conv(channels, out_features, 1, glorot=glorot, rngs=rngs)
        # The reference projects when in_features != channels, always true here.
        self.shortcut = (
            _conv(in_features, out_features, 1, stride=stride, glorot=glorot, rngs=rngs)
            if in_features != channels or stride == 2
            else None
        )
        self.norm = _batch_norm(out_features, rngs) if batch_norm else None

    def __call__(self, x: Array) -> Array:
        residual = self.conv3(self.conv2(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        total = residual + shortcut
        if self.norm is not None:
            total = self.norm(total)
        return jax.nn.elu(total)


class BasicBlock(nnx.Module):
    """3×3 (stride, ELU) → 3×3 (ELU), shortcut (projected if the shape changes), ELU of sum."""

    def __init__(
        self,
        in_features: int,
        channels: int,
        *,
        stride: int,
        batch_norm: bool,
        glorot: bool,
        rngs: nnx.Rngs,
    ):
        self.conv1 = ConvELU(
            in_features,
            channels,
            3,
            stride=stride,
            batch_norm=batch_norm,
            glorot=glorot,
            rngs=rngs,
        )
        self.conv2 = ConvELU(channels, channels, 3, batch_norm=batch_norm, glorot=glorot, rngs=rngs)
        self.shortcut = (
            _conv(in_features, channels, 1, stride=stride, glorot=glorot, rngs=rngs)
            if in_features != channels or stride == 2
            else None
        )
        self.norm = _batch_norm(channels, rngs) if batch_norm else None

    def __call__(self, x: Array) -> Array:
        residual = self.conv2(self.conv1(x))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        total = residual + shortcut
        if self.norm is not None:
            total = self.norm(total)
        return jax.nn.elu(total)


class UpConv(nnx.Module):
    """×2 bilinear upsampling (align_corners=True, as the reference) + 3×3 conv + ELU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        batch_norm: bool,
        glorot: bool,
        rngs: nnx.Rngs,
    ):
        self.conv = ConvELU(
            in_features, out_features, 3, batch_norm=batch_norm, glorot=glorot, rngs=rngs
        )

    def __call__(self, x: Array) -> Array:
        return self.conv(upsample2x(x))


class DisparityHead(nnx.Module):
    """3×3 conv to 2 channels (left, right disparity), then 0.3·sigmoid.

    ``initial_disparity`` (a fraction of the width in (0, 0.3)) sets the
    conv's bias to the logit that yields it, so the untrained network starts
    near that disparity instead of 0.15; ``None`` keeps the reference init.
    """

    def __init__(
        self,
        in_features: int,
        *,
        glorot: bool,
        rngs: nnx.Rngs,
        initial_disparity: float | None = None,
    ):
        self.conv = _conv(in_features, 2, 3, glorot=glorot, rngs=rngs)
        if initial_disparity is not None:
            fraction = initial_disparity / MAX_DISPARITY
            logit = math.log(fraction / (1.0 - fraction))
            self.conv.bias.value = jnp.full_like(self.conv.bias.value, logit)

    def __call__(self, x: Array) -> Array:
        return MAX_DISPARITY * jax.nn.sigmoid(self.conv(x))


def _align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) linear interpolation matrix with aligned corner pixels."""
    if size_in == 1:
        return np.ones((size_out, 1), np.float32)
    source = np.arange(size_out) * (size_in - 1) / max(size_out - 1, 1)
    lower = np.clip(np.floor(source).astype(int), 0, size_in - 2)
    frac = source - lower
    matrix = np.zeros((size_out, size_in), np.float32)
    matrix[np.arange(size_out), lower] = 1.0 - frac
    matrix[np.arange(size_out), lower + 1] += frac
    return matrix


def resize_align_corners(x: Array, height: int, width: int) -> Array:
    """Bilinear resize of NHWC ``x`` with ``align_corners=True`` (PyTorch semantics).

    Written as two small matrix products (shapes are static), which is exact,
    differentiable and fast on CPU.
    """
    rows = jnp.asarray(_align_corners_matrix(x.shape[1], height), x.dtype)
    cols = jnp.asarray(_align_corners_matrix(x.shape[2], width), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", rows, x)
    return jnp.einsum("pw,bowc->bopc", cols, x)


def upsample2x(x: Array) -> Array:
    """×2 bilinear upsampling with ``align_corners=True``."""
    return resize_align_corners(x, 2 * x.shape[1], 2 * x.shape[2])


def max_pool_zero_padded(x: Array) -> Array:
    """3×3 stride-2 max-pool after one pixel of zero padding (the reference's MaxPool)."""
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID"
    ).astype(x.dtype)


class DecoderSkips(NamedTuple):
    """The encoder features the decoder needs after ``iconv4``.

    Attributes:
      pool1: (B, H/4, W/4, 64·width) output of the max-pool (skip of iconv3).
      conv1: (B, H/2, W/2, 64·width) output of the first conv (skip of iconv2).
    """

    pool1: Array
    conv1: Array


class MonoDepth(nnx.Module):
    """monodepth's ResNet encoder/decoder: left image → 4 left/right disparity maps.

    Args:
      encoder: ``"resnet50"`` (ResNet50MD, the paper's) or ``"resnet18"``.
      width: multiplier of every channel count (at least :data:`MIN_CHANNELS`
        per layer); ``1.0`` is the reference network.
      batch_norm: batch norm after each activated conv and residual sum
        (``model.train()`` / ``model.eval()`` switch between batch and running
        statistics). The reference code has none; the paper's text has it.
      initial_disparity: where the untrained disparity heads start, a
        fraction of the width in (0, 0.3) (their bias is set to its logit);
        ``None`` (the reference) starts them near 0.3·sigmoid(0) = 0.15.
      rngs: parameter initialisation.

    Call: ``model(left)`` with ``left`` (B, H, W, 3) in [0, 1], H and W
    divisible by 64, returns ``(disp1, disp2, disp3, disp4)``: disparity
    ``s`` is (B, H/2^s, W/2^s, 2) in (0, 0.3), channel 0 the left and 1 the
    right disparity, as a fraction of the image width.
    """

    def __init__(
        self,
        encoder: Encoder = "resnet50",
        width: float = 1.0,
        batch_norm: bool = False,
        initial_disparity: float | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        if encoder not in ENCODERS:
            raise ValueError(
                f"MonoDepth: unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}."
            )
        if not (isinstance(width, int | float) and math.isfinite(width) and width > 0):
            raise ValueError(f"MonoDepth: width must be a positive number, got {width!r}.")
        if initial_disparity is not None and not 0.0 < initial_disparity < MAX_DISPARITY:
            raise ValueError(
                f"MonoDepth: initial_disparity must be in (0, {MAX_DISPARITY}) (a fraction of "
                f"the image width), got {initial_disparity!r}."
            )
        self.encoder_name = encoder
        self.width = float(width)
        block_type, blocks_per_stage, base_channels = ENCODERS[encoder]
        glorot = encoder == "resnet18"  # as the reference (xavier for ResNet18MD only)
        common = {"batch_norm": batch_norm, "glorot": glorot, "rngs": rngs}
        head = {"glorot": glorot, "rngs": rngs, "initial_disparity": initial_disparity}

        def ch(channels: int) -> int:
            return scaled_channels(channels, width)

        # Encoder.
        stem = ch(64)
        self.conv1 = ConvELU(3, stem, 7, stride=2, **common)
        block_class = Bottleneck if block_type == "bottleneck" else BasicBlock
        stage_outputs = []
        in_features = stem
        stages = []
        for num_blocks, channels in zip(blocks_per_stage, base_channels, strict=True):
            blocks = []
            for index in range(num_blocks):
                blocks.append(
                    block_class(in_features, ch(channels), stride=2 if index == 0 else 1, **common)
                )
                in_features = EXPANSION[block_type] * ch(channels)
            stages.append(nnx.List(blocks))
            stage_outputs.append(in_features)
        self.conv2, self.conv3, self.conv4, self.conv5 = stages

        # Decoder.
        up6, up5, up4, up3, up2, up1 = (ch(c) for c in DECODER_CHANNELS)
        self.upconv6 = UpConv(stage_outputs[3], up6, **common)
        self.iconv6 = ConvELU(up6 + stage_outputs[2], up6, 3, **common)
        self.upconv5 = UpConv(up6, up5, **common)
        self.iconv5 = ConvELU(up5 + stage_outputs[1], up5, 3, **common)
        self.upconv4 = UpConv(up5, up4, **common)
        self.iconv4 = ConvELU(up4 + stage_outputs[0], up4, 3, **common)
        self.disp4 = DisparityHead(up4, **head)
        self.upconv3 = UpConv(up4, up3, **common)
        self.iconv3 = ConvELU(up3 + stem + 2, up3, 3, **common)
        self.disp3 = DisparityHead(up3, **head)
        self.upconv2 = UpConv(up3, up2, **common)
        self.iconv2 = ConvELU(up2 + stem + 2, up2, 3, **common)
        self.disp2 = DisparityHead(up2, **head)
        self.upconv1 = UpConv(up2, up1, **common)
        self.iconv1 = ConvELU(up1 + 2, up1, 3, **common)
        self.disp1 = DisparityHead(up1, **head)

    def encode(self, left: Array) -> tuple[Array, DecoderSkips]:
        """Everything up to and including ``iconv4``: the shared representation.

        Returns:
          ``(iconv4, skips)``: the (B, H/8, W/8, 128·width) ``iconv4`` feature
          map (MGDA-UB's z) and the encoder features the rest of the decoder uses.
        """
        _check_image(left)
        conv1 = self.conv1(left)
        pool1 = max_pool_zero_padded(conv1)
        conv2 = _run_stage(self.conv2, pool1)
        conv3 = _run_stage(self.conv3, conv2)
        conv4 = _run_stage(self.conv4, conv3)
        conv5 = _run_stage(self.conv5, conv4)
        iconv6 = self.iconv6(jnp.concatenate([self.upconv6(conv5), conv4], axis=-1))
        iconv5 = self.iconv5(jnp.concatenate([self.upconv5(iconv6), conv3], axis=-1))
        iconv4 = self.iconv4(jnp.concatenate([self.upconv4(iconv5), conv2], axis=-1))
        return iconv4, DecoderSkips(pool1=pool1, conv1=conv1)

    def decode_from_iconv4(
        self, iconv4: Array, skips: DecoderSkips
    ) -> tuple[Array, Array, Array, Array]:
        """The disparity heads and the decoder after ``iconv4``.

        Returns:
          ``(disp1, disp2, disp3, disp4)``, full resolution first.
        """
        disp4 = self.disp4(iconv4)
        upconv3 = self.upconv3(iconv4)
        iconv3 = self.iconv3(jnp.concatenate([upconv3, skips.pool1, upsample2x(disp4)], axis=-1))
        disp3 = self.disp3(iconv3)
        upconv2 = self.upconv2(iconv3)
        iconv2 = self.iconv2(jnp.concatenate([upconv2, skips.conv1, upsample2x(disp3)], axis=-1))
        disp2 = self.disp2(iconv2)
        upconv1 = self.upconv1(iconv2)
        iconv1 = self.iconv1(jnp.concatenate([upconv1, upsample2x(disp2)], axis=-1))
        disp1 = self.disp1(iconv1)
        return disp1, disp2, disp3, disp4

    def __call__(self, left: Array) -> tuple[Array, Array, Array, Array]:
        return self.decode_from_iconv4(*self.encode(left))


def _run_stage(blocks: nnx.List, x: Array) -> Array:
    for block in blocks:
        x = block(x)
    return x


def _check_image(left: Array) -> None:
    if left.ndim != 4 or left.shape[-1] != 3:
        raise ValueError(
            f"MonoDepth: expected NHWC images of shape (B, H, W, 3), got shape {left.shape}."
        )
    height, width = left.shape[1], left.shape[2]
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(
            f"MonoDepth: image height and width must be divisible by {INPUT_MULTIPLE} "
            f"(the encoder halves them six times), got {height}×{width}."
        )
    if not jnp.issubdtype(left.dtype, jnp.floating):
        raise TypeError(
            f"MonoDepth: images must be floating point in [0, 1], got dtype {left.dtype}."
        )


def count_parameters(model: nnx.Module) -> int:
    """Number of scalar ``nnx.Param`` entries (batch statistics excluded)."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
