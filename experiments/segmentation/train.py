"""The segmentation task: EncNet under any covjax weighting (Groenendijk et al. 2021, Sec. 4.2).

The network (:class:`~experiments.segmentation.models.EncNet`) yields the
three losses CE, SE and AUX of :func:`~experiments.segmentation.losses.encnet_losses`,
weighted by ``config.scheme`` (see :mod:`experiments.common.schemes`; the
hand-tuned weights are EncNet's 1 : 0.2 : 0.2, normalized); ``config.single_loss``
("ce", "se" or "aux") trains one loss alone (the paper's single-loss rows).
Training and evaluation are the shared ones (:mod:`experiments.common.train`,
:mod:`experiments.common.evaluate`); the command line is :mod:`.main`.

Evaluation is at the network's resolution (images resized bilinearly, labels
by nearest neighbour: the input pipeline's evaluation mode, no augmentation),
on the main (EncHead) logits: pixel accuracy, mean IoU and the confusion
matrix, with the background rule of :mod:`experiments.segmentation.metrics`
(``config.data.background_class``).

For MGDA-UB the shared representation is the backbone's (stage 3, stage 4)
pair of feature maps, which feed the FCN and the Encoding heads; GradNorm's
shared layer is the last convolution of stage 3, the last layer that all
three losses depend on (stage 4 does not reach the AUX loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
from flax import nnx
from jax import Array

from experiments.common import backbones, schemes
from experiments.common import data as common_data
from experiments.common.task import Batch, Losses, ParamPath
from experiments.segmentation import losses as seg_losses
from experiments.segmentation import metrics, models

#: The batch keys the task reads: the image and its per-pixel labels.
IMAGE_KEY = "left"
LABEL_KEY = "semantic"


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> models.EncNet:
    """EncNet as described by ``config.model``, with pretrained backbone weights if given."""
    model_config = config.model
    model = models.EncNet(
        model_config.num_classes,
        backbone=model_config.backbone,
        width=model_config.width,
        num_codes=model_config.num_codes,
        head_features=model_config.head_features,
        dropout=model_config.dropout,
        stage_sizes=backbones.configured_stage_sizes(model_config),
        rngs=rngs,
    )
    backbones.load_configured_weights(model.backbone, model_config)
    return model


@dataclasses.dataclass
class SegmentationTask(common_data.DatasetTask, schemes.SingleLossBaselines):
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
    single_field = "single_loss"  # "ce", "se" or "aux": the paper's single-loss rows
    loss_names = seg_losses.LOSS_NAMES

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> SegmentationTask:
        if config.model.backbone not in backbones.BACKBONES:
            raise ValueError(
                f"config.model.backbone={config.model.backbone!r}; choose one of "
                f"{sorted(backbones.BACKBONES)}."
            )
        block_type, default_sizes = backbones.BACKBONES[config.model.backbone]
        stage_sizes = config.model.get("stage_sizes", None) or default_sizes
        return cls(
            num_classes=int(config.model.num_classes),
            ignore_label=int(config.data.get("ignore_label", 255)),
            stage3_blocks=int(stage_sizes[2]),
            last_conv="conv3" if block_type == "bottleneck" else "conv2",
        )

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        del config  # from_config checked the model fields already

    def load_split(self, config: ml_collections.ConfigDict, split: str) -> Any:
        """The ``tf.data.Dataset`` of ``split``, reduced to the image and its labels."""
        dataset = common_data.load_split(config, split)
        # Keep the left image and its labels only: a mono example is flipped with its
        # labels by the input pipeline (no stereo swap needed) and batches stay small.
        return dataset.map(lambda example: {key: example[key] for key in (IMAGE_KEY, LABEL_KEY)})

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> models.EncNet:
        return create_model(config, rngs)

    def _losses(self, outputs: models.EncNetOutputs, batch: Batch) -> Losses:
        return seg_losses.encnet_losses(
            outputs, batch[LABEL_KEY], self.num_classes, self.ignore_label
        )

    def losses(self, model: models.EncNet, batch: Batch) -> Losses:
        return self._losses(model(batch[IMAGE_KEY]), batch)

    def representation(self, model: models.EncNet, batch: Batch) -> tuple[tuple[Array, Array], Any]:
        return model.features(batch[IMAGE_KEY]), None

    def losses_from_representation(
        self, model: models.EncNet, representation: tuple[Array, Array], carry: Any, batch: Batch
    ) -> Losses:
        del carry
        height, width = batch[IMAGE_KEY].shape[1:3]
        outputs = model.heads(*representation, height, width)
        return self._losses(outputs, batch)

    def shared_layer(self) -> ParamPath:
        # The last conv of stage 3: shared by the main head (via stage 4) and the FCN head.
        return ("backbone", "layer3", str(self.stage3_blocks - 1), self.last_conv, "kernel")

    def hand_tuned_weights(self) -> dict[str, float]:
        return seg_losses.hand_tuned_weights()

    # -- evaluation ---------------------------------------------------------

    def predictor(
        self, config: ml_collections.ConfigDict
    ) -> Callable[[models.EncNet, Array], Array]:
        del config
        return predict_classes

    def metric(self, config: ml_collections.ConfigDict) -> metrics.SegmentationMetric:
        return metrics.SegmentationMetric(
            self.num_classes,
            ignore_label=self.ignore_label,
            background_class=config.data.get("background_class", None),
            class_names=class_names(config),
            source=config.data.name,
        )


def predict_classes(model: models.EncNet, images: Array) -> Array:
    """(B, H, W) class ids of the main (EncHead) logits."""
    return metrics.predictions_from_logits(model(images).logits)


def class_names(config: ml_collections.ConfigDict) -> list[str]:
    """Names of the classes of ``config.data.name`` (ids as strings if unknown)."""
    num_classes = int(config.model.num_classes)
    names: tuple[str, ...] = ()
    if config.data.name == "synthetic":
        from experiments.data import synthetic  # local: imports TensorFlow

        names = synthetic.CLASS_NAMES
    elif config.data.name == "pascal_context":
        from experiments.data import pascal_context  # local: imports TensorFlow

        names = pascal_context.CLASS_NAMES
        if num_classes == len(names) + 1:  # the 60-class layout keeps the background as 0
            names = ("background", *names)
    return list(names) if len(names) == num_classes else [str(c) for c in range(num_classes)]


def make_task(config: ml_collections.ConfigDict) -> SegmentationTask:
    """The task of ``config`` (classes, ignore label, GradNorm's shared layer)."""
    return SegmentationTask.from_config(config)
