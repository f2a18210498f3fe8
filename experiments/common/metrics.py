"""Scores of a confusion matrix shared by the dense tasks: pixel accuracy and mean IoU.

The confusion matrix ``M`` is (C, C) with rows = ground truth and columns =
prediction; ``M[i, j]`` counts the labelled pixels of class i predicted as j.
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

import numpy as np


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
