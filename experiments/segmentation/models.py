"""EncNet (Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018) in Flax NNX.

The network of the segmentation experiment of Groenendijk et al. (WACV 2021,
Sec. 4.2, https://arxiv.org/abs/2009.01717):

* the dilated ResNet backbone with output stride 8
  (:class:`experiments.common.backbones.DilatedResNet`, torchvision parameter
  names, so ImageNet weights load with
  :func:`experiments.common.backbones.load_torchvision_backbone`);
* an EncHead on stage 4: 3×3 conv + BN + ReLU, then the Context Encoding
  Module (1×1 conv + BN + ReLU, the encoding layer, BN + ReLU, mean over the
  codewords ē; channel attention γ = sigmoid(W ē) with output ReLU(x + x·γ);
  a second fully connected layer predicts class presence: the SE head), then
  dropout and a 1×1 conv to the class logits;
* an FCN auxiliary head on stage 3 (3×3 conv to C/4 + BN + ReLU + dropout +
  1×1 conv);
* both segmentation heads are upsampled bilinearly to the input size.

A width multiplier and a ResNet-18 (basic block) backbone make CPU-sized runs
possible; ``width=1`` with ``backbone="resnet50"`` is the paper's network.
Images are NHWC float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import Array

from experiments.common.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    DilatedResNet,
    batch_norm,
    conv,
    scaled_channels,
)


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
        self.conv = conv(features, features, 1, rngs=rngs)
        self.bn = batch_norm(features, rngs=rngs)
        self.encoding = Encoding(features, num_codes, rngs=rngs)
        # BatchNorm1d over the codeword axis of the (B, K, D) encodings.
        self.encoding_bn = batch_norm(num_codes, axis=1, rngs=rngs)
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
        self.conv = conv(in_features, features, 3, rngs=rngs)
        self.bn = batch_norm(features, rngs=rngs)
        self.context = ContextEncoding(features, num_classes, num_codes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.classifier = conv(features, num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        x = jax.nn.relu(self.bn(self.conv(x)))
        x, se_logits = self.context(x)
        return self.classifier(self.dropout(x)), se_logits


class FCNHead(nnx.Module):
    """FCN head (Long et al.): 3×3 conv to in/4 + BN + ReLU + dropout + 1×1 conv."""

    def __init__(self, in_features: int, num_classes: int, dropout: float, *, rngs: nnx.Rngs):
        inner = max(1, in_features // 4)
        self.conv = conv(in_features, inner, 3, rngs=rngs)
        self.bn = batch_norm(inner, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.classifier = conv(inner, num_classes, 1, use_bias=True, rngs=rngs)

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
