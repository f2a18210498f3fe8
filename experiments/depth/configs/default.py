"""Shared defaults of the depth experiment; the other configs start from these.

Fields used by the shared machinery are documented in
:mod:`experiments.common.train`; ``model``, ``data`` and ``eval`` are the
depth task's own.
"""

from __future__ import annotations

import ml_collections

from experiments.common.config import data_defaults, eval_defaults, machinery_defaults


def get_config() -> ml_collections.ConfigDict:
    config = machinery_defaults()

    # MonoDepth (Godard et al., CVPR 2017): experiments.depth.models.MonoDepth arguments.
    config.model = ml_collections.ConfigDict()
    config.model.encoder = "resnet50"
    config.model.width = 1.0
    config.model.batch_norm = False
    # None: the reference init (disparity ≈ 0.15 at start); a float is a fraction of the width.
    config.model.initial_disparity = ml_collections.FieldReference(None, field_type=float)

    # Data: a source of the shared registry (experiments.data.get_dataset), with
    # its loader's options in config.data.<source> (e.g. data.kitti.split_file).
    config.data = data_defaults(
        "synthetic",
        ("synthetic", "kitti", "cityscapes"),
        synthetic={"num_train": 512, "num_validation": 64, "num_test": 64},
    )
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.augment = True  # monodepth's flip + colour augmentation (training only)
    config.data.shuffle_buffer = 512
    config.image_height = 64  # the network's input resolution
    config.image_width = 128

    # Optimisation (paper: Adam 1e-4, batch 8, no learning-rate decay) and the
    # weighting, logging, checkpoint and device fields: experiments.common.config.

    # Evaluation (monodepth's Eigen protocol): post-processed, depth clamped to [1e-3, 80] m.
    config.eval = eval_defaults()
    config.eval.post_process = True
    # "garg" or "eigen": the crops of KITTI's Eigen split (paper.py: "garg"); "none": all pixels.
    config.eval.crop = "none"
    config.eval.min_depth = 1e-3
    config.eval.max_depth = 80.0
    return config
