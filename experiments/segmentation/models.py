"""EncNet (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018) in Flax NNX.

The network of the segmentation experiment of Groenendijk et al. (WACV 2021,
Sec. 4.2, https://arxiv.org/abs/2009.01717):

* a dilated ResNet backbone with output stride 8: stages 3 and 4 keep the
  resolution of stage 2 and use dilation 2 and 4 instead of stride 2 (the
  first block of a dilated stage uses the previous dilation, as torchvision's
  ``replace_stride_with_dilation`` and PyTorch-Encoding do);
* an EncHead on stage 4: 3×3 conv + BN + ReLU, then the Context Encoding
  Module (1×1 conv + BN + ReLU, the encoding layer, BN + ReLU, mean over the
  codewords ē; channel attention γ = sigmoid(W ē) with output ReLU(x + x·γ);
  a second fully connected layer predicts class presence: the SE head), then
  dropout and a 1×1 conv to the class logits;
* an FCN auxiliary head on stage 3 (3×3 conv to C/4 + BN + ReLU + dropout +
  1×1 conv);
* both segmentation heads are upsampled bilinearly to the input size.

The backbone's parameter names mirror torchvision's ResNet (``conv1``, ``bn1``,
``layer1[0].conv1``, ``layer1[0].downsample.conv`` …) so that ImageNet weights
converted from a torchvision checkpoint load by name (see ``pretrained.py``).
Convolutions use PyTorch's explicit symmetric padding for the same reason
(``"SAME"`` pads stride-2 convolutions asymmetrically).

A width multiplier and a ResNet-18 (basic block) backbone make CPU-sized runs
possible; ``width=1`` with ``backbone="resnet50"`` is the paper's network.
Images are NHWC float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from experiments.common.conv import conv_general_dilated

Backbone = Literal["resnet18", "resnet50"]

#: Blocks per stage and block type of each backbone (He et al., CVPR 2016).
BACKBONES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
STAGE_CHANNELS = (64, 128, 256, 512)
#: PyTorch BatchNorm defaults (momentum 0.1 on the new value, ε = 1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
#: torchvision's ImageNet statistics: pretrained backbones expect (x − mean) / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncNetOutputs(NamedTuple):
    """What :class:`EncNet` returns (a tuple, so it unpacks as (logits, aux, se)).

    Attributes:
      logits: (B, H, W, C) class logits of the main (EncHead) branch, at input size.
      aux_logits: (B, H, W, C) class logits of the FCN head on stage 3, at input size.
      se_logits: (B, C) class-presence logits of the SE head.
    """

    logits: Array
    aux_logits: Array
    se_logits: Array


def scaled_channels(channels: int, width: float) -> int:
    """``channels · width`` rounded, at least 1."""
    return max(1, round(channels * width))


def _conv(
    in_features: int,
    out_features: int,
    kernel: int,
    *,
    rngs: nnx.Rngs,
    stride: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
) -> nnx.Conv:
    # PyTorch-style symmetric padding: dilation·(k−1)/2 on every side.
    pad = dilation * (kernel - 1) // 2
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        conv_general_dilated=conv_general_dilated,
        use_bias=use_bias,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=rngs,
    )


def _batch_norm(features: int, *, rngs: nnx.Rngs, axis: int = -1) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, axis=axis, rngs=rngs)


class Downsample(nnx.Module):
    """1×1 projection shortcut (torchvision's ``downsample.0`` conv and ``.1`` BN)."""

    def __init__(self, in_features: int, out_features: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = _conv(in_features, out_features, 1, stride=stride, rngs=rngs)
        self.bn = _batch_norm(out_features, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Two 3×3 convs with a residual connection (ResNet-18/34)."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        stride: int,
        dilation: int,
        first_dilation: int,
        rngs: nnx.Rngs,
    ):
        out_features = planes * EXPANSION["basic"]
        self.conv1 = _conv(
            in_features, planes, 3, stride=stride, dilation=first_dilation, rngs=rngs
        )
        self.bn1 = _batch_norm(planes, rngs=rngs)
        self.conv2 = _conv(planes, out_features, 3, dilation=dilation, rngs=rngs)
        self.bn2 = _batch_norm(out_features, rngs=rngs)
        self.downsample = (
            Downsample(in_features, out_features, stride, rngs=rngs)
            if stride != 1 or in_features != out_features
            else None
        )

    def __call__(self, x: Array) -> Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1×1 → 3×3 (stride, dilation) → 1×1 ×4 with a residual (ResNet-50 v1.5, torchvision)."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        stride: int,
        dilation: int,
        first_dilation: int,
        rngs: nnx.Rngs,
    ):
        del dilation  # a bottleneck has a single 3×3 conv, dilated by first_dilation
        out_features = planes * EXPANSION["bottleneck"]
        self.conv1 = _conv(in_features, planes, 1, rngs=rngs)
        self.bn1 = _batch_norm(planes, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, stride=stride, dilation=first_dilation, rngs=rngs)
        self.bn2 = _batch_norm(planes, rngs=rngs)
        self.conv3 = _conv(planes, out_features, 1, rngs=rngs)
        self.bn3 = _batch_norm(out_features, rngs=rngs)
        self.downsample = (
            Downsample(in_features, out_features, stride, rngs=rngs)
            if stride != 1 or in_features != out_features
            else None
        )

    def __call__(self, x: Array) -> Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class DilatedResNet(nnx.Module):
    """ResNet with output stride 8: stages 3 and 4 dilated by 2 and 4 instead of strided.

    ``__call__`` returns the stage-3 and stage-4 feature maps, both at 1/8 of
    the input resolution.
    """

    def __init__(
        self,
        backbone: Backbone = "resnet50",
        *,
        width: float = 1.0,
        stage_sizes: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        if backbone not in BACKBONES:
            raise ValueError(
                f"EncNet: unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}."
            )
        if not width > 0:
            raise ValueError(f"EncNet: width multiplier must be positive, got {width}.")
        block_type, default_sizes = BACKBONES[backbone]
        stage_sizes = tuple(default_sizes if stage_sizes is None else stage_sizes)
        if len(stage_sizes) != 4 or any(int(n) < 1 for n in stage_sizes):
            raise ValueError(
                f"EncNet: stage_sizes must be 4 positive block counts, got {stage_sizes}."
            )
        self.block_type = block_type
        self.stage_sizes = stage_sizes
        block_cls = Bottleneck if block_type == "bottleneck" else BasicBlock
        expansion = EXPANSION[block_type]
        stem = scaled_channels(64, width)
        self.conv1 = _conv(3, stem, 7, stride=2, rngs=rngs)
        self.bn1 = _batch_norm(stem, rngs=rngs)
        # (stride, dilation) per stage: output stride 8 (Yu & Koltun's dilated ResNet).
        schedule = ((1, 1), (2, 1), (1, 2), (1, 4))
        in_features = stem
        previous_dilation = 1
        stages = []
        for planes, blocks, (stride, dilation) in zip(
            STAGE_CHANNELS, stage_sizes, schedule, strict=True
        ):
            planes = scaled_channels(planes, width)
            layer = []
            for index in range(int(blocks)):
                layer.append(
                    block_cls(
                        in_features,
                        planes,
                        stride=stride if index == 0 else 1,
                        dilation=dilation,
                        # The first block of a dilated stage keeps the previous
                        # dilation (torchvision, PyTorch-Encoding).
                        first_dilation=previous_dilation if index == 0 else dilation,
                        rngs=rngs,
                    )
                )
                in_features = planes * expansion
            stages.append(nnx.List(layer))
            previous_dilation = dilation
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stage3_features = scaled_channels(STAGE_CHANNELS[2], width) * expansion
        self.stage4_features = in_features

    def __call__(self, images: Array) -> tuple[Array, Array]:
        x = jax.nn.relu(self.bn1(self.conv1(images)))
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.layer1:
            x = block(x)
        for block in self.layer2:
            x = block(x)
        for block in self.layer3:
            x = block(x)
        stage3 = x
        for block in self.layer4:
            x = block(x)
        return stage3, x


def encode(features: Array, codewords: Array, smoothing: Array) -> Array:
    """The encoding layer's aggregation (Zhang et al., CVPR 2018, Eq. 1–2).

    For descriptors x_i (i over pixels), codewords c_k and smoothing factors s_k::

        r_ik = x_i − c_k
        a_ik = exp(−s_k ‖r_ik‖²) / Σ_j exp(−s_j ‖r_ij‖²)
        e_k  = Σ_i a_ik r_ik

    computed without materialising the (N, K, D) residuals:
    ‖r_ik‖² = ‖x_i‖² − 2 x_i·c_k + ‖c_k‖² and e_k = Σ_i a_ik x_i − (Σ_i a_ik) c_k.

    Args:
      features: (B, N, D) descriptors.
      codewords: (K, D).
      smoothing: (K,) smoothing factors s_k (PyTorch-Encoding's ``scale`` is −s).

    Returns:
      (B, K, D) aggregated residuals.
    """
    squared_distance = (
        jnp.sum(features**2, axis=-1, keepdims=True)
        - 2.0 * jnp.einsum("bnd,kd->bnk", features, codewords)
        + jnp.sum(codewords**2, axis=-1)
    )
    assignment = jax.nn.softmax(-smoothing * squared_distance, axis=-1)  # over codewords
    weighted_sum = jnp.einsum("bnk,bnd->bkd", assignment, features)
    return weighted_sum - jnp.sum(assignment, axis=1)[..., None] * codewords


class Encoding(nnx.Module):
    """Encoding layer: K learnable codewords and smoothing factors over D-dim features.

    Initialisation as in PyTorch-Encoding: codewords ~ U(±1/√(K·D)), smoothing
    factors ~ U(0, 1) (unconstrained during training, as in the reference).
    """

    def __init__(self, features: int, num_codes: int, *, rngs: nnx.Rngs):
        bound = 1.0 / (num_codes * features) ** 0.5
        self.codewords = nnx.Param(
            jax.random.uniform(rngs.params(), (num_codes, features), minval=-bound, maxval=bound)
        )
        self.smoothing = nnx.Param(jax.random.uniform(rngs.params(), (num_codes,)))

    def __call__(self, x: Array) -> Array:
        """(B, H, W, D) features → (B, K, D) encoded residuals."""
        batch, height, width, depth = x.shape
        return encode(
            x.reshape(batch, height * width, depth), self.codewords[...], self.smoothing[...]
        )


class ContextEncoding(nnx.Module):
    """Context Encoding Module: channel attention from a global encoding, plus the SE head."""

    def __init__(self, features: int, num_classes: int, num_codes: int, *, rngs: nnx.Rngs):
        self.conv = _conv(features, features, 1, rngs=rngs)
        self.bn = _batch_norm(features, rngs=rngs)
        self.encoding = Encoding(features, num_codes, rngs=rngs)
        # BatchNorm1d over the codeword axis of the (B, K, D) encodings.
        self.encoding_bn = _batch_norm(num_codes, axis=1, rngs=rngs)
        self.attention = nnx.Linear(features, features, rngs=rngs)
        self.se_head = nnx.Linear(features, num_classes, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        encoded = self.encoding(jax.nn.relu(self.bn(self.conv(x))))
        context = jnp.mean(jax.nn.relu(self.encoding_bn(encoded)), axis=1)  # (B, D)
        gamma = jax.nn.sigmoid(self.attention(context))
        rescaled = jax.nn.relu(x + x * gamma[:, None, None, :])
        return rescaled, self.se_head(context)


class EncHead(nnx.Module):
    """3×3 conv + BN + ReLU → Context Encoding → dropout → 1×1 conv to class logits."""

    def __init__(
        self,
        in_features: int,
        features: int,
        num_classes: int,
        num_codes: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.conv = _conv(in_features, features, 3, rngs=rngs)
        self.bn = _batch_norm(features, rngs=rngs)
        self.context = ContextEncoding(features, num_classes, num_codes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.classifier = _conv(features, num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        x = jax.nn.relu(self.bn(self.conv(x)))
        x, se_logits = self.context(x)
        return self.classifier(self.dropout(x)), se_logits


class FCNHead(nnx.Module):
    """FCN head (Long et al.): 3×3 conv to in/4 + BN + ReLU + dropout + 1×1 conv."""

    def __init__(self, in_features: int, num_classes: int, dropout: float, *, rngs: nnx.Rngs):
        inner = max(1, in_features // 4)
        self.conv = _conv(in_features, inner, 3, rngs=rngs)
        self.bn = _batch_norm(inner, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.classifier = _conv(inner, num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.classifier(self.dropout(jax.nn.relu(self.bn(self.conv(x)))))


def upsample(logits: Array, height: int, width: int) -> Array:
    """Bilinear resize of (B, h, w, C) logits to (B, height, width, C) (half-pixel centres)."""
    batch, _, _, channels = logits.shape
    return jax.image.resize(logits, (batch, height, width, channels), "bilinear")


class EncNet(nnx.Module):
    """EncNet with an FCN auxiliary head: images → (logits, aux_logits, se_logits).

    Args:
      num_classes: number of semantic classes C (59 for PASCAL Context).
      backbone: ``"resnet50"`` (paper) or ``"resnet18"`` (basic blocks, for CPU runs).
      width: channel multiplier of the backbone and the heads (1.0 = paper).
      num_codes: number of codewords K of the encoding layer (32 in EncNet).
      head_features: channels of the EncHead before the multiplier (512 in EncNet).
      dropout: dropout rate before both classifiers (0.1 in EncNet).
      stage_sizes: optional override of the blocks per stage (e.g. (1, 1, 1, 1)
        for tests); defaults to the backbone's.
      normalize_input: standardise the [0, 1] RGB input with ImageNet's mean
        and std (what torchvision-pretrained weights expect).
      rngs: ``nnx.Rngs`` with ``params`` (and ``dropout`` for training).
    """

    #: Ratio of the input size to the backbone's feature maps.
    output_stride: int = 8

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: Backbone = "resnet50",
        width: float = 1.0,
        num_codes: int = 32,
        head_features: int = 512,
        dropout: float = 0.1,
        stage_sizes: Sequence[int] | None = None,
        normalize_input: bool = True,
        rngs: nnx.Rngs,
    ):
        if num_classes < 1:
            raise ValueError(f"EncNet: num_classes must be ≥ 1, got {num_classes}.")
        if num_codes < 1:
            raise ValueError(f"EncNet: num_codes must be ≥ 1, got {num_codes}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"EncNet: dropout must lie in [0, 1), got {dropout}.")
        self.num_classes = num_classes
        self.normalize_input = normalize_input
        self.backbone = DilatedResNet(backbone, width=width, stage_sizes=stage_sizes, rngs=rngs)
        self.head = EncHead(
            self.backbone.stage4_features,
            scaled_channels(head_features, width),
            num_classes,
            num_codes,
            dropout,
            rngs=rngs,
        )
        self.aux_head = FCNHead(self.backbone.stage3_features, num_classes, dropout, rngs=rngs)

    def features(self, images: Array) -> tuple[Array, Array]:
        """The backbone's (stage 3, stage 4) features, the representation all heads share."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"EncNet: expected NHWC RGB images of shape (B, H, W, 3), got {images.shape}."
            )
        height, width = images.shape[1:3]
        if height % self.output_stride or width % self.output_stride:
            raise ValueError(
                f"EncNet: image size {height}×{width} must be divisible by the output "
                f"stride {self.output_stride}."
            )
        if self.normalize_input:
            images = (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        return self.backbone(images)

    def heads(self, stage3: Array, stage4: Array, height: int, width: int) -> EncNetOutputs:
        """EncHead on stage 4 and the FCN head on stage 3, upsampled to height × width."""
        logits, se_logits = self.head(stage4)
        aux_logits = self.aux_head(stage3)
        return EncNetOutputs(
            logits=upsample(logits, height, width),
            aux_logits=upsample(aux_logits, height, width),
            se_logits=se_logits,
        )

    def __call__(self, images: Array) -> EncNetOutputs:
        """(B, H, W, 3) images in [0, 1], H and W multiples of 8 → :class:`EncNetOutputs`."""
        stage3, stage4 = self.features(images)
        return self.heads(stage3, stage4, images.shape[1], images.shape[2])
