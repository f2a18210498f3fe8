"""A few-step depth config for the tests: the smallest network and dataset that run."""

from __future__ import annotations

import ml_collections

from experiments.depth.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.update(encoder="resnet18", width=0.0625)
    config.data.synthetic.update(num_train=16, num_validation=4, num_test=4)
    config.data.shuffle_buffer = 16
    config.update(batch_size=4, steps_per_epoch=4, num_train_steps=4, learning_rate=1e-3)
    config.update(log_every_steps=2, checkpoint_every_steps=2)
    config.eval.batch_size = 4
    return config
