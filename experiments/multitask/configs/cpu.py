"""A CPU-sized multi-task run: a narrow dilated ResNet-18 on 64×128 synthetic scenes.

Adam at 2e-3 (the paper setting's 1e-4 barely moves a network trained from
scratch in a few hundred steps), batch 8, 300 steps (about 5 epochs of the
512 training scenes): every head clearly beats the untrained network under
every scheme of ``compare.py`` in a few minutes per scheme on 2 CPU cores.
"""

from __future__ import annotations

import ml_collections

from experiments.multitask.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.update(backbone="resnet18", width=0.25, stage_sizes=(1, 1, 1, 1))
    config.model.decoder_features = 128  # × width = 32 channels
    config.model.head_features = 64  # × width = 16 channels
    config.update(learning_rate=2e-3, batch_size=8, steps_per_epoch=64, num_train_steps=300)
    config.update(log_every_steps=10, checkpoint_every_steps=300)
    return config
