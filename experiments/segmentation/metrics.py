"""Segmentation metrics from a confusion matrix: pixel accuracy and mean IoU.

The confusion matrix ``M`` is (C, C) with rows = ground truth and columns =
prediction; ``M[i, j]`` counts the labelled pixels of class i predicted as j.
Pixels labelled ``ignore_label`` (or any id outside [0, C)) are not counted.

Background (the paper: "Background pixels are ignored during evaluation";
EncNet's PASCAL Context evaluation does the same):

* PASCAL Context (59 classes, mmseg layout): the reader maps the background
  to the ignore label, so it never enters the matrix; if a 60-class layout
  with background = class 0 is used instead, pass ``background_class=0``;
* synthetic driving scenes: no class is background (sky, road, buildings …
  are all real classes), so ``background_class=None``.

With a ``background_class`` b, pixels whose *ground truth* is b are dropped
(row b), and b is left out of the IoU average; a non-background pixel
predicted as b still counts as an error. Then::

    pACC = Σ_i M_ii / Σ_ij M_ij
    IoU_c = M_cc / (Σ_j M_cj + Σ_i M_ic − M_cc)
    mIoU = mean of IoU_c over the classes with a non-empty union

Classes that neither occur nor are predicted are left out of the mean
(mmseg's nan-mean), rather than counted as IoU 0 as PyTorch-Encoding does.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array


def confusion_matrix(
    labels: Array, predictions: Array, num_classes: int, ignore_label: int = 255
) -> Array:
    """(C, C) int32 confusion matrix of one batch (rows = truth, columns = prediction).

    Jit-able; sum the batch matrices on the host in int64 to count billions of pixels.
    """
    if labels.shape != predictions.shape:
        raise ValueError(
            f"confusion_matrix: labels {labels.shape} and predictions {predictions.shape} "
            "must have the same shape."
        )
    for name, array in (("labels", labels), ("predictions", predictions)):
        if not jnp.issubdtype(array.dtype, jnp.integer):
            raise TypeError(f"confusion_matrix: {name} must be integers, got {array.dtype}.")
    labels = labels.reshape(-1).astype(jnp.int32)
    predictions = predictions.reshape(-1).astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    valid &= (predictions >= 0) & (predictions < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, 0)
    counts = (
        jnp.zeros((num_classes * num_classes,), jnp.int32).at[index].add(valid.astype(jnp.int32))
    )
    return counts.reshape(num_classes, num_classes)


def predictions_from_logits(logits: Array) -> Array:
    """Per-pixel arg-max class of (B, H, W, C) logits."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _without_background(matrix: np.ndarray, background_class: int | None) -> np.ndarray:
    matrix = np.asarray(matrix, np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {matrix.shape}.")
    if background_class is None:
        return matrix
    if not 0 <= background_class < matrix.shape[0]:
        raise ValueError(
            f"background_class {background_class} is not a class of a {matrix.shape[0]}-class "
            "confusion matrix."
        )
    matrix = matrix.copy()
    matrix[background_class, :] = 0  # background ground truth is not evaluated
    return matrix


def pixel_accuracy(matrix: np.ndarray, background_class: int | None = None) -> float:
    """Fraction of the evaluated pixels whose prediction is right (nan if there are none)."""
    matrix = _without_background(matrix, background_class)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total > 0 else float("nan")


def per_class_iou(matrix: np.ndarray, background_class: int | None = None) -> np.ndarray:
    """(C,) IoU per class; nan for classes with an empty union and for the background."""
    matrix = _without_background(matrix, background_class)
    true_positive = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    iou = np.full(matrix.shape[0], np.nan)
    np.divide(true_positive, union, out=iou, where=union > 0)
    if background_class is not None:
        iou[background_class] = np.nan
    return iou


def mean_iou(matrix: np.ndarray, background_class: int | None = None) -> float:
    """Mean IoU over the classes with a non-empty union, background excluded."""
    iou = per_class_iou(matrix, background_class)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


class ConfusionMatrix:
    """Host-side int64 accumulator of batch confusion matrices.

    Usage::

        accumulator = ConfusionMatrix(num_classes=3)
        accumulator.add(confusion_matrix(labels, predictions, 3))  # per batch
        accumulator.summary()  # {"pixel_accuracy": ..., "mean_iou": ...}
    """

    def __init__(self, num_classes: int, background_class: int | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}.")
        self.num_classes = num_classes
        self.background_class = background_class
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def add(self, batch_matrix: Array | np.ndarray) -> None:
        batch_matrix = np.asarray(jax.device_get(batch_matrix), np.int64)
        if batch_matrix.shape != self.matrix.shape:
            raise ValueError(
                f"ConfusionMatrix.add: got shape {batch_matrix.shape}, expected "
                f"{self.matrix.shape}."
            )
        self.matrix += batch_matrix

    def summary(self) -> dict[str, float]:
        return {
            "pixel_accuracy": pixel_accuracy(self.matrix, self.background_class),
            "mean_iou": mean_iou(self.matrix, self.background_class),
        }


def save_confusion_matrix(
    directory: str | os.PathLike[str],
    matrix: np.ndarray,
    class_names: Sequence[str] | None = None,
    background_class: int | None = None,
    prefix: str = "confusion_matrix",
) -> dict[str, str]:
    """Write ``<prefix>.npy`` (exact counts), ``<prefix>.csv`` and ``<prefix>_iou.json``.

    Returns:
      The written paths by kind ("npy", "csv", "json").
    """
    matrix = np.asarray(matrix, np.int64)
    num_classes = matrix.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for a {num_classes}-class matrix.")
    os.makedirs(directory, exist_ok=True)
    paths = {
        "npy": os.path.join(directory, f"{prefix}.npy"),
        "csv": os.path.join(directory, f"{prefix}.csv"),
        "json": os.path.join(directory, f"{prefix}_iou.json"),
    }
    np.save(paths["npy"], matrix)
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["truth \\ prediction", *names])
        for name, row in zip(names, matrix, strict=True):
            writer.writerow([name, *row.tolist()])
    iou = per_class_iou(matrix, background_class)
    with open(paths["json"], "w") as handle:
        json.dump(
            {
                "pixel_accuracy": pixel_accuracy(matrix, background_class),
                "mean_iou": mean_iou(matrix, background_class),
                "background_class": background_class,
                "per_class_iou": {
                    name: (None if np.isnan(value) else float(value))
                    for name, value in zip(names, iou, strict=True)
                },
            },
            handle,
            indent=2,
        )
    return paths
