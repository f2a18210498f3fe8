"""NYUv2 with 13 classes, depth and normals (MTAN / LibMTL's benchmark, the LSB setting).

The preprocessed MTAN layout (``experiments/data/nyuv2.py``; set
``--config.data.data_dir`` to the folder holding ``train/`` and ``val/``) at
its native 288×384, a dilated ResNet-50 encoder (pass ImageNet weights with
``--config.model.pretrained=resnet50.npz``), Adam at 1e-4, batch 8, 200 epochs
of the 795 training images, as LibMTL's NYUv2 example does (its learning-rate
halving after 100 epochs is not reproduced).
"""

from __future__ import annotations

import ml_collections

from experiments.multitask.configs import default

NYUV2_TRAIN_IMAGES = 795
EPOCHS = 200


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.num_classes = 13
    config.model.backbone = "resnet50"
    config.model.width = 1.0
    config.model.depth_scale = 1.0
    config.data.name = "nyuv2"
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.shuffle_buffer = NYUV2_TRAIN_IMAGES
    config.data.cache = False
    config.image_height = 288
    config.image_width = 384
    config.optimizer = "adam"
    config.learning_rate = 1e-4
    config.batch_size = 8
    config.steps_per_epoch = NYUV2_TRAIN_IMAGES // config.batch_size
    config.num_train_steps = EPOCHS * config.steps_per_epoch
    config.log_every_steps = 50
    config.checkpoint_every_steps = 2000
    return config
