"""The multi-task task: segmentation + depth + normals under any covjax weighting.

The network (:class:`~experiments.multitask.models.MultiTaskNet`) yields the
losses ``"segmentation"``, ``"depth"`` and ``"normals"``
(:func:`~experiments.multitask.losses.multitask_losses`), weighted by
``config.scheme`` (:mod:`experiments.common.schemes`; the "hand-tuned" weights
are equal, MTAN's baseline); ``config.single_task`` trains one task alone (the
single-task baselines). Training and evaluation are the shared ones
(:mod:`experiments.common.train`, :mod:`experiments.common.evaluate`); the
command line is :mod:`.main`. Evaluation is at the network's resolution
(images resized bilinearly, targets by nearest neighbour, no augmentation),
with every metric of :mod:`experiments.multitask.metrics`.

For MGDA-UB the shared representation is the decoder output before the heads;
GradNorm's shared layer is the decoder's last conv (see :mod:`.models`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax import Array

from experiments.common import backbones, schemes
from experiments.common import data as common_data
from experiments.common.task import Batch, Losses, ParamPath
from experiments.multitask import losses as mt_losses
from experiments.multitask import metrics, models

IMAGE_KEY = "left"
#: The contract features the experiment reads: the image and the three targets.
KEYS: tuple[str, ...] = (IMAGE_KEY, "semantic", "depth", "normals")
#: Horizontal focal length per pixel of image width, for sources that store no
#: ``focal`` (the input pipeline rescales a focal with every depth map). NYUv2:
#: the Kinect's f_x = 518.8579 px at 640 px width (the NYU Depth V2 toolbox).
FOCAL_PER_WIDTH: dict[str, float] = {"nyuv2": 518.8579 / 640.0}


def create_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> models.MultiTaskNet:
    """The network of ``config.model``, with pretrained backbone weights if given."""
    model_config = config.model
    model = models.MultiTaskNet(
        int(model_config.num_classes),
        backbone=model_config.backbone,
        width=float(model_config.width),
        decoder_features=int(model_config.decoder_features),
        head_features=int(model_config.head_features),
        stage_sizes=backbones.configured_stage_sizes(model_config),
        depth_scale=float(model_config.depth_scale),
        rngs=rngs,
    )
    backbones.load_configured_weights(model.backbone, model_config)
    return model


@dataclasses.dataclass
class MultiTaskTask(common_data.DatasetTask, schemes.SingleLossBaselines):
    """The three dense losses on one shared network (an ``EvaluatedTask`` of
    :mod:`experiments.common.task`).

    Attributes:
      ignore_label: the void label of the semantic targets.
    """

    ignore_label: int = 255
    name: str = "multitask"
    single_field = "single_task"  # the single-task baselines
    loss_names = models.TASKS

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> MultiTaskTask:
        return cls(ignore_label=int(config.data.get("ignore_label", 255)))

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        del config  # the network checks its own arguments when it is built

    def load_split(self, config: ml_collections.ConfigDict, split: str) -> Any:
        """The ``tf.data.Dataset`` of ``split`` of ``config.data``, reduced to image and targets."""
        import tensorflow as tf  # local: only data loading needs TensorFlow

        dataset = common_data.load_split(config, split)
        missing = [key for key in KEYS if key not in dataset.element_spec]
        if missing:
            raise ValueError(
                f"Dataset {config.data.name!r} ({split}) lacks {missing}; the multi-task "
                f"experiment needs {list(KEYS)}."
            )
        name = config.data.name
        if "focal" not in dataset.element_spec and name not in FOCAL_PER_WIDTH:
            raise ValueError(
                f"Dataset {name!r} stores no 'focal' and its focal length is not known here "
                "(add it to experiments.multitask.train.FOCAL_PER_WIDTH)."
            )

        def select(example: dict[str, Any]) -> dict[str, Any]:
            # Mono examples: the input pipeline mirrors them with their targets
            # (normals' x negated) instead of swapping stereo views.
            selected = {key: example[key] for key in KEYS}
            if "focal" in example:
                selected["focal"] = example["focal"]
            else:
                width = tf.cast(tf.shape(example[IMAGE_KEY])[1], tf.float32)
                selected["focal"] = FOCAL_PER_WIDTH[name] * width
            return selected

        return dataset.map(select)

    def create_model(
        self, config: ml_collections.ConfigDict, rngs: nnx.Rngs
    ) -> models.MultiTaskNet:
        return create_model(config, rngs)

    def representation(self, model: models.MultiTaskNet, batch: Batch) -> tuple[Array, Any]:
        return model.features(batch[IMAGE_KEY]), None

    def losses_from_representation(
        self, model: models.MultiTaskNet, representation: Array, carry: Any, batch: Batch
    ) -> Losses:
        del carry  # the heads need z only
        height, width = batch[IMAGE_KEY].shape[1:3]
        outputs = model.heads(representation, height, width)
        return mt_losses.multitask_losses(outputs, batch, self.ignore_label)

    def losses(self, model: models.MultiTaskNet, batch: Batch) -> Losses:
        return self.losses_from_representation(model, *self.representation(model, batch), batch)

    def shared_layer(self) -> ParamPath:
        return models.SHARED_LAYER

    def hand_tuned_weights(self) -> dict[str, float]:
        return mt_losses.equal_weights()

    # -- evaluation ---------------------------------------------------------

    def predictor(
        self, config: ml_collections.ConfigDict
    ) -> Callable[[models.MultiTaskNet, Array], dict[str, Array]]:
        del config
        return predict

    def metric(self, config: ml_collections.ConfigDict) -> metrics.MultiTaskMetrics:
        return metrics.MultiTaskMetrics(int(config.model.num_classes), self.ignore_label)


def predict(model: models.MultiTaskNet, images: Array) -> dict[str, Array]:
    """Class ids, depth (m) and unit normals of (B, H, W, 3) images."""
    outputs = model(images)
    labels = jnp.argmax(outputs.segmentation, axis=-1).astype(jnp.int32)
    return {"labels": labels, "depth": outputs.depth, "normals": outputs.normals}


def make_task(config: ml_collections.ConfigDict) -> MultiTaskTask:
    return MultiTaskTask.from_config(config)
