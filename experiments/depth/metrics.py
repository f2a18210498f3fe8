"""Depth evaluation: post-processing, disparity → depth, the 7 error metrics, win rate.

As in Godard et al. (CVPR 2017, ``evaluate_kitti.py``) and Groenendijk et al.
(WACV 2021, Tables 3-5, https://arxiv.org/abs/2009.01717):

1. post-process: predict on the image and on its mirror, blend the two with
   Godard's ramp masks (:func:`post_process_disparity`);
2. resize the disparity (a fraction of the width) bilinearly to the ground
   truth's size and convert it: depth = baseline · focal / (disparity · W_gt + doffs)
   (:func:`disparity_to_depth`), clamped to [min_depth, max_depth]; ``focal`` and
   ``doffs`` (the principal-point offset c_x(right) − c_x(left) of the rectified
   pair, 0 for KITTI and Cityscapes) are in pixels at the ground truth's width;
3. per image, on the pixels with valid ground truth (min_depth < d < max_depth,
   optionally inside the Garg or Eigen crop), compute::

       abs_rel  = mean |d − d̂| / d          sq_rel = mean (d − d̂)² / d
       rmse     = √ mean (d − d̂)²           rmse_log = √ mean (log d − log d̂)²
       δ_k      = mean [max(d/d̂, d̂/d) < 1.25^k],  k = 1, 2, 3

   and average over images (:func:`evaluate_disparities`, :func:`mean_errors`);
4. win rate: A beats B on an image when A is better on a majority (≥ 4) of
   the 7 metrics (:func:`win_rate`).

Ground truth comes in variable sizes (KITTI images differ slightly), so the
per-image metrics are NumPy (float64); post-processing is JAX (batched, jittable).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

MIN_DEPTH = 1e-3
MAX_DEPTH = 80.0
#: Cityscapes stereo rig (as in the CoV paper's evaluation): focal length in pixels at
#: 2048 px width, baseline in m.
CITYSCAPES_FOCAL = 2262.52
CITYSCAPES_BASELINE = 0.209313
#: The 7 metrics, in the paper's column order.
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
#: +1 where higher is better (the δ accuracies), −1 where lower is better.
METRIC_DIRECTION = np.array([-1, -1, -1, -1, 1, 1, 1])
#: Crops as fractions (top, bottom, left, right) of the ground truth's size.
CROPS: dict[str, tuple[float, float, float, float]] = {
    # Garg et al. (ECCV 2016), used by monodepth's KITTI Eigen evaluation.
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    # Eigen et al. (NeurIPS 2014).
    "eigen": (0.3324324, 0.91351351, 0.0359477, 0.96405229),
}
Crop = Literal["garg", "eigen"] | None


class DepthErrors(NamedTuple):
    """The 7 depth metrics of one image (or their mean over images)."""

    abs_rel: float
    sq_rel: float
    rmse: float
    rmse_log: float
    a1: float
    a2: float
    a3: float


def post_process_disparity(disp: Array, disp_of_flipped: Array) -> Array:
    """Godard's post-processing: blend a disparity with that of the mirrored image.

    ``disp_of_flipped`` is the network's disparity for the horizontally
    flipped image, in that image's own (flipped) coordinates. With f its flip
    back and m = (d + f)/2, the result is r·d + l·f + (1 − l − r)·m, where the
    ramp l(x) = 1 − clip(20 (x − 0.05), 0, 1) (x ∈ [0, 1] across the width) and
    r its mirror: the leftmost 5% come from the flipped prediction, the
    rightmost 5% from the direct one (each view's occlusion-free side), and
    the rest is their average.

    Args:
      disp, disp_of_flipped: (..., H, W) left disparities of the same shape.

    Returns:
      (..., H, W) the post-processed disparity.
    """
    disp, disp_of_flipped = jnp.asarray(disp), jnp.asarray(disp_of_flipped)
    if disp.shape != disp_of_flipped.shape or disp.ndim < 2:
        raise ValueError(
            "post_process_disparity: expected two (..., H, W) disparities of the same shape, "
            f"got {disp.shape} and {disp_of_flipped.shape}."
        )
    width = disp.shape[-1]
    flipped_back = jnp.flip(disp_of_flipped, axis=-1)
    mean = 0.5 * (disp + flipped_back)
    ramp = jnp.linspace(0.0, 1.0, width, dtype=mean.dtype)
    left_mask = 1.0 - jnp.clip(20.0 * (ramp - 0.05), 0.0, 1.0)
    right_mask = jnp.flip(left_mask)
    return right_mask * disp + left_mask * flipped_back + (1.0 - left_mask - right_mask) * mean


def resize_disparity(disp: np.ndarray | Array, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (H, W) disparity to (height, width) (half-pixel, as cv2)."""
    disp = jnp.asarray(disp, jnp.float32)
    if disp.ndim != 2:
        raise ValueError(f"resize_disparity: expected a (H, W) disparity, got shape {disp.shape}.")
    return np.asarray(jax.image.resize(disp, (height, width), "bilinear", antialias=False))


def disparity_to_depth(
    disp_fraction: np.ndarray, focal: float, baseline: float, width: int, doffs: float = 0.0
) -> np.ndarray:
    """depth = baseline · focal / (disparity · width + doffs), disparity a fraction of the width.

    ``doffs`` is the horizontal offset between the principal points of the
    rectified right and left cameras, c_x(right) − c_x(left), in pixels at
    ``width`` (Middlebury's ``doffs``). A point at depth Z is seen at
    x_left − x_right = focal · baseline / Z − doffs, which is what a network
    trained by matching the two views predicts; hence Z = f·B / (d + doffs).
    A zero (or negative) ``d + doffs`` gives an infinite depth, which the
    metrics clamp.

    Args:
      disp_fraction: disparity as a fraction of the image width.
      focal: focal length in pixels at ``width``.
      baseline: stereo baseline in metres.
      width: the width (pixels) at which ``focal`` and ``doffs`` are given.
      doffs: principal-point offset in pixels at ``width`` (0 for a pair
        rectified to a common principal point, as KITTI's and Cityscapes').
    """
    if not (focal > 0 and baseline > 0 and width > 0):
        raise ValueError(
            "disparity_to_depth: focal, baseline and width must be positive, got "
            f"focal={focal}, baseline={baseline}, width={width}."
        )
    if not np.isfinite(doffs):
        raise ValueError(f"disparity_to_depth: doffs must be finite, got {doffs}.")
    pixels = np.asarray(disp_fraction, np.float64) * width + doffs
    with np.errstate(divide="ignore"):
        return np.where(pixels > 0, baseline * focal / np.where(pixels > 0, pixels, 1.0), np.inf)


def crop_mask(height: int, width: int, crop: Crop) -> np.ndarray:
    """Boolean (height, width) mask of the Garg/Eigen crop (all True for ``None``)."""
    mask = np.ones((height, width), bool)
    if crop is None:
        return mask
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose one of {sorted(CROPS)} or None.")
    top, bottom, left, right = CROPS[crop]
    rows = slice(int(top * height), int(bottom * height))
    cols = slice(int(left * width), int(right * width))
    mask[:] = False
    mask[rows, cols] = True
    return mask


def compute_depth_errors(
    gt: np.ndarray,
    pred: np.ndarray,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    crop: Crop = None,
) -> DepthErrors:
    """The 7 metrics of one image, on the pixels where min_depth < gt < max_depth.

    Args:
      gt: (H, W) ground-truth depth in metres; 0 (or anything out of range)
        marks a missing measurement.
      pred: (H, W) predicted depth in metres, clamped to [min_depth, max_depth].
      crop: restrict to the ``"garg"`` or ``"eigen"`` crop.

    Raises:
      ValueError: shapes differ, or no pixel has valid ground truth.
    """
    gt = np.asarray(gt, np.float64)
    pred = np.asarray(pred, np.float64)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(
            "compute_depth_errors: gt and pred must be (H, W) maps of the same shape, "
            f"got {gt.shape} and {pred.shape} (resize the prediction first)."
        )
    valid = (gt > min_depth) & (gt < max_depth) & crop_mask(*gt.shape, crop)
    if not valid.any():
        raise ValueError("compute_depth_errors: no pixel has valid ground truth.")
    gt = gt[valid]
    pred = np.clip(np.nan_to_num(pred[valid], nan=max_depth), min_depth, max_depth)
    ratio = np.maximum(gt / pred, pred / gt)
    squared = (gt - pred) ** 2
    return DepthErrors(
        abs_rel=float(np.mean(np.abs(gt - pred) / gt)),
        sq_rel=float(np.mean(squared / gt)),
        rmse=float(np.sqrt(np.mean(squared))),
        rmse_log=float(np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2))),
        a1=float(np.mean(ratio < 1.25)),
        a2=float(np.mean(ratio < 1.25**2)),
        a3=float(np.mean(ratio < 1.25**3)),
    )


