"""Shared defaults of the multi-task pixelwise experiment; the other configs start from these.

Fields used by the shared machinery are documented in
:mod:`experiments.common.train`; ``model``, ``data``, ``eval`` and
``single_task`` are this experiment's own.
"""

from __future__ import annotations

import ml_collections

from experiments.common import config as common_config


def get_config() -> ml_collections.ConfigDict:
    config = common_config.machinery_defaults()

    # experiments.multitask.models.MultiTaskNet arguments.
    config.model = common_config.backbone_model_defaults()
    config.model.decoder_features = 256
    config.model.head_features = 128
    config.model.stage_sizes = ml_collections.config_dict.placeholder(tuple)
    # The depth head works in units of depth_scale metres (the synthetic scenes
    # reach ~60 m; NYUv2 rooms ~10 m).
    config.model.depth_scale = 10.0

    # Data: a source of the shared registry with semantic, depth and normals.
    config.data = common_config.dense_data_defaults(("synthetic", "nyuv2"))
    config.image_height = 64  # the network's input resolution
    config.image_width = 128

    # ``single_task`` ("segmentation", "depth" or "normals") trains that task
    # alone (static one-hot weights) and overrides ``scheme``.
    config.num_train_steps = 6400
    config.scheme = "equal"
    config.single_task = ml_collections.config_dict.placeholder(str)
    config.checkpoint_every_steps = 1000

    # Evaluation at the network's resolution.
    config.eval = common_config.eval_defaults()
    return config
