"""Losses shared by the dense experiments: the pixel-wise cross-entropy of class logits.

Pixels whose label is neither ``ignore_label`` nor a class in [0, C) are data
errors; they are excluded from the loss rather than indexing out of range.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jax import Array


def check_labels(labels: Array, spatial: tuple[int, ...], what: str) -> None:
    """Integer labels of the logits' (B, H, W), or an error naming ``what`` and the shapes."""
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{what}: labels must be integer class ids, got dtype {labels.dtype}.")
    if labels.shape != spatial:
        raise ValueError(
            f"{what}: labels have shape {labels.shape} but the logits need (B, H, W) = {spatial}."
        )


def valid_pixels(labels: Array, num_classes: int, ignore_label: int = 255) -> Array:
    """Boolean mask of the pixels that carry a class in [0, num_classes)."""
    return (labels != ignore_label) & (labels >= 0) & (labels < num_classes)


def pixel_cross_entropy(logits: Array, labels: Array, ignore_label: int = 255) -> Array:
    """Mean softmax cross-entropy over the labelled pixels.

    ``L = −(1/|V|) Σ_{p∈V} log softmax(z_p)[y_p]`` with V the pixels whose
    label is a class id; 0 when a batch has no labelled pixel.

    Args:
      logits: (B, H, W, C).
      labels: (B, H, W) integer class ids; ``ignore_label`` is skipped.
      ignore_label: the void label (255 in PASCAL Context and our data).
    """
    if logits.ndim != 4:
        raise ValueError(f"pixel_cross_entropy: logits must be (B, H, W, C), got {logits.shape}.")
    check_labels(labels, logits.shape[:3], "pixel_cross_entropy")
    num_classes = logits.shape[-1]
    valid = valid_pixels(labels, num_classes, ignore_label)
    safe_labels = jnp.where(valid, labels, 0)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), safe_labels
    )
    count = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.maximum(count, 1)