def evaluate_disparities(
    gt_depths: Sequence[np.ndarray],
    disparities: Sequence[np.ndarray] | np.ndarray,
    focal: float | Sequence[float],
    baseline: float | Sequence[float],
    *,
    doffs: float | Sequence[float] = 0.0,
    min_depth: float = MIN_DEPTH,
    max_depth: float = MAX_DEPTH,
    crop: Crop = None,
) -> np.ndarray:
    """Per-image metrics of predicted disparities against ground-truth depths.

    Each disparity (a fraction of the width, at the network's resolution) is
    resized bilinearly to its own ground truth's size (so images of different
    sizes are each scored at their native resolution, as monodepth's KITTI
    evaluation does), converted with that image's focal length and
    principal-point offset (both in pixels at the ground truth's width) and
    baseline, and scored. Since the disparity is a fraction of the width,
    resizing needs no rescaling of its values.

    Args:
      gt_depths: N ground-truth depth maps (H_i, W_i) in metres.
      disparities: N (h, w) predicted (post-processed) left disparities.
      focal, baseline, doffs: one value for all images or one per image
        (``doffs``: see :func:`disparity_to_depth`).

    Returns:
      (N, 7) float64 array, columns :data:`METRIC_NAMES` (save it for win rates).

    Raises:
      ValueError: counts differ, or an image has no valid ground-truth pixel
        (its index is named).
    """
    count = len(gt_depths)
    if len(disparities) != count:
        raise ValueError(
            f"evaluate_disparities: {count} ground-truth maps but {len(disparities)} disparities."
        )
    focals = np.broadcast_to(np.asarray(focal, np.float64), (count,))
    baselines = np.broadcast_to(np.asarray(baseline, np.float64), (count,))
    offsets = np.broadcast_to(np.asarray(doffs, np.float64), (count,))
    rows = []
    for index, (gt, disp, f, b, o) in enumerate(
        zip(gt_depths, disparities, focals, baselines, offsets, strict=True)
    ):
        height, width = np.shape(gt)
        resized = resize_disparity(disp, height, width)
        depth = disparity_to_depth(resized, float(f), float(b), width, float(o))
        try:
            rows.append(compute_depth_errors(gt, depth, min_depth, max_depth, crop))
        except ValueError as error:
            raise ValueError(f"evaluate_disparities: image {index} of {count}: {error}") from None
    return np.asarray(rows, np.float64).reshape(count, len(METRIC_NAMES))


