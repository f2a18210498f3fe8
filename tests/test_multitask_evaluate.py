"""The multi-task evaluation on a fake NYUv2 with the real set's holes and void labels."""

from __future__ import annotations

import math
from pathlib import Path

import fake_datasets as fake
import numpy as np
import pytest
from flax import nnx

from experiments.common import evaluate
from experiments.multitask import train
from experiments.multitask.configs import test as test_config


@pytest.mark.slow
def test_evaluation_skips_depth_holes_zero_normals_and_unlabelled_pixels(tmp_path: Path) -> None:
    config = test_config.get_config()
    height, width = config.image_height, config.image_width
    # At the network's size, so the expected numbers need no resizing.
    examples = fake.make_fake_nyuv2(tmp_path, counts={"val": 3}, height=height, width=width)
    config.data.name = "nyuv2"
    config.data.data_dir = str(tmp_path)
    config.data.eval_split = "val"
    config.model.num_classes = 13
    config.eval.batch_size = 2
    model = train.create_model(config, nnx.Rngs(0))
    task = train.make_task(config)
    summary = evaluate.accumulate(task, model, config).summary()

    # The evaluation's input: uint8 images as float32 in [0, 1], in batches of 2 and 1.
    stored = [np.clip(np.rint(e.image * 255), 0, 255).astype(np.uint8) for e in examples["val"]]
    images = np.stack(stored).astype(np.float32) * np.float32(1 / 255)
    graphdef, state = nnx.split(model)
    predict = evaluate.compiled_predictor(graphdef, task.predictor(config))
    outputs = [predict(state, images[:2]), predict(state, images[2:])]
    labels, depth, normals = (
        np.concatenate([output[key] for output in outputs])
        for key in ("labels", "depth", "normals")
    )
    truth = np.stack([e.depth[..., 0] for e in examples["val"]]).astype(np.float64)
    valid = truth > 0
    assert (~valid).sum() == 3 * 5  # a pixel and a 2×2 Kinect hole per image (see the fake)
    absolute = np.abs(depth[valid] - truth[valid])
    # float32 predictions, float64 sums; the relative error divides by depths
    # down to ~0.01 m, which amplifies float32 rounding of the network: 1e-4.
    assert math.isclose(summary["abs_error"], absolute.mean(), rel_tol=1e-5)
    assert math.isclose(summary["rel_error"], (absolute / truth[valid]).mean(), rel_tol=1e-4)
    target_normals = np.stack([e.normal for e in examples["val"]])
    assert np.isfinite(summary["mean_angle"]) and normals.shape == target_normals.shape
    label_maps = np.stack([e.label for e in examples["val"]])
    labelled = label_maps >= 0
    accuracy = np.mean(labels[labelled] == label_maps[labelled])
    assert math.isclose(summary["pixel_accuracy"], accuracy, rel_tol=1e-9)
