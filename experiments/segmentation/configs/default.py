"""Shared defaults of the segmentation experiment; the other configs start from these.

Fields used by the shared machinery are documented in
:mod:`experiments.common.train`; ``model``, ``data``, ``eval`` and
``single_loss`` are the segmentation task's own.
"""

from __future__ import annotations

import ml_collections

from experiments.common.config import (
    backbone_model_defaults,
    dense_data_defaults,
    eval_defaults,
    machinery_defaults,
)


def get_config() -> ml_collections.ConfigDict:
    config = machinery_defaults()

    # EncNet (Zhang et al., CVPR 2018): experiments.segmentation.models.EncNet arguments.
    config.model = backbone_model_defaults()
    config.model.num_codes = 32
    config.model.head_features = 512
    config.model.dropout = 0.1

    # Data: a source of the shared registry (experiments.data.get_dataset).
    config.data = dense_data_defaults(("synthetic", "pascal_context"))
    # The class left out of pACC and mIoU (paper: "background pixels are ignored");
    # None for the synthetic scenes, whose classes are all real (see metrics.py).
    config.data.background_class = ml_collections.config_dict.placeholder(int)
    config.image_height = 64  # the network's input resolution
    config.image_width = 128

    # Optimisation (paper: SGD, learning rate 1e-4, 40 epochs). ``single_loss``
    # ("ce", "se" or "aux") trains on one loss only (static one-hot weights, the
    # paper's single-loss rows) and overrides ``scheme``.
    config.optimizer = "sgd"
    config.num_train_steps = 2560
    config.single_loss = ml_collections.config_dict.placeholder(str)
    config.checkpoint_every_steps = 500

    # Evaluation: confusion matrix at the network's resolution.
    config.eval = eval_defaults()
    return config