def mean_errors(per_image: np.ndarray) -> DepthErrors:
    """The paper's numbers: each metric averaged over images."""
    per_image = _check_per_image("mean_errors", per_image)
    return DepthErrors(*(float(v) for v in per_image.mean(axis=0)))


def _check_per_image(name: str, per_image: np.ndarray) -> np.ndarray:
    per_image = np.asarray(per_image, np.float64)
    if per_image.ndim != 2 or per_image.shape[1] != len(METRIC_NAMES) or not len(per_image):
        raise ValueError(
            f"{name}: expected per-image metrics of shape (N ≥ 1, {len(METRIC_NAMES)}) with "
            f"columns {METRIC_NAMES}, got shape {per_image.shape}."
        )
    return per_image


def win_rate(per_image_a: np.ndarray, per_image_b: np.ndarray) -> float:
    """Fraction of images on which A beats B (paper Table 5).

    A beats B on an image when it is strictly better on a majority (at least
    4) of the 7 metrics: lower abs_rel, sq_rel, rmse, rmse_log; higher δ's.
    Ties count for neither.

    Args:
      per_image_a, per_image_b: (N, 7) per-image metrics of the same images,
        as returned by :func:`evaluate_disparities`.
    """
    a = _check_per_image("win_rate", per_image_a)
    b = _check_per_image("win_rate", per_image_b)
    if a.shape != b.shape:
        raise ValueError(
            f"win_rate: both methods must be scored on the same images, got {a.shape} and "
            f"{b.shape}."
        )
    better = METRIC_DIRECTION * (a - b) > 0
    wins = better.sum(axis=1) > len(METRIC_NAMES) // 2
    return float(wins.mean())


