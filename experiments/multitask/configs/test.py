"""A few-step multi-task config for the tests: the smallest network and dataset that run."""

from __future__ import annotations

import ml_collections

from experiments.common.config import tiny_synthetic_data, tiny_training
from experiments.multitask.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.update(backbone="resnet18", width=1 / 16, stage_sizes=(1, 1, 1, 1))
    config.model.decoder_features = 128  # × width = 8 channels
    config.model.head_features = 64  # × width = 4 channels
    tiny_synthetic_data(config)
    tiny_training(config)
    return config
