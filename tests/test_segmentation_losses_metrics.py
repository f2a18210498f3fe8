"""EncNet's losses and the segmentation metrics against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import schemes
from experiments.segmentation import losses, metrics

IGNORE = 255


def test_pixel_cross_entropy_skips_ignored_pixels() -> None:
    # Two pixels, 2 classes; the third pixel is void and has huge wrong logits.
    logits = jnp.array([[[[0.0, 0.0], [2.0, 0.0], [-50.0, 50.0]]]])  # (1, 1, 3, 2)
    labels = jnp.array([[[0, 1, IGNORE]]])
    expected = (math.log(2.0) + (math.log(1.0 + math.exp(2.0)) - 0.0)) / 2
    np.testing.assert_allclose(losses.pixel_cross_entropy(logits, labels), expected, rtol=1e-6)


def test_pixel_cross_entropy_of_an_all_ignored_batch_is_zero_with_zero_gradient() -> None:
    logits = jnp.ones((1, 2, 2, 3))
    labels = jnp.full((1, 2, 2), IGNORE)
    value, grad = jax.value_and_grad(losses.pixel_cross_entropy)(logits, labels)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_presence_targets_from_label_maps() -> None:
    labels = jnp.array(
        [
            [[0, 0, 2], [2, IGNORE, 2]],
            [[IGNORE, IGNORE, IGNORE], [IGNORE, 1, IGNORE]],
        ]
    )
    np.testing.assert_array_equal(
        losses.presence_targets(labels, 4), [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    )


def test_semantic_encoding_loss_is_mean_binary_cross_entropy() -> None:
    labels = jnp.array([[[0, 0], [2, IGNORE]]])  # classes 0 and 2 present of 3
    se_logits = jnp.array([[1.0, -2.0, 0.5]])
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = -(math.log(sigmoid(1.0)) + math.log(1 - sigmoid(-2.0)) + math.log(sigmoid(0.5))) / 3
    np.testing.assert_allclose(
        losses.semantic_encoding_loss(se_logits, labels), expected, rtol=1e-6
    )


def test_encnet_losses_names_and_values() -> None:
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    aux = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    se = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(2, 4, 4)))
    labels = labels.at[0, 0].set(IGNORE)
    out = losses.encnet_losses((logits, aux, se), labels, num_classes=3)
    assert set(out) == {"ce", "se", "aux"}
    np.testing.assert_allclose(out["ce"], losses.pixel_cross_entropy(logits, labels))
    np.testing.assert_allclose(out["aux"], losses.pixel_cross_entropy(aux, labels))
    np.testing.assert_allclose(out["se"], losses.semantic_encoding_loss(se, labels))


def test_encnet_losses_reject_wrong_shapes() -> None:
    logits = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="expected num_classes = 5"):
        losses.encnet_losses((logits, logits, jnp.zeros((1, 3))), jnp.zeros((1, 4, 4), int), 5)
    with pytest.raises(ValueError, match=r"labels have shape"):
        losses.encnet_losses((logits, logits, jnp.zeros((1, 3))), jnp.zeros((1, 4, 5), int), 3)
    with pytest.raises(TypeError, match="integer class ids"):
        losses.pixel_cross_entropy(logits, jnp.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match=r"\(logits, aux_logits, se_logits\)"):
        losses.encnet_losses((logits,), jnp.zeros((1, 4, 4), int), 3)


def test_hand_tuned_and_single_loss_weights() -> None:
    weights = losses.hand_tuned_weights()
    np.testing.assert_allclose(
        [weights["ce"], weights["se"], weights["aux"]], [1 / 1.4, 0.2 / 1.4, 0.2 / 1.4]
    )
    assert schemes.single_weights("aux", losses.LOSS_NAMES) == {"ce": 0.0, "se": 0.0, "aux": 1.0}
    with pytest.raises(ValueError, match="unknown loss"):
        schemes.single_weights("dice", losses.LOSS_NAMES)


LABELS = np.array([[0, 0, 1, 1], [2, 2, 1, IGNORE]])
PREDICTIONS = np.array([[0, 1, 1, 1], [2, 0, 1, 2]])
# Hand count (rows = truth, columns = prediction), the void pixel dropped.
EXPECTED = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])


def test_confusion_matrix_by_hand() -> None:
    matrix = metrics.confusion_matrix(jnp.asarray(LABELS), jnp.asarray(PREDICTIONS), 3)
    np.testing.assert_array_equal(matrix, EXPECTED)


def test_pixel_accuracy_and_mean_iou_by_hand() -> None:
    assert metrics.pixel_accuracy(EXPECTED) == pytest.approx(5 / 7)
    # IoU: class 0: 1/(2+2-1) = 1/3; class 1: 3/(3+4-3) = 3/4; class 2: 1/(2+1-1) = 1/2.
    np.testing.assert_allclose(metrics.per_class_iou(EXPECTED), [1 / 3, 3 / 4, 1 / 2])
    assert metrics.mean_iou(EXPECTED) == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_background_is_dropped_from_ground_truth_and_the_average() -> None:
    # Background = class 0: its row goes; a class-2 pixel predicted as 0 still counts.
    assert metrics.pixel_accuracy(EXPECTED, background_class=0) == pytest.approx(4 / 5)
    iou = metrics.per_class_iou(EXPECTED, background_class=0)
    assert np.isnan(iou[0])
    # Class 1: TP 3, row 3, column 3 (the 0→1 pixel is background, gone) → 1.
    # Class 2: TP 1, row 2, column 1 → 1/2.
    np.testing.assert_allclose(iou[1:], [1.0, 0.5])
    assert metrics.mean_iou(EXPECTED, background_class=0) == pytest.approx(0.75)


def test_classes_absent_everywhere_are_left_out_of_the_mean() -> None:
    matrix = np.zeros((4, 4), np.int64)
    matrix[:3, :3] = EXPECTED
    assert metrics.mean_iou(matrix) == pytest.approx(metrics.mean_iou(EXPECTED))


def test_accumulator_sums_batches_and_checks_shapes() -> None:
    accumulator = metrics.ConfusionMatrix(3)
    for _ in range(3):
        accumulator.add(metrics.confusion_matrix(jnp.asarray(LABELS), jnp.asarray(PREDICTIONS), 3))
    np.testing.assert_array_equal(accumulator.matrix, 3 * EXPECTED)
    assert accumulator.summary()["pixel_accuracy"] == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="expected"):
        accumulator.add(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(jnp.zeros((2, 2), int), jnp.zeros((2, 3), int), 3)


def test_save_confusion_matrix(tmp_path) -> None:
    paths = metrics.save_confusion_matrix(tmp_path, EXPECTED, ["sky", "road", "car"])
    np.testing.assert_array_equal(np.load(paths["npy"]), EXPECTED)
    csv_lines = Path(paths["csv"]).read_text().splitlines()
    assert csv_lines[0].endswith("sky,road,car") and csv_lines[3] == "car,1,0,1"
    saved = json.loads(Path(paths["json"]).read_text())
    assert saved["per_class_iou"]["road"] == pytest.approx(0.75)
    assert saved["mean_iou"] == pytest.approx(metrics.mean_iou(EXPECTED))