#: The per-image rows an evaluation saves (for the win rates).
PER_IMAGE_FILE = "per_image.csv"


class DepthMetric:
    """The per-image Eigen metrics of an evaluation, accumulated batch by batch.

    Each batch's predicted disparities are scored against its own ground truth
    at that ground truth's native size, with its own focal length, baseline
    and principal-point offset (``doffs``, 0 where the source has none), so a
    split of mixed image sizes (KITTI's Eigen test set) is evaluated like
    monodepth's ``evaluate_kitti.py`` does.

    Args:
      min_depth, max_depth: the valid ground-truth range (metres).
      crop: the Garg or Eigen crop of KITTI's Eigen split, or None.
      source: the dataset's name, for the error messages.
    """

    def __init__(self, *, min_depth: float, max_depth: float, crop: Crop, source: str):
        self.min_depth, self.max_depth, self.crop, self.source = min_depth, max_depth, crop, source
        self._rows: list[np.ndarray] = []

    def add(self, batch: Mapping[str, np.ndarray], predictions: np.ndarray) -> None:
        """Score (B, h, w) predicted left disparities against the batch's ground truth."""
        from experiments.data import input_pipeline  # local: imports TensorFlow

        if "depth" not in batch:
            raise ValueError(f"{self.source!r} has no depth ground truth to score.")
        try:
            rows = evaluate_disparities(
                input_pipeline.native_targets(batch, "depth"),
                np.asarray(predictions),
                batch["focal"],
                batch["baseline"],
                doffs=batch.get("doffs", 0.0),
                min_depth=self.min_depth,
                max_depth=self.max_depth,
                crop=self.crop,
            )
        except ValueError as error:
            raise ValueError(
                f"{self.source!r}, batch from example {len(self.per_image)}: {error} "
                "(a frame without ground truth? KITTI skips them with missing_depth='skip')"
            ) from None
        self._rows.append(rows)

    @property
    def per_image(self) -> np.ndarray:
        """(N, 7) per-image metrics so far, columns :data:`METRIC_NAMES`."""
        if not self._rows:
            return np.zeros((0, len(METRIC_NAMES)))
        return np.concatenate(self._rows, axis=0)

    def summary(self) -> dict[str, float]:
        """Each metric averaged over the images, and their number."""
        per_image = self.per_image
        if not len(per_image):
            raise ValueError(f"The evaluation split of {self.source!r} is empty.")
        return {**mean_errors(per_image)._asdict(), "num_images": len(per_image)}

    def save(self, directory: Path) -> None:
        """Write ``per_image.csv`` (one row per image, for win rates)."""
        with (directory / PER_IMAGE_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", *METRIC_NAMES])
            for index, row in enumerate(self.per_image):
                writer.writerow([index, *(f"{value:.9g}" for value in row)])


def load_per_image(directory: str | Path) -> np.ndarray:
    """The (N, 7) per-image metrics saved by :meth:`DepthMetric.save`."""
    with (Path(directory) / PER_IMAGE_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    return np.asarray([[float(row[name]) for name in METRIC_NAMES] for row in rows])
