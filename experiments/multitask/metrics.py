"""Metrics of the multi-task pixelwise experiment (NumPy, hand-checkable) and Δm%.

Per task, as in MTAN (Liu et al. CVPR 2019) and LibMTL's NYUv2 benchmark:

* segmentation, from the confusion matrix M (rows truth, columns prediction;
  ``ignore_label`` pixels not counted): ``mean_iou`` = mean over classes with a
  non-empty union of M_cc / (Σ_j M_cj + Σ_i M_ic − M_cc), ``pixel_accuracy`` =
  Σ_c M_cc / Σ M (both from :mod:`experiments.common.metrics`);
* depth, over the pixels with a known depth d > 0: ``abs_error`` = mean |d̂ − d|
  (metres), ``rel_error`` = mean |d̂ − d| / d;
* normals, over the pixels with a non-zero target normal: the angle
  θ = arccos⟨n̂/‖n̂‖, n⟩ in degrees; ``mean_angle``, ``median_angle`` and the
  fractions of pixels with θ < 11.25°, 22.5°, 30° (``within_11.25`` …).

All means are over all valid pixels of the split (not means of per-image means).

Δm% (Maninis et al. CVPR 2019; Liu et al.'s MTL benchmarks): the mean relative
change of a method's metrics M_m against a baseline's M_b, signed so that
improvements are negative::

    Δm% = (1/N) Σ_m (−1)^{h_m} (M_m − M_b) / M_b × 100,

with h_m = 1 if higher is better for metric m (mIoU, accuracies), else 0
(errors, angles). Lower Δm is better; the baseline itself has Δm = 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from experiments.common import metrics as confusion_scores

#: Angle thresholds (degrees) of the normals accuracies.
ANGLE_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)

#: Every reported metric and whether higher is better, grouped by task (table order).
HIGHER_IS_BETTER: dict[str, bool] = {
    "mean_iou": True,
    "pixel_accuracy": True,
    "abs_error": False,
    "rel_error": False,
    "mean_angle": False,
    "median_angle": False,
    **{f"within_{threshold:g}": True for threshold in ANGLE_THRESHOLDS},
}
#: The metrics of each task (their loss names), for single-task baselines.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("mean_iou", "pixel_accuracy"),
    "depth": ("abs_error", "rel_error"),
    "normals": (
        "mean_angle",
        "median_angle",
        *(f"within_{threshold:g}" for threshold in ANGLE_THRESHOLDS),
    ),
}


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_label: int = 255
) -> np.ndarray:
    """(C, C) int64 counts: ``M[i, j]`` = labelled pixels of class i predicted as j.

    Pixels labelled ``ignore_label`` or outside [0, C) are not counted.
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            f"confusion_matrix: labels {labels.shape} and predictions {predictions.shape} "
            "must have the same shape."
        )
    labels = labels.reshape(-1).astype(np.int64)
    predictions = predictions.reshape(-1).astype(np.int64)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    if np.any((predictions[valid] < 0) | (predictions[valid] >= num_classes)):
        raise ValueError(f"confusion_matrix: predictions outside [0, {num_classes}).")
    index = labels[valid] * num_classes + predictions[valid]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def depth_error_sums(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float, int]:
    """``(Σ|d̂ − d|, Σ|d̂ − d|/d, count)`` over the pixels with target d > 0."""
    prediction = np.asarray(prediction, np.float64)
    target = np.asarray(target, np.float64)
    if prediction.shape != target.shape:
        raise ValueError(
            f"depth errors: prediction {prediction.shape} and target {target.shape} differ."
        )
    valid = np.isfinite(target) & (target > 0)
    absolute = np.abs(prediction[valid] - target[valid])
    return float(absolute.sum()), float((absolute / target[valid]).sum()), int(valid.sum())


