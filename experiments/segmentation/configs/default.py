"""Shared defaults of the segmentation experiment; the other configs start from these.

Fields used by the shared machinery are documented in
:mod:`experiments.common.train`; ``model``, ``data``, ``eval`` and
``single_loss`` are the segmentation task's own.
"""

from __future__ import annotations

import ml_collections

from experiments.common.config import data_defaults, machinery_defaults


def get_config() -> ml_collections.ConfigDict:
    config = machinery_defaults()

    # EncNet (Zhang et al., CVPR 2018): experiments.segmentation.models.EncNet arguments.
    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 7  # the synthetic scenes' classes
    config.model.backbone = "resnet50"
    config.model.width = 1.0
    config.model.num_codes = 32
    config.model.head_features = 512
    config.model.dropout = 0.1
    # Path of a converted torchvision checkpoint (.npz, see pretrained.py); None = scratch.
    config.model.pretrained = ml_collections.config_dict.placeholder(str)

    # Data: a source of the shared registry (experiments.data.get_dataset).
    config.data = data_defaults(
        "synthetic",
        ("synthetic", "pascal_context"),
        synthetic={"num_train": 512, "num_validation": 64, "num_test": 64},
    )
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.augment = True  # horizontal flip + colour (training only)
    config.data.shuffle_buffer = 512
    config.data.cache = True  # keep the decoded training examples in memory
    config.data.ignore_label = 255
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
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 8
    config.eval.max_examples = ml_collections.config_dict.placeholder(int)
    return config
