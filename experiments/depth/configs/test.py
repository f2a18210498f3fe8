"""A few-step depth config for the tests: the smallest network and dataset that run."""

from __future__ import annotations

import ml_collections

from experiments.depth.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.encoder = "resnet18"
    config.model.width = 0.0625
    config.data.synthetic.num_train = 16
    config.data.synthetic.num_validation = 4
    config.data.synthetic.num_test = 4
    config.data.shuffle_buffer = 16
    config.batch_size = 4
    config.steps_per_epoch = 4
    config.num_train_steps = 4
    config.learning_rate = 1e-3
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval.batch_size = 4
    return config
