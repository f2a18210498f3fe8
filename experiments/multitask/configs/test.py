"""A few-step multi-task config for the tests: the smallest network and dataset that run."""

from __future__ import annotations

import ml_collections

from experiments.multitask.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.backbone = "resnet18"
    config.model.width = 1 / 16
    config.model.stage_sizes = (1, 1, 1, 1)
    config.model.decoder_features = 128  # × width = 8 channels
    config.model.head_features = 64  # × width = 4 channels
    config.data.synthetic.update(
        {"height": 32, "width": 64, "num_train": 8, "num_validation": 4, "num_test": 4}
    )
    config.data.shuffle_buffer = 8
    config.image_height = 32
    config.image_width = 64
    config.learning_rate = 1e-3
    config.batch_size = 4
    config.steps_per_epoch = 2
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval.batch_size = 4
    return config
