"""The depth evaluation (experiments.common.evaluate) on a fake KITTI as irregular as the real one.

Mixed image sizes in one batch, a monodepth list naming ``.jpg`` files that are
``.png`` on disk, frames without ground truth, and a date whose calibration has
a principal-point offset: the evaluation must score every prediction against
its own ground truth, at its native size, with its own camera.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fake_datasets as fake
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from experiments.common import evaluate, sharding
from experiments.common import train as common_train
from experiments.depth import metrics
from experiments.depth.configs import test as test_config
from experiments.depth.train import DepthTask


def kitti_config(data: fake.FakeKitti, split_file: Path) -> ml_collections.ConfigDict:
    config = test_config.get_config()
    config.data.name = "kitti"
    config.data.data_dir = str(data.root)
    config.data.eval_split = "test"
    config.data.kitti.split_file = str(split_file)
    # 5 per batch: every batch mixes the two dates' image sizes (6×20 and 7×22).
    config.eval.batch_size = 5
    return config


@pytest.fixture(scope="module")
def untrained() -> common_train.Trainer:
    """The untrained network of the test config (what evaluate_untrained scores)."""
    return common_train.Trainer(DepthTask(), test_config.get_config(), sharding.make_mesh(1))


def expected_rows(
    config: ml_collections.ConfigDict,
    trainer: common_train.Trainer,
    frames: list[fake.FakeKittiFrame],
) -> np.ndarray:
    """Per-image metrics computed one image at a time from the fake's own values."""
    from experiments.data import input_pipeline

    graphdef, state = nnx.split(trainer.model(*trainer.initial_variables()))
    predict = evaluate.compiled_predictor(graphdef, DepthTask().predictor(config))
    # The network's input: the pipeline's resized left images (not under test
    # here), predicted in batches of 5 and 1 as the evaluation does (the same
    # compiled shapes; each image's prediction is independent of the others').
    images = np.stack(
        [
            input_pipeline.resize_example(
                {"left": tf.constant(frame.left)}, config.image_height, config.image_width
            )["left"].numpy()
            for frame in frames
        ]
    )
    disparities = np.concatenate(
        [
            np.asarray(predict(state, jnp.asarray(images[start : start + 5])))
            for start in range(0, len(frames), 5)
        ]
    )
    rows = []
    for frame, disparity in zip(frames, disparities, strict=True):
        height, width = frame.depth.shape
        resized = metrics.resize_disparity(disparity, height, width).astype(np.float64)
        pixels = resized * width + frame.doffs
        depth = np.where(
            pixels > 0, frame.baseline * frame.focal / np.maximum(pixels, 1e-9), np.inf
        )
        rows.append(metrics.compute_depth_errors(frame.depth, depth))
    return np.asarray(rows)


@pytest.mark.slow
def test_untrained_evaluation_on_mixed_sizes_with_offset_calibration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, untrained: common_train.Trainer
) -> None:
    data = fake.make_fake_kitti(tmp_path / "kitti")
    # Interleave the dates, as a split file may; monodepth's lists name .jpg files.
    frames = [data.frames[i] for i in (0, 6, 1, 7, 2, 8, 3, 4, 5)]
    split_file = tmp_path / "eigen_test_files.txt"
    fake.write_kitti_split_monodepth(split_file, frames, ext="jpg")
    config = kitti_config(data, split_file)
    scored = [f for f in frames if f.depth is not None]
    assert {f.depth.shape for f in scored} == {(6, 20), (7, 22)}
    assert sorted({round(f.doffs, 6) for f in scored}) == [0.0, 5.5]

    with caplog.at_level(logging.WARNING):
        summary = evaluate.evaluate_untrained(DepthTask(), config, tmp_path / "run")
    assert "3 of 9 frames have no improved ground truth" in caplog.text
    assert summary["num_images"] == len(scored) == 6
    out_dir = evaluate.eval_dir(tmp_path / "run", "test", untrained=True)
    per_image = metrics.load_per_image(out_dir)
    # float32 network outputs, float64 metrics: agreement to a few eps32.
    np.testing.assert_allclose(
        per_image, expected_rows(config, untrained, scored), rtol=1e-5, atol=1e-6
    )
    assert json.loads((out_dir / evaluate.SUMMARY_FILE).read_text())["num_images"] == 6

    # max_examples cuts the source, not a batch of padded targets.
    config.eval.max_examples = 3
    model = untrained.model(*untrained.initial_variables())
    first_three = evaluate.accumulate(DepthTask(), model, config, "test").per_image
    np.testing.assert_allclose(first_three, per_image[:3], rtol=1e-5, atol=1e-6)


def test_frames_without_ground_truth_kept_as_zeros_are_named(
    tmp_path: Path, untrained: common_train.Trainer
) -> None:
    data = fake.make_fake_kitti(tmp_path / "kitti")
    split_file = tmp_path / "eigen_test_files.txt"
    fake.write_kitti_split_eigen(split_file, data.frames[:3])  # frame 0 has no ground truth
    config = kitti_config(data, split_file)
    config.data.kitti.missing_depth = "zeros"
    model = untrained.model(*untrained.initial_variables())
    with pytest.raises(ValueError, match=r"image 0 of 3: .*no pixel has valid ground truth"):
        evaluate.accumulate(DepthTask(), model, config, "test")