def angle_errors(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Angles in degrees between predicted and target normals, at the valid target pixels.

    The prediction is normalized first (a zero prediction counts as 90°);
    targets are unit vectors, 0 where invalid.
    """
    prediction = np.asarray(prediction, np.float64)
    target = np.asarray(target, np.float64)
    if prediction.shape != target.shape or prediction.shape[-1:] != (3,):
        raise ValueError(
            f"angle_errors: expected two (..., 3) arrays of one shape, got {prediction.shape} "
            f"and {target.shape}."
        )
    valid = np.any(target != 0, axis=-1) & np.all(np.isfinite(target), axis=-1)
    predicted = prediction[valid]
    norm = np.linalg.norm(predicted, axis=-1, keepdims=True)
    predicted = np.divide(predicted, norm, out=np.zeros_like(predicted), where=norm > 0)
    truth = target[valid] / np.linalg.norm(target[valid], axis=-1, keepdims=True)
    cosine = np.clip(np.sum(predicted * truth, axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cosine))


def normals_summary(angles: np.ndarray) -> dict[str, float]:
    """Mean and median angle (degrees) and the fractions within each threshold."""
    angles = np.asarray(angles, np.float64).reshape(-1)
    if angles.size == 0:
        nan = float("nan")
        return {
            "mean_angle": nan,
            "median_angle": nan,
            **{f"within_{t:g}": nan for t in ANGLE_THRESHOLDS},
        }
    return {
        "mean_angle": float(angles.mean()),
        "median_angle": float(np.median(angles)),
        **{f"within_{t:g}": float(np.mean(angles < t)) for t in ANGLE_THRESHOLDS},
    }


class MultiTaskMetrics:
    """Accumulates the metrics of all three tasks over batches.

    Usage::

        accumulator = MultiTaskMetrics(num_classes=13)
        for batch, predictions in ...:
            accumulator.add(batch, {"labels": ..., "depth": ..., "normals": ...})
        accumulator.summary()  # {"mean_iou": ..., ..., "within_30": ...}
    """

    def __init__(self, num_classes: int, ignore_label: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}.")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self._absolute = 0.0
        self._relative = 0.0
        self._depth_count = 0
        self._angles: list[np.ndarray] = []

    def add(self, targets: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray]) -> None:
        """Add one batch of predictions (``"labels"``: class ids, ``"depth"``: metres,
        ``"normals"``) against ``targets``."""
        self.confusion += confusion_matrix(
            targets["semantic"], predictions["labels"], self.num_classes, self.ignore_label
        )
        absolute, relative, count = depth_error_sums(predictions["depth"], targets["depth"])
        self._absolute += absolute
        self._relative += relative
        self._depth_count += count
        angles = angle_errors(predictions["normals"], targets["normals"])
        self._angles.append(angles.astype(np.float32))

    def summary(self) -> dict[str, float]:
        """Every metric of :data:`HIGHER_IS_BETTER` (nan where the depth or normals had no
        valid pixel; an error when no pixel is labelled)."""
        if self.confusion.sum() == 0:
            raise ValueError("the evaluation split has no labelled pixel.")
        count = self._depth_count
        angles = np.concatenate(self._angles) if self._angles else np.zeros((0,))
        return {
            "mean_iou": confusion_scores.mean_iou(self.confusion),
            "pixel_accuracy": confusion_scores.pixel_accuracy(self.confusion),
            "abs_error": self._absolute / count if count else float("nan"),
            "rel_error": self._relative / count if count else float("nan"),
            **normals_summary(angles),
        }

    def save(self, directory: Path) -> None:
        """Nothing besides the summary: every metric is in it."""
        del directory


def delta_m(
    method: Mapping[str, float],
    baseline: Mapping[str, float],
    metrics: Sequence[str] | None = None,
    higher_is_better: Mapping[str, bool] | None = None,
) -> float:
    """Δm% of ``method`` against ``baseline`` (lower is better; see the module docstring).

    Args:
      method, baseline: ``{metric: value}``.
      metrics: the metrics to average over (default: all of :data:`HIGHER_IS_BETTER`).
      higher_is_better: the direction of each metric (default :data:`HIGHER_IS_BETTER`).

    Raises:
      ValueError: a metric without a direction, missing from either side, not
        finite, or with a zero baseline.
    """
    directions = dict(HIGHER_IS_BETTER if higher_is_better is None else higher_is_better)
    names = list(directions if metrics is None else metrics)
    if not names:
        raise ValueError("delta_m: no metrics to compare.")
    terms = []
    for name in names:
        if name not in directions:
            raise ValueError(f"delta_m: no direction (higher/lower is better) for {name!r}.")
        if name not in method or name not in baseline:
            raise ValueError(f"delta_m: metric {name!r} is missing from the method or baseline.")
        value, reference = float(method[name]), float(baseline[name])
        if not (np.isfinite(value) and np.isfinite(reference)):
            raise ValueError(f"delta_m: {name!r} is not finite ({value} vs {reference}).")
        if reference == 0:
            raise ValueError(f"delta_m: the baseline's {name!r} is 0; Δm is undefined.")
        sign = -1.0 if directions[name] else 1.0
        terms.append(sign * (value - reference) / reference * 100.0)
    return float(np.mean(terms))
