"""A CPU-sized depth run: tiny ResNet-50MD with batch norm, 64×128 synthetic stereo, 800 steps.

About 2–4 minutes per loss-statistics scheme on 2 CPU cores (gradient-based
schemes cost more). Batch norm, as in the paper's text: without it this
1/8-width network sometimes collapsed to zero disparity (the smoothness and
LR-consistency losses are then exactly satisfied and the sigmoid saturates),
depending on the seed and on the early balance of the weights. Evaluated on
the synthetic test split (no model selection happens on it: the last step is
evaluated).
"""

from __future__ import annotations

import ml_collections

from experiments.depth.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.encoder = "resnet50"
    config.model.width = 0.125
    config.model.batch_norm = True
    config.data.kwargs.num_train = 512
    config.data.kwargs.num_validation = 64
    config.data.eval_split = "test"
    config.learning_rate = 1e-3  # the tiny network learns faster than 1e-4 allows in 800 steps
    config.batch_size = 8
    config.steps_per_epoch = 64
    config.num_train_steps = 800
    config.log_every_steps = 10
    config.checkpoint_every_steps = 200
    return config
