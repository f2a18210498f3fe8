"""Shared defaults of the multi-task pixelwise experiment; the other configs start from these.

Fields used by the shared machinery are documented in
:mod:`experiments.common.train`; ``model``, ``data``, ``eval`` and
``single_task`` are this experiment's own.
"""

from __future__ import annotations

import ml_collections

from experiments.common.config import data_defaults, machinery_defaults


def get_config() -> ml_collections.ConfigDict:
    config = machinery_defaults()

    # experiments.multitask.models.MultiTaskNet arguments.
    config.model = ml_collections.ConfigDict()
    config.model.num_classes = 7  # the synthetic scenes' classes
    config.model.backbone = "resnet50"
    config.model.width = 1.0
    config.model.decoder_features = 256
    config.model.head_features = 128
    config.model.stage_sizes = ml_collections.config_dict.placeholder(tuple)
    # The depth head works in units of depth_scale metres (the synthetic scenes
    # reach ~60 m; NYUv2 rooms ~10 m).
    config.model.depth_scale = 10.0
    # Path of a converted torchvision ResNet checkpoint (.npz, see
    # experiments/segmentation/pretrained.py); None = train from scratch.
    config.model.pretrained = ml_collections.config_dict.placeholder(str)

    # Data: a source of the shared registry with semantic, depth and normals.
    config.data = data_defaults(
        "synthetic",
        ("synthetic", "nyuv2"),
        synthetic={"num_train": 512, "num_validation": 64, "num_test": 64},
    )
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.augment = True  # horizontal flip (normals mirrored) + colour, training only
    config.data.shuffle_buffer = 512
    config.data.cache = True
    config.data.ignore_label = 255
    config.image_height = 64  # the network's input resolution
    config.image_width = 128

    # ``single_task`` ("segmentation", "depth" or "normals") trains that task
    # alone (static one-hot weights) and overrides ``scheme``.
    config.num_train_steps = 6400
    config.scheme = "equal"
    config.single_task = ml_collections.config_dict.placeholder(str)
    config.checkpoint_every_steps = 1000

    # Evaluation at the network's resolution.
    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 8
    config.eval.max_examples = ml_collections.config_dict.placeholder(int)
    return config
