"""The segmentation evaluation on a fake PASCAL Context whose images all differ in size."""

from __future__ import annotations

import fake_datasets as fake
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from experiments.common import evaluate
from experiments.data import input_pipeline
from experiments.segmentation import train
from experiments.segmentation.configs import test as test_config


@pytest.fixture(scope="module")
def pascal(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pascal_context")
    images = fake.make_fake_pascal_context(root)
    config = test_config.get_config()
    config.data.name = "pascal_context"
    config.data.data_dir = str(root)
    config.data.eval_split = "val"
    config.model.num_classes = 59  # background ignored (255), as paper.py
    config.eval.batch_size = 2  # the two validation images, 6×6 and 12×9, in one batch
    config.batch_size = 2
    return config, images


@pytest.mark.slow
def test_evaluation_of_mixed_sizes_at_the_network_resolution(pascal) -> None:
    config, images = pascal
    assert len({image.label.shape for image in images["val"]}) == 2
    model = train.create_model(config, nnx.Rngs(0))
    matrix = evaluate.accumulate(train.make_task(config), model, config).confusion.matrix
    # Labels are resized to the network's 32×64 by nearest neighbour (class ids are
    # never interpolated): every labelled pixel of the resized maps is counted once.
    labelled = 0
    for image in images["val"]:
        semantic = np.where(image.label == 0, 255, image.label.astype(np.int32) - 1)
        resized = input_pipeline.resize_example(
            {"left": tf.constant(image.image), "semantic": tf.constant(semantic)},
            config.image_height,
            config.image_width,
        )["semantic"].numpy()
        assert set(np.unique(resized)) <= set(np.unique(semantic))
        labelled += int(np.sum(resized != 255))
    assert matrix.shape == (59, 59) and matrix.sum() == labelled


def test_training_batches_of_mixed_sizes(pascal) -> None:
    config, images = pascal
    assert len({image.label.shape for image in images["train"]}) == 3
    config = config.copy_and_resolve_references()
    config.data.train_split = "train"
    batch = next(
        train.make_task(config).train_batches(
            config, start_step=0, process_index=0, process_count=1
        )
    )
    assert batch["left"].shape == (2, config.image_height, config.image_width, 3)
    assert batch["semantic"].shape == (2, config.image_height, config.image_width)
