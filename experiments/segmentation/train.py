"""Train EncNet under any covjax weighting (Groenendijk et al. 2021, Sec. 4.2).

    python -m experiments.segmentation.train \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_cov \\
        --config.scheme=cov
    # a single-loss baseline (static one-hot weights):
    python -m experiments.segmentation.train \\
        --config=experiments/segmentation/configs/cpu.py --workdir=/tmp/seg_ce \\
        --config.single_loss=ce

The network (:class:`~experiments.segmentation.models.EncNet`) yields the
three losses CE, SE and AUX of :func:`~experiments.segmentation.losses.encnet_losses`,
weighted by ``config.scheme`` (see :mod:`experiments.common.schemes`; the
hand-tuned weights are EncNet's 1 : 0.2 : 0.2, normalized). Training uses the
shared machinery (:mod:`experiments.common.train`): runs resume from the
checkpoints in ``--workdir``, logs go to ``<workdir>/metrics.jsonl`` and
``<workdir>/tensorboard``. After training the model is evaluated on
``config.data.eval_split`` (pixel accuracy, mean IoU, confusion matrix in
``<workdir>/eval_<split>/``).

For MGDA-UB the shared representation is the backbone's (stage 3, stage 4)
pair of feature maps, which feed the FCN and the Encoding heads; GradNorm's
shared layer is the last convolution of stage 3, the last layer that all
three losses depend on (stage 4 does not reach the AUX loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from jax import Array

from experiments.common import (
    cli,
    schemes,
)
from experiments.common import data as common_data
from experiments.common import train as common_train
from experiments.common.task import Batch, Losses, ParamPath
from experiments.segmentation import losses as seg_losses
from experiments.segmentation import models, pretrained

#: The batch keys the task reads: the image and its per-pixel labels.
IMAGE_KEY = "left"
LABEL_KEY = "semantic"


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> models.EncNet:
    """EncNet as described by ``config.model``, with pretrained backbone weights if given."""
    model_config = config.model
    stage_sizes = model_config.get("stage_sizes", None)
    model = models.EncNet(
        model_config.num_classes,
        backbone=model_config.backbone,
        width=model_config.width,
        num_codes=model_config.num_codes,
        head_features=model_config.head_features,
        dropout=model_config.dropout,
        stage_sizes=tuple(stage_sizes) if stage_sizes else None,
        rngs=rngs,
    )
    if model_config.get("pretrained", None):
        pretrained.load_torchvision_backbone(model, model_config.pretrained)
    return model


@dataclasses.dataclass
class SegmentationTask:
    """EncNet's CE + SE + AUX losses on per-pixel labels (255 = ignore).

    Attributes:
      num_classes: C, the number of outputs of the heads.
      ignore_label: the void label of the data.
      stage3_blocks: blocks in the backbone's stage 3 (locates GradNorm's layer).
      last_conv: name of a block's last conv ("conv3" bottleneck, "conv2" basic).
    """

    num_classes: int
    ignore_label: int = 255
    stage3_blocks: int = 6
    last_conv: str = "conv3"
    name: str = "segmentation"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> SegmentationTask:
        if config.model.backbone not in models.BACKBONES:
            raise ValueError(
                f"config.model.backbone={config.model.backbone!r}; choose one of "
                f"{sorted(models.BACKBONES)}."
            )
        block_type, default_sizes = models.BACKBONES[config.model.backbone]
        stage_sizes = config.model.get("stage_sizes", None) or default_sizes
        return cls(
            num_classes=int(config.model.num_classes),
            ignore_label=int(config.data.get("ignore_label", 255)),
            stage3_blocks=int(stage_sizes[2]),
            last_conv="conv3" if block_type == "bottleneck" else "conv2",
        )

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return create_model(config, rngs)

    def _losses(self, outputs: models.EncNetOutputs, batch: Batch) -> Losses:
        return seg_losses.encnet_losses(
            outputs, batch[LABEL_KEY], self.num_classes, self.ignore_label
        )

    def losses(self, model: nnx.Module, batch: Batch) -> Losses:
        return self._losses(model(batch[IMAGE_KEY]), batch)  # type: ignore[operator]

    def representation(self, model: nnx.Module, batch: Batch) -> tuple[tuple[Array, Array], Any]:
        return model.features(batch[IMAGE_KEY]), None  # type: ignore[attr-defined]

    def losses_from_representation(
        self, model: nnx.Module, representation: tuple[Array, Array], carry: Any, batch: Batch
    ) -> Losses:
        del carry
        height, width = batch[IMAGE_KEY].shape[1:3]
        outputs = model.heads(*representation, height, width)  # type: ignore[attr-defined]
        return self._losses(outputs, batch)

    def shared_layer(self) -> ParamPath:
        # The last conv of stage 3: shared by the main head (via stage 4) and the FCN head.
        return ("backbone", "layer3", str(self.stage3_blocks - 1), self.last_conv, "kernel")

    def hand_tuned_weights(self) -> dict[str, float]:
        return seg_losses.hand_tuned_weights()

    def train_batches(
        self,
        config: ml_collections.ConfigDict,
        *,
        start_step: int,
        process_index: int,
        process_count: int,
    ) -> Iterator[dict[str, np.ndarray]]:
        return train_batches(
            config, start_step=start_step, process_index=process_index,
            process_count=process_count,
        )  # fmt: skip


def make_task(config: ml_collections.ConfigDict) -> SegmentationTask:
    """The task of ``config`` (classes, ignore label, GradNorm's shared layer)."""
    return SegmentationTask.from_config(config)


def load_split(config: ml_collections.ConfigDict, split: str) -> Any:
    """The ``tf.data.Dataset`` of ``split`` of ``config.data``, reduced to image and labels."""
    dataset = common_data.load_split(config, split)
    # Keep the left image and its labels only: a mono example is flipped with its
    # labels by the input pipeline (no stereo swap needed) and batches stay small.
    return dataset.map(lambda example: {key: example[key] for key in (IMAGE_KEY, LABEL_KEY)})


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    start_step: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches ("left" float32 [0, 1], "semantic" int32) from ``start_step``.

    The stream is a pure function of ``config.seed`` (seeded shuffle, stateless
    augmentation by stream position), so a resumed run skips what it has seen.
    """
    return common_data.train_batches(
        config,
        load_split(config, config.data.train_split),
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )


def resolve_single_loss(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turn ``config.single_loss`` into the static one-hot scheme it stands for."""
    name = config.get("single_loss", None)
    if not name:
        return config
    return schemes.with_static_weights(config, seg_losses.single_loss_weights(name))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True
) -> dict[str, float]:
    """Train ``config`` into ``workdir`` (resuming if possible), then evaluate it.

    Returns the evaluation summary (``pixel_accuracy``, ``mean_iou``).
    """
    from experiments.segmentation import evaluate  # local: evaluate imports this module

    config = resolve_single_loss(config)
    task = make_task(config)
    trainer, state = common_train.train(task, config, workdir, show_progress=show_progress)
    return evaluate.evaluate_and_save(trainer.model_from_state(state), config, workdir)


def main(config: ml_collections.ConfigDict) -> None:
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    summary = train_and_evaluate(config, workdir)
    print(" ".join(f"{key}={value:.4f}" for key, value in summary.items()))


if __name__ == "__main__":
    # Flags are defined only when run as a script, so that importing this module
    # (e.g. from evaluate.py or compare.py, which define their own) never clashes.
    cli.define_flags()
    flags.DEFINE_string("workdir", None, "Directory for logs and checkpoints (required).")
    cli.run(main)
