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
    config.model.update(num_classes=13, backbone="resnet50", width=1.0, depth_scale=1.0)
    config.data.update(name="nyuv2", train_split="train", eval_split="val")
    config.data.update(shuffle_buffer=NYUV2_TRAIN_IMAGES, cache=False)
    config.update(image_height=288, image_width=384)
    config.update(optimizer="adam", learning_rate=1e-4, batch_size=8)
    config.steps_per_epoch = NYUV2_TRAIN_IMAGES // config.batch_size
    config.num_train_steps = EPOCHS * config.steps_per_epoch
    config.update(log_every_steps=50, checkpoint_every_steps=2000)
    return config
