"""The paper's depth setting (Groenendijk et al. 2021, Sec. 4.1, https://arxiv.org/abs/2009.01717).

ResNet-50MD at full width, 256×512 inputs, batch 8, Adam 1e-4, 30 epochs of
the KITTI Eigen training split (22,600 stereo pairs: 2,825 steps per epoch),
no learning-rate decay. Set ``config.data.data_dir`` to the KITTI raw root;
for the Cityscapes-trained Table 3 use ``--config.data.name=cityscapes`` and
100 epochs (``--config.num_train_steps``).
"""

from __future__ import annotations

import ml_collections

from experiments.depth.configs import default

KITTI_EIGEN_TRAIN_PAIRS = 22_600
EPOCHS = 30


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.update(encoder="resnet50", width=1.0)
    config.data.update(name="kitti", train_split="train", eval_split="test", shuffle_buffer=2048)
    config.update(image_height=256, image_width=512)
    config.update(optimizer="adam", learning_rate=1e-4, batch_size=8)
    config.steps_per_epoch = KITTI_EIGEN_TRAIN_PAIRS // config.batch_size
    config.num_train_steps = EPOCHS * config.steps_per_epoch
    config.update(log_every_steps=100, checkpoint_every_steps=2000)
    config.eval.crop = "garg"
    return config
