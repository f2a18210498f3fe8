"""The paper's segmentation setting (Groenendijk et al. 2021, Sec. 4.2, https://arxiv.org/abs/2009.01717).

EncNet with a dilated ResNet-50 (output stride 8), 32 codewords, an FCN
auxiliary head; PASCAL Context with 59 classes (background ignored), SGD with
learning rate 1e-4 for 40 epochs of the 4998 training images. The backbone
should start from ImageNet weights: convert a torchvision ResNet-50 checkpoint
(``python -m experiments.common.backbones convert ...``) and pass
``--config.model.pretrained=resnet50.npz``; set ``--config.data.data_dir`` to
the folder holding ``VOCdevkit``. Crop size and batch follow EncNet's PASCAL
Context defaults (480×480, batch 16); images are resized to it, not cropped.
"""

from __future__ import annotations

import ml_collections

from experiments.segmentation.configs import default

PASCAL_CONTEXT_TRAIN_IMAGES = 4998
EPOCHS = 40


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.update(num_classes=59, backbone="resnet50", width=1.0)
    config.data.update(name="pascal_context", train_split="train", eval_split="val")
    config.data.update(shuffle_buffer=2048, cache=False)
    config.data.background_class = None  # the reader maps background to 255
    config.update(image_height=480, image_width=480)
    config.update(optimizer="sgd", learning_rate=1e-4, momentum=0.9, batch_size=16)
    config.steps_per_epoch = PASCAL_CONTEXT_TRAIN_IMAGES // config.batch_size
    config.num_train_steps = EPOCHS * config.steps_per_epoch
    config.update(log_every_steps=50, checkpoint_every_steps=2000)
    config.eval.batch_size = 16
    return config
