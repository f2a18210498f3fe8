"""Tests of experiments/depth/metrics.py: post-processing, depth errors, win rate."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.depth import metrics
from experiments.depth.metrics import (
    METRIC_NAMES,
    compute_depth_errors,
    disparity_to_depth,
    evaluate_disparities,
    mean_errors,
    post_process_disparity,
    win_rate,
)


def test_errors_against_hand_computed_values() -> None:
    gt = np.array([[2.0, 4.0], [10.0, 0.0]])  # the 0 is a missing measurement
    pred = np.array([[2.0, 5.0], [8.0, 123.0]])
    errors = compute_depth_errors(gt, pred)
    # valid pixels: (2, 2), (4, 5), (10, 8)
    np.testing.assert_allclose(errors.abs_rel, (0 + 1 / 4 + 2 / 10) / 3)
    np.testing.assert_allclose(errors.sq_rel, (0 + 1 / 4 + 4 / 10) / 3)
    np.testing.assert_allclose(errors.rmse, np.sqrt((0 + 1 + 4) / 3))
    np.testing.assert_allclose(
        errors.rmse_log, np.sqrt((0 + np.log(4 / 5) ** 2 + np.log(10 / 8) ** 2) / 3)
    )
    # ratios 1, 1.25, 1.25: δ < 1.25 is strict.
    np.testing.assert_allclose([errors.a1, errors.a2, errors.a3], [1 / 3, 1.0, 1.0])
    assert errors._fields == METRIC_NAMES


def test_prediction_is_clamped_and_gt_range_is_respected() -> None:
    gt = np.array([[50.0, 90.0, 1e-4]])  # only 50 is inside (1e-3, 80)
    pred = np.array([[200.0, 1.0, 1.0]])  # clamped to 80
    errors = compute_depth_errors(gt, pred)
    np.testing.assert_allclose(errors.abs_rel, 30 / 50)
    np.testing.assert_allclose(errors.rmse, 30.0)
    zero = compute_depth_errors(np.array([[10.0]]), np.array([[0.0]]))  # clamped to 1e-3
    np.testing.assert_allclose(zero.abs_rel, (10 - 1e-3) / 10)
    with pytest.raises(ValueError, match="no pixel has valid ground truth"):
        compute_depth_errors(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        compute_depth_errors(np.ones((2, 2)), np.ones((2, 3)))


def test_crops() -> None:
    mask = metrics.crop_mask(100, 200, "garg")
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (40, 98, 7, 191)
    assert metrics.crop_mask(10, 10, None).all()
    gt = np.full((100, 200), 10.0)
    pred = np.full((100, 200), 10.0)
    pred[:20] = 1.0  # wrong only above the crop
    assert compute_depth_errors(gt, pred, crop="garg").abs_rel == 0.0
    assert compute_depth_errors(gt, pred).abs_rel > 0.0
    with pytest.raises(ValueError, match="unknown crop"):
        metrics.crop_mask(10, 10, "kitti")


def test_disparity_to_depth() -> None:
    # Cityscapes: focal 2262.52 px, baseline 0.209313 m; disparity 0.01·2048 px.
    depth = disparity_to_depth(
        np.array([0.01, 0.0]), metrics.CITYSCAPES_FOCAL, metrics.CITYSCAPES_BASELINE, 2048
    )
    np.testing.assert_allclose(depth[0], 0.209313 * 2262.52 / 20.48)
    assert depth[1] == np.inf
    with pytest.raises(ValueError, match="positive"):
        disparity_to_depth(np.ones(2), 0.0, 0.5, 100)


def test_post_processing() -> None:
    constant = np.full((2, 4, 40), 0.07, np.float32)
    np.testing.assert_allclose(np.asarray(post_process_disparity(constant, constant)), 0.07)
    # Direct prediction 1, flipped prediction 0 (after flipping back): the ramp masks.
    width = 41
    out = np.asarray(post_process_disparity(np.ones((1, width)), np.zeros((1, width))))[0]
    x = np.linspace(0, 1, width)
    left_mask = 1 - np.clip(20 * (x - 0.05), 0, 1)
    right_mask = left_mask[::-1]
    np.testing.assert_allclose(out, right_mask + 0.5 * (1 - left_mask - right_mask), atol=1e-6)
    assert out[0] == 0.0 and out[-1] == 1.0 and out[width // 2] == 0.5
    # The flipped prediction is flipped back before blending.
    ramp = np.linspace(0.0, 0.1, width)[None]
    np.testing.assert_allclose(
        np.asarray(post_process_disparity(ramp, ramp[:, ::-1])), ramp, atol=1e-6
    )
    with pytest.raises(ValueError, match="same shape"):
        post_process_disparity(np.ones((2, 3)), np.ones((2, 4)))


def test_evaluate_disparities_resizes_to_ground_truth() -> None:
    focal, baseline = 720.0, 0.54
    gt_sizes = [(6, 12), (8, 16)]
    true_depth = 15.0
    # A constant disparity (fraction of width) that gives exactly 15 m at any width.
    disparity = baseline * focal / true_depth
    gts, preds = [], []
    for height, width in gt_sizes:
        gts.append(np.full((height, width), true_depth))
        preds.append(np.full((4, 8), disparity / width))  # network resolution 4×8
    per_image = evaluate_disparities(gts, preds, focal, baseline)
    assert per_image.shape == (2, 7)
    np.testing.assert_allclose(per_image[:, :4], 0.0, atol=1e-6)
    np.testing.assert_allclose(per_image[:, 4:], 1.0)
    # One image 20% too far: abs_rel 0.2 there, the mean over images halves it.
    preds[1] = preds[1] / 1.2
    per_image = evaluate_disparities(gts, preds, [focal, focal], baseline)
    np.testing.assert_allclose(per_image[1, 0], 0.2, rtol=1e-5)
    np.testing.assert_allclose(mean_errors(per_image).abs_rel, 0.1, rtol=1e-5)
    # Bilinear resizing of a left-right ramp keeps it monotone at the GT size.
    resized = metrics.resize_disparity(np.tile(np.arange(4.0), (2, 1)), 4, 8)
    assert resized.shape == (4, 8) and np.all(np.diff(resized[0]) >= 0)
    with pytest.raises(ValueError, match="2 ground-truth maps but 1"):
        evaluate_disparities(gts, preds[:1], focal, baseline)


def test_win_rate_on_hand_made_example() -> None:
    base = np.array([0.1, 0.5, 4.0, 0.2, 0.9, 0.95, 0.99])
    b = np.tile(base, (4, 1))
    a = b.copy()
    a[0, :4] -= 0.01  # better on the 4 error metrics only: 4 of 7 → win
    a[1, 4:] += 0.005  # better on the 3 δ's only: 3 of 7 → no win
    a[2] = b[2]  # a tie everywhere → no win
    a[3, :4] += 0.01  # worse errors...
    a[3, 4:] += 0.005  # ...better δ's: 3 of 7 → no win
    assert win_rate(a, b) == 0.25
    assert win_rate(b, a) == 0.25  # B beats A on image 3 (its 4 lower errors) only
    assert win_rate(a, a) == 0.0
    with pytest.raises(ValueError, match="same images"):
        win_rate(a, b[:2])
    with pytest.raises(ValueError, match=r"\(N ≥ 1, 7\)"):
        win_rate(a[:, :6], b[:, :6])


def perfect_disparity_fractions(
    depth: np.ndarray, focal: float, baseline: float, doffs: float
) -> np.ndarray:
    """What a perfect stereo matcher sees: x_left − x_right = f·B/Z − doffs, / width."""
    return (focal * baseline / depth - doffs) / depth.shape[-1]


def test_principal_point_offset_is_corrected() -> None:
    # Middlebury-style rig: the principal points of the rectified cameras differ.
    rng = np.random.default_rng(0)
    gt = rng.uniform(2.0, 70.0, (12, 40))
    focal, baseline, doffs = 700.0, 0.3, 37.0
    disparities = [perfect_disparity_fractions(gt, focal, baseline, doffs)]
    per_image = evaluate_disparities([gt], disparities, focal, baseline, doffs=doffs)
    # The disparity goes through float32 resizing: relative errors of a few eps32.
    np.testing.assert_allclose(per_image[0, :4], 0.0, atol=1e-5)
    np.testing.assert_allclose(per_image[0, 4:], 1.0)
    # Ignoring the offset is what the issue measured: far from 0.
    ignored = evaluate_disparities([gt], disparities, focal, baseline)
    assert ignored[0, 0] > 0.3
    # Zero offset: the same numbers as without the argument (KITTI, Cityscapes).
    zero = [perfect_disparity_fractions(gt, focal, baseline, 0.0)]
    np.testing.assert_array_equal(
        evaluate_disparities([gt], zero, focal, baseline, doffs=0.0),
        evaluate_disparities([gt], zero, focal, baseline),
    )
    np.testing.assert_allclose(
        evaluate_disparities([gt], zero, focal, baseline)[0, 0], 0, atol=1e-5
    )


def test_principal_point_offset_with_predictions_resized_to_each_ground_truth() -> None:
    # Constant depth per image, so a disparity predicted at the network's 4×8
    # is exact after resizing; the offset is given at each ground truth's width
    # (where the focal is), and a disparity fraction needs no rescaling.
    focal_at_width, baseline, doffs_at_width = 60.0, 0.5, 0.4  # per pixel of width
    sizes, depths = [(6, 12), (8, 16), (5, 20)], [4.0, 9.0, 2.5]
    gts, predictions, focals, offsets = [], [], [], []
    for (height, width), depth in zip(sizes, depths, strict=True):
        focal, doffs = focal_at_width * width, doffs_at_width * width
        gt = np.full((height, width), depth)
        fraction = perfect_disparity_fractions(gt, focal, baseline, doffs)[0, 0]
        gts.append(gt)
        predictions.append(np.full((4, 8), fraction))
        focals.append(focal)
        offsets.append(doffs)
    per_image = evaluate_disparities(gts, predictions, focals, baseline, doffs=offsets)
    np.testing.assert_allclose(per_image[:, :4], 0.0, atol=1e-5)
    # An offset left at another width's value is wrong: the last image uses the first's.
    wrong = evaluate_disparities(gts, predictions, focals, baseline, doffs=[*offsets[:2], 4.8])
    assert wrong[2, 0] > 0.01 and np.all(wrong[:2, 0] < 1e-5)


def test_image_without_valid_ground_truth_is_named() -> None:
    gts = [np.full((4, 8), 10.0), np.zeros((4, 8))]
    with pytest.raises(ValueError, match=r"image 1 of 2: .*no pixel has valid ground truth"):
        evaluate_disparities(gts, np.full((2, 4, 8), 0.05), 700.0, 0.54)
    with pytest.raises(ValueError, match="doffs must be finite"):
        disparity_to_depth(np.ones(2), 700.0, 0.54, 100, doffs=np.nan)
