"""One shared encoder–decoder with three dense heads (segmentation, depth, normals), Flax NNX.

The network of the multi-task pixelwise experiment (the setting of LSB, Lee et
al. ICCV 2021, and of MTAN/LibMTL on NYUv2): every task shares all of the
network except a small head.

* Encoder: the dilated ResNet shared with the segmentation experiment
  (:class:`experiments.common.backbones.DilatedResNet`, output stride 8,
  torchvision parameter names, so ImageNet weights load with
  :func:`experiments.common.backbones.load_torchvision_backbone`);
  a width multiplier and a ResNet-18 backbone make CPU-sized runs possible.
* Shared decoder (DeepLabv3+-style): a 3×3 conv + BN + ReLU on stage 4 (1/8),
  bilinear ×2 upsampling, concatenation with a 1×1 projection of stage 1
  (1/4), and a 3×3 conv + BN + ReLU: the shared representation
  ``z = model.features(images)`` of shape (B, H/4, W/4, D).
* Heads, one per task, on z: 3×3 conv + BN + ReLU, then a 1×1 conv, upsampled
  bilinearly to the input size:

  - ``segmentation``: (B, H, W, C) class logits;
  - ``depth``: (B, H, W) depth in metres, ``depth_scale · raw`` (a linear
    output as in MTAN; ``depth_scale`` only sets the units the head works in,
    so that a scene whose depths are tens of metres needs no huge bias);
  - ``normals``: (B, H, W, 3) unit vectors, ``raw / ‖raw‖``.

For the gradient-based schemes:

* MGDA-UB's shared representation is z, the decoder output before the heads
  (``model.heads(z, H, W) == model(images)`` with ``z = model.features(images)``);
* GradNorm's shared layer is the kernel of the decoder's last conv,
  :data:`SHARED_LAYER` = ``("decoder", "fuse", "conv", "kernel")``, the last
  parameter every task depends on.

Images are NHWC float32 in [0, 1], H and W multiples of 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from experiments.common import backbones

#: Parameter path of GradNorm's shared layer: the last conv of the shared decoder.
SHARED_LAYER: tuple[str, ...] = ("decoder", "fuse", "conv", "kernel")
#: Ratio of the input size to the backbone's deepest feature map.
OUTPUT_STRIDE = 8
#: Avoids 0/0 when normalizing a zero normal prediction.
NORMAL_EPSILON = 1e-12
TASKS: tuple[str, ...] = ("segmentation", "depth", "normals")


class MultiTaskOutputs(NamedTuple):
    """The three predictions at input resolution.

    Attributes:
      segmentation: (B, H, W, C) class logits.
      depth: (B, H, W) depth in metres.
      normals: (B, H, W, 3) unit surface normals (camera coordinates).
    """

    segmentation: Array
    depth: Array
    normals: Array


class ConvBNReLU(nnx.Module):
    """k×k conv (no bias, "same" padding) → batch norm → ReLU."""

    def __init__(self, in_features: int, out_features: int, kernel: int, *, rngs: nnx.Rngs):
        self.conv = backbones.conv(in_features, out_features, kernel, rngs=rngs)
        self.bn = backbones.batch_norm(out_features, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def resize_bilinear(x: Array, height: int, width: int) -> Array:
    """Bilinear resize of (B, h, w, C) maps to (B, height, width, C)."""
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), "bilinear")


class SharedDecoder(nnx.Module):
    """DeepLabv3+-style decoder: stage 4 (1/8) upsampled and fused with stage 1 (1/4)."""

    def __init__(self, deep_features: int, shallow_features: int, features: int, *, rngs: nnx.Rngs):
        self.context = ConvBNReLU(deep_features, features, 3, rngs=rngs)
        # The shallow projection is narrow so that the fused map is dominated by context.
        self.shallow_features = max(1, features // 4)
        self.project = ConvBNReLU(shallow_features, self.shallow_features, 1, rngs=rngs)
        self.fuse = ConvBNReLU(features + self.shallow_features, features, 3, rngs=rngs)

    def __call__(self, shallow: Array, deep: Array) -> Array:
        height, width = shallow.shape[1:3]
        context = resize_bilinear(self.context(deep), height, width)
        return self.fuse(jnp.concatenate([context, self.project(shallow)], axis=-1))


class DenseHead(nnx.Module):
    """3×3 conv + BN + ReLU → 1×1 conv (with bias) to ``out_features`` channels."""

    def __init__(self, in_features: int, features: int, out_features: int, *, rngs: nnx.Rngs):
        self.hidden = ConvBNReLU(in_features, features, 3, rngs=rngs)
        self.output = nnx.Conv(features, out_features, (1, 1), rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.output(self.hidden(x))


class MultiTaskNet(nnx.Module):
    """Shared dilated-ResNet encoder–decoder with segmentation, depth and normals heads.

    Args:
      num_classes: number of semantic classes C (13 on NYUv2, 7 on the synthetic scenes).
      backbone: ``"resnet18"`` (basic blocks) or ``"resnet50"`` (bottlenecks).
      width: channel multiplier of the backbone, decoder and heads (1.0 = full size).
      decoder_features: channels of the shared representation before the multiplier.
      head_features: channels of each head's hidden layer before the multiplier.
      stage_sizes: optional override of the backbone's blocks per stage.
      depth_scale: the depth head predicts depth in units of ``depth_scale`` metres.
      normalize_input: standardise the input with ImageNet statistics (what
        torchvision-pretrained backbones expect).
      rngs: ``nnx.Rngs`` with a ``params`` stream.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: backbones.Backbone = "resnet18",
        width: float = 1.0,
        decoder_features: int = 256,
        head_features: int = 128,
        stage_sizes: Sequence[int] | None = None,
        depth_scale: float = 1.0,
        normalize_input: bool = True,
        rngs: nnx.Rngs,
    ):
        if num_classes < 1:
            raise ValueError(f"MultiTaskNet: num_classes must be ≥ 1, got {num_classes}.")
        if not depth_scale > 0:
            raise ValueError(f"MultiTaskNet: depth_scale must be positive, got {depth_scale}.")
        self.num_classes = num_classes
        self.depth_scale = float(depth_scale)
        self.normalize_input = normalize_input
        self.backbone = backbones.DilatedResNet(
            backbone, width=width, stage_sizes=stage_sizes, rngs=rngs
        )
        stage1_features = (
            backbones.scaled_channels(backbones.STAGE_CHANNELS[0], width)
            * backbones.EXPANSION[self.backbone.block_type]
        )
        features = backbones.scaled_channels(decoder_features, width)
        hidden = backbones.scaled_channels(head_features, width)
        self.representation_features = features
        self.decoder = SharedDecoder(
            self.backbone.stage4_features, stage1_features, features, rngs=rngs
        )
        self.segmentation_head = DenseHead(features, hidden, num_classes, rngs=rngs)
        self.depth_head = DenseHead(features, hidden, 1, rngs=rngs)
        self.normals_head = DenseHead(features, hidden, 3, rngs=rngs)

    def features(self, images: Array) -> Array:
        """The shared representation z: (B, H/4, W/4, D), the decoder output before the heads."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"MultiTaskNet: expected NHWC RGB images (B, H, W, 3), got {images.shape}."
            )
        height, width = images.shape[1:3]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(
                f"MultiTaskNet: image size {height}×{width} must be divisible by {OUTPUT_STRIDE}."
            )
        if self.normalize_input:
            mean = jnp.asarray(backbones.IMAGENET_MEAN)
            std = jnp.asarray(backbones.IMAGENET_STD)
            images = (images - mean) / std
        stage1, _, stage4 = self.backbone.stages(images)
        return self.decoder(stage1, stage4)

    def heads(self, representation: Array, height: int, width: int) -> MultiTaskOutputs:
        """The three task heads on z, upsampled to ``height × width``."""
        if representation.ndim != 4 or representation.shape[-1] != self.representation_features:
            raise ValueError(
                "MultiTaskNet.heads: expected a representation (B, h, w, "
                f"{self.representation_features}), got {representation.shape}."
            )
        logits = resize_bilinear(self.segmentation_head(representation), height, width)
        depth = resize_bilinear(self.depth_head(representation), height, width)[..., 0]
        raw_normals = resize_bilinear(self.normals_head(representation), height, width)
        norm = jnp.sqrt(jnp.sum(raw_normals**2, axis=-1, keepdims=True) + NORMAL_EPSILON)
        return MultiTaskOutputs(
            segmentation=logits, depth=self.depth_scale * depth, normals=raw_normals / norm
        )

    def __call__(self, images: Array) -> MultiTaskOutputs:
        """(B, H, W, 3) images in [0, 1] → :class:`MultiTaskOutputs` at H × W."""
        return self.heads(self.features(images), images.shape[1], images.shape[2])
