"""A CPU-sized depth run: tiny ResNet-50MD, 64×128 synthetic stereo, a few hundred steps.

Finishes in minutes on 2 CPU cores (per scheme; gradient-based schemes cost more).
"""

from __future__ import annotations

import ml_collections

from experiments.depth.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.encoder = "resnet50"
    config.model.width = 0.125
    config.data.kwargs.num_train = 512
    config.data.kwargs.num_validation = 64
    config.learning_rate = 1e-3  # the tiny network learns faster than 1e-4 allows in 400 steps
    config.batch_size = 8
    config.steps_per_epoch = 64
    config.num_train_steps = 400
    config.log_every_steps = 10
    config.checkpoint_every_steps = 100
    return config
