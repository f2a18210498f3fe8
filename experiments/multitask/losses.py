"""The three task losses of the multi-task pixelwise experiment (MTAN / LibMTL conventions).

With V the valid pixels of each target:

* ``segmentation``: softmax cross-entropy averaged over the labelled pixels
  (label ≠ ``ignore_label``), :func:`experiments.common.losses.pixel_cross_entropy`;
* ``depth``: L1, ``(1/|V|) Σ_{p∈V} |d̂_p − d_p|`` with V = {d_p > 0} (0 marks
  unknown depth in the data contract);
* ``normals``: ``1 − (1/|V|) Σ_{p∈V} ⟨n̂_p, n_p⟩`` (one minus the mean cosine
  similarity of unit vectors) with V = {‖n_p‖ > 0}.

Each loss is 0 on a batch without valid pixels (so a step never produces
NaN from 0/0). Shapes are checked at trace time.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
from jax import Array

from experiments.common.losses import pixel_cross_entropy
from experiments.multitask.models import TASKS, MultiTaskOutputs


def _check_shape(name: str, prediction: Array, target: Array) -> None:
    if prediction.shape != target.shape:
        raise ValueError(
            f"{name}: prediction {prediction.shape} and target {target.shape} must have the "
            "same shape."
        )


def segmentation_loss(logits: Array, labels: Array, ignore_label: int = 255) -> Array:
    """Mean cross-entropy of (B, H, W, C) logits over the labelled pixels of (B, H, W) labels."""
    return pixel_cross_entropy(logits, labels, ignore_label)


def valid_depth(depth: Array) -> Array:
    """Pixels with a known depth (> 0 and finite)."""
    return (depth > 0) & jnp.isfinite(depth)


def depth_loss(prediction: Array, target: Array) -> Array:
    """Mean absolute error of (B, H, W) depths over the pixels with a known target depth."""
    _check_shape("depth_loss", prediction, target)
    if prediction.ndim != 3:
        raise ValueError(f"depth_loss: expected (B, H, W) depths, got {prediction.shape}.")
    valid = valid_depth(target)
    safe_target = jnp.where(valid, target, 0.0)
    errors = jnp.where(valid, jnp.abs(prediction - safe_target), 0.0)
    return jnp.sum(errors) / jnp.maximum(jnp.sum(valid), 1)


def valid_normals(normals: Array) -> Array:
    """Pixels whose target normal is non-zero (0 marks invalid normals)."""
    return jnp.any(normals != 0, axis=-1) & jnp.all(jnp.isfinite(normals), axis=-1)


def normals_loss(prediction: Array, target: Array) -> Array:
    """``1 − mean cosine similarity`` of (B, H, W, 3) unit normals over the valid target pixels.

    ``prediction`` is expected unit-length (the model normalizes it); the target
    is used as stored (unit length in the data contract).
    """
    _check_shape("normals_loss", prediction, target)
    if prediction.ndim != 4 or prediction.shape[-1] != 3:
        raise ValueError(f"normals_loss: expected (B, H, W, 3) normals, got {prediction.shape}.")
    valid = valid_normals(target)
    safe_target = jnp.where(valid[..., None], target, 0.0)
    cosine = jnp.sum(prediction * safe_target, axis=-1)
    return 1.0 - jnp.sum(jnp.where(valid, cosine, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def multitask_losses(
    outputs: MultiTaskOutputs, batch: Mapping[str, Array], ignore_label: int = 255
) -> dict[str, Array]:
    """``{"segmentation", "depth", "normals"}`` losses of ``outputs`` against a contract batch."""
    missing = [key for key in ("semantic", "depth", "normals") if key not in batch]
    if missing:
        raise KeyError(
            f"multitask_losses: the batch lacks {missing} (it has {sorted(batch)}); the "
            "multi-task experiment needs a source with semantic, depth and normals."
        )
    return {
        "segmentation": segmentation_loss(outputs.segmentation, batch["semantic"], ignore_label),
        "depth": depth_loss(outputs.depth, batch["depth"]),
        "normals": normals_loss(outputs.normals, batch["normals"]),
    }


def equal_weights() -> dict[str, float]:
    """1/3 per task: the static weighting MTAN and LibMTL use as their baseline."""
    return {task: 1.0 / len(TASKS) for task in TASKS}
