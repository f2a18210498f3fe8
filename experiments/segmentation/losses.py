"""The three losses of EncNet and their static weightings (Zhang et al., CVPR 2018, https://arxiv.org/abs/1803.08904).

* CE: pixel-wise softmax cross-entropy of the main (EncHead) logits, averaged
  over the labelled pixels (``ignore_label`` pixels excluded);
* SE: Semantic Encoding loss, the binary cross-entropy of the class-presence
  logits against the set of classes that occur in each label map, averaged
  over images and classes (Zhang et al., CVPR 2018, Sec. 3.2);
* AUX: the same pixel cross-entropy for the FCN head on stage 3.

EncNet's training objective is CE + 0.2·SE + 0.2·AUX; the WACV 2021 paper
normalizes these hand-tuned weights to sum to one. Single-loss baselines are
static weightings with one-hot weights.

Pixels whose label is neither ``ignore_label`` nor a class in [0, C) are data
errors; they are excluded from every loss (as ``torch.histc`` excludes them
from EncNet's SE targets) rather than indexing out of range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import Array

from experiments.common.losses import pixel_cross_entropy, valid_pixels

#: The losses, in the order used by weightings, logs and tables.
LOSS_NAMES: tuple[str, ...] = ("ce", "se", "aux")
#: EncNet's training defaults (Zhang et al., 2018): CE 1, SE 0.2, AUX 0.2.
ENCNET_LOSS_WEIGHTS: dict[str, float] = {"ce": 1.0, "se": 0.2, "aux": 0.2}


def presence_targets(labels: Array, num_classes: int, ignore_label: int = 255) -> Array:
    """(B, C) float32 targets of the SE loss: 1 where class c occurs in image b's labels."""
    valid = valid_pixels(labels, num_classes, ignore_label)
    flat_labels = jnp.where(valid, labels, 0).reshape(labels.shape[0], -1)
    flat_valid = valid.reshape(labels.shape[0], -1)

    def one_image(image_labels: Array, image_valid: Array) -> Array:
        counts = (
            jnp.zeros((num_classes,), jnp.int32).at[image_labels].add(image_valid.astype(jnp.int32))
        )
        return (counts > 0).astype(jnp.float32)

    return jax.vmap(one_image)(flat_labels, flat_valid)


def semantic_encoding_loss(se_logits: Array, labels: Array, ignore_label: int = 255) -> Array:
    """SE loss: mean binary cross-entropy of sigmoid(se_logits) vs. the classes present.

    ``L = −(1/(B·C)) Σ_{b,c} [t_bc log σ(z_bc) + (1 − t_bc) log(1 − σ(z_bc))]``.
    """
    if se_logits.ndim != 2:
        raise ValueError(
            f"semantic_encoding_loss: se_logits must be (B, C), got {se_logits.shape}."
        )
    if labels.ndim != 3 or labels.shape[0] != se_logits.shape[0]:
        raise ValueError(
            f"semantic_encoding_loss: labels must be (B, H, W) with B = {se_logits.shape[0]}, "
            f"got {labels.shape}."
        )
    targets = presence_targets(labels, se_logits.shape[-1], ignore_label)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(se_logits.astype(jnp.float32), targets))


def encnet_losses(
    outputs: Sequence[Array],
    labels: Array,
    num_classes: int,
    ignore_label: int = 255,
) -> dict[str, Array]:
    """The three EncNet losses ``{"ce", "se", "aux"}`` as float32 scalars.

    Args:
      outputs: ``(logits, aux_logits, se_logits)`` as returned by ``EncNet``.
      labels: (B, H, W) integer labels at the logits' resolution.
      num_classes: C; checked against the logits.
      ignore_label: the void label.
    """
    if len(outputs) != 3:
        raise ValueError(
            "encnet_losses: outputs must be (logits, aux_logits, se_logits), "
            f"got {len(outputs)} arrays."
        )
    logits, aux_logits, se_logits = outputs
    for name, array in (("logits", logits), ("aux_logits", aux_logits), ("se_logits", se_logits)):
        if array.shape[-1] != num_classes:
            raise ValueError(
                f"encnet_losses: {name} has {array.shape[-1]} classes (shape {array.shape}), "
                f"expected num_classes = {num_classes}."
            )
    return {
        "ce": pixel_cross_entropy(logits, labels, ignore_label),
        "se": semantic_encoding_loss(se_logits, labels, ignore_label),
        "aux": pixel_cross_entropy(aux_logits, labels, ignore_label),
    }


def normalized(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale the weights to sum to one, in :data:`LOSS_NAMES` order."""
    unknown = set(weights) - set(LOSS_NAMES)
    if unknown:
        raise ValueError(f"unknown EncNet losses {sorted(unknown)}; they are {LOSS_NAMES}.")
    total = sum(weights.get(name, 0.0) for name in LOSS_NAMES)
    if not total > 0:
        raise ValueError(f"loss weights must have a positive sum, got {dict(weights)}.")
    return {name: weights.get(name, 0.0) / total for name in LOSS_NAMES}


def hand_tuned_weights() -> dict[str, float]:
    """EncNet's CE 1, SE 0.2, AUX 0.2 normalized to sum 1: 5/7, 1/7, 1/7."""
    return normalized(ENCNET_LOSS_WEIGHTS)
