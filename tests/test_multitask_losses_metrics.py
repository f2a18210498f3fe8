"""Multi-task losses, metrics and Δm% against hand-computed values."""

from __future__ import annotations

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import schemes
from experiments.multitask import losses, metrics
from experiments.multitask.models import MultiTaskOutputs

SQRT_HALF = math.sqrt(0.5)


# -- losses -------------------------------------------------------------------


def test_segmentation_loss_skips_ignored_pixels() -> None:
    logits = jnp.array([[[[0.0, math.log(3.0)], [5.0, -5.0], [0.0, 0.0]]]])  # (1, 1, 3, 2)
    labels = jnp.array([[[1, 255, 0]]])
    expected = (math.log(4.0 / 3.0) + math.log(2.0)) / 2.0
    chex.assert_trees_all_close(losses.segmentation_loss(logits, labels), expected, rtol=1e-6)


def test_depth_loss_is_l1_on_known_depths() -> None:
    prediction = jnp.array([[[1.0, 2.0, 3.0]]])
    target = jnp.array([[[2.0, 0.0, 1.0]]])  # the middle pixel is unknown
    chex.assert_trees_all_close(losses.depth_loss(prediction, target), 1.5)
    chex.assert_trees_all_close(losses.depth_loss(prediction, jnp.zeros_like(target)), 0.0)


def test_normals_loss_is_one_minus_mean_cosine_on_valid_pixels() -> None:
    prediction = jnp.array([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [SQRT_HALF, SQRT_HALF, 0.0]]]])
    target = jnp.array([[[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    expected = 1.0 - (1.0 + SQRT_HALF) / 2.0
    chex.assert_trees_all_close(losses.normals_loss(prediction, target), expected, rtol=1e-6)
    chex.assert_trees_all_close(losses.normals_loss(prediction, jnp.zeros_like(target)), 1.0)


def test_multitask_losses_names_and_errors() -> None:
    outputs = MultiTaskOutputs(
        segmentation=jnp.zeros((1, 2, 2, 3)),
        depth=jnp.ones((1, 2, 2)),
        normals=jnp.zeros((1, 2, 2, 3)).at[..., 2].set(1.0),
    )
    batch = {
        "semantic": jnp.zeros((1, 2, 2), jnp.int32),
        "depth": jnp.full((1, 2, 2), 3.0),
        "normals": jnp.zeros((1, 2, 2, 3)).at[..., 2].set(-1.0),
    }
    values = losses.multitask_losses(outputs, batch)
    assert list(values) == ["segmentation", "depth", "normals"]
    chex.assert_trees_all_close(
        values, {"segmentation": math.log(3.0), "depth": 2.0, "normals": 2.0}, rtol=1e-6
    )
    with pytest.raises(KeyError, match="normals"):
        losses.multitask_losses(outputs, {k: v for k, v in batch.items() if k != "normals"})
    with pytest.raises(ValueError, match="same shape"):
        losses.depth_loss(jnp.ones((1, 2, 2)), jnp.ones((1, 2, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        losses.normals_loss(jnp.ones((1, 2, 2)), jnp.ones((1, 2, 2)))


def test_static_weights() -> None:
    assert losses.equal_weights() == pytest.approx({t: 1 / 3 for t in losses.TASKS})
    single = schemes.single_weights("depth", losses.TASKS)
    assert single == {"segmentation": 0, "depth": 1, "normals": 0}
    with pytest.raises(ValueError, match="unknown loss"):
        schemes.single_weights("edges", losses.TASKS)


# -- metrics ------------------------------------------------------------------


def test_confusion_matrix_miou_and_pixel_accuracy() -> None:
    labels = np.array([0, 0, 1, 2, 255])
    predictions = np.array([0, 1, 1, 1, 0])
    matrix = metrics.confusion_matrix(labels, predictions, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [0, 1, 0]])
    accumulator = metrics.MultiTaskMetrics(3)
    accumulator.confusion += matrix
    summary = accumulator.summary()
    # IoU: class 0 = 1/2, class 1 = 1/3, class 2 = 0/1.
    assert summary["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert summary["pixel_accuracy"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(np.array([0]), np.array([3]), 3)


def test_depth_errors() -> None:
    absolute, relative, count = metrics.depth_error_sums(
        np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.0, 4.0])
    )
    assert (absolute, relative, count) == (pytest.approx(2.0), pytest.approx(0.75), 2)


def test_angle_errors_and_summary() -> None:
    target = np.array([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    prediction = np.array([[2.0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(
        metrics.angle_errors(prediction, target), [0.0, 90.0, 45.0, 90.0], atol=1e-6
    )
    summary = metrics.normals_summary(np.array([0.0, 10.0, 20.0, 45.0]))
    assert summary == pytest.approx(
        {
            "mean_angle": 18.75,
            "median_angle": 15.0,
            "within_11.25": 0.5,
            "within_22.5": 0.75,
            "within_30": 0.75,
        }
    )


def test_accumulator_over_batches_equals_one_batch() -> None:
    rng = np.random.default_rng(0)
    targets = {
        "semantic": rng.integers(0, 4, (4, 3, 5)).astype(np.int32),
        "depth": rng.uniform(0, 5, (4, 3, 5)) * (rng.random((4, 3, 5)) > 0.2),
        "normals": rng.normal(size=(4, 3, 5, 3)),
    }
    predictions = {
        "labels": rng.integers(0, 4, (4, 3, 5)),
        "depth": rng.uniform(0, 5, (4, 3, 5)),
        "normals": rng.normal(size=(4, 3, 5, 3)),
    }
    whole = metrics.MultiTaskMetrics(4)
    whole.add(targets, predictions)
    split = metrics.MultiTaskMetrics(4)
    for part in (slice(0, 1), slice(1, 4)):
        split.add(
            {k: v[part] for k, v in targets.items()},
            {k: v[part] for k, v in predictions.items()},
        )
    assert split.summary() == pytest.approx(whole.summary(), rel=1e-6)
    assert set(whole.summary()) == set(metrics.HIGHER_IS_BETTER)


def test_delta_m_signs() -> None:
    baseline = {"mean_iou": 0.5, "abs_error": 1.0}
    better = {"mean_iou": 0.6, "abs_error": 0.9}  # both improve: −20 % and −10 %
    assert metrics.delta_m(better, baseline, ["mean_iou", "abs_error"]) == pytest.approx(-15.0)
    worse = {"mean_iou": 0.4, "abs_error": 1.2}
    assert metrics.delta_m(worse, baseline, ["mean_iou", "abs_error"]) == pytest.approx(20.0)
    full = {name: 1.0 + index for index, name in enumerate(metrics.HIGHER_IS_BETTER)}
    assert metrics.delta_m(full, full) == 0.0
    with pytest.raises(ValueError, match="is 0"):
        metrics.delta_m(better, {"mean_iou": 0.0, "abs_error": 1.0}, ["mean_iou"])
    with pytest.raises(ValueError, match="missing"):
        metrics.delta_m(better, baseline, ["rel_error"])
    with pytest.raises(ValueError, match="no direction"):
        metrics.delta_m(better, baseline, ["f1"])
