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
and b is left out of the IoU average (the formulas, and the classes left out
of the mean: :mod:`experiments.common.metrics`, shared with the multi-task
experiment).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from experiments.common.metrics import mean_iou, per_class_iou, pixel_accuracy


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


class SegmentationMetric:
    """The evaluation of a segmentation network: the confusion matrix of its main head.

    Args:
      num_classes: C.
      ignore_label: the void label of the targets (not counted).
      background_class: excluded from pACC and mIoU (see the module docstring), or None.
      class_names: the C names, for the saved matrix.
      source: the dataset's name, for the error messages.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_label: int,
        background_class: int | None,
        class_names: Sequence[str],
        source: str,
    ):
        self.confusion = ConfusionMatrix(num_classes, background_class)
        self.ignore_label = ignore_label
        self.class_names = list(class_names)
        self.source = source

    def add(self, batch: Mapping[str, np.ndarray], predictions: np.ndarray) -> None:
        """Count (B, H, W) predicted class ids against the batch's ``"semantic"`` labels."""
        self.confusion.add(
            confusion_matrix(
                batch["semantic"], predictions, self.confusion.num_classes, self.ignore_label
            )
        )

    def summary(self) -> dict[str, float]:
        if self.confusion.matrix.sum() == 0:
            raise ValueError(f"The evaluation split of {self.source!r} has no labelled pixel.")
        return self.confusion.summary()

    def save(self, directory: Path) -> None:
        """``confusion_matrix.npy|.csv`` and the per-class IoUs (:func:`save_confusion_matrix`)."""
        save_confusion_matrix(
            directory, self.confusion.matrix, self.class_names, self.confusion.background_class
        )
