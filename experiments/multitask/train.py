"""Train the multi-task network (segmentation + depth + normals) under any covjax weighting.

    python -m experiments.multitask.train \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_cov \\
        --config.scheme=cov
    # a single-task baseline (static one-hot weights):
    python -m experiments.multitask.train \\
        --config=experiments/multitask/configs/cpu.py --workdir=/tmp/mt_depth \\
        --config.single_task=depth

The network (:class:`~experiments.multitask.models.MultiTaskNet`) yields the
losses ``"segmentation"``, ``"depth"`` and ``"normals"``
(:func:`~experiments.multitask.losses.multitask_losses`), weighted by
``config.scheme`` (:mod:`experiments.common.schemes`; the "hand-tuned" weights
are equal, MTAN's baseline). Training uses the shared machinery
(:mod:`experiments.common.train`): runs resume from ``--workdir``'s
checkpoints and log to ``<workdir>/metrics.jsonl`` and TensorBoard. After
training the model is evaluated on ``config.data.eval_split``
(``<workdir>/eval_<split>/summary.json``).

For MGDA-UB the shared representation is the decoder output before the heads;
GradNorm's shared layer is the decoder's last conv (see :mod:`.models`).
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
from experiments.multitask import losses as mt_losses
from experiments.multitask import models

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
    stage_sizes = model_config.get("stage_sizes", None)
    model = models.MultiTaskNet(
        int(model_config.num_classes),
        backbone=model_config.backbone,
        width=float(model_config.width),
        decoder_features=int(model_config.decoder_features),
        head_features=int(model_config.head_features),
        stage_sizes=tuple(stage_sizes) if stage_sizes else None,
        depth_scale=float(model_config.depth_scale),
        rngs=rngs,
    )
    if model_config.get("pretrained", None):
        from experiments.segmentation import pretrained

        pretrained.load_torchvision_backbone(model.backbone, model_config.pretrained)
    return model


@dataclasses.dataclass
class MultiTaskTask:
    """The three dense losses on one shared network (a ``RepresentationTask`` and
    ``SharedLayerTask`` of :mod:`experiments.common.task`).

    Attributes:
      ignore_label: the void label of the semantic targets.
    """

    ignore_label: int = 255
    name: str = "multitask"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> MultiTaskTask:
        return cls(ignore_label=int(config.data.get("ignore_label", 255)))

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return create_model(config, rngs)

    def representation(self, model: nnx.Module, batch: Batch) -> tuple[Array, Any]:
        return model.features(batch[IMAGE_KEY]), None  # type: ignore[attr-defined]

    def losses_from_representation(
        self, model: nnx.Module, representation: Array, carry: Any, batch: Batch
    ) -> Losses:
        del carry  # the heads need z only
        height, width = batch[IMAGE_KEY].shape[1:3]
        outputs = model.heads(representation, height, width)  # type: ignore[attr-defined]
        return mt_losses.multitask_losses(outputs, batch, self.ignore_label)

    def losses(self, model: nnx.Module, batch: Batch) -> Losses:
        return self.losses_from_representation(model, *self.representation(model, batch), batch)

    def shared_layer(self) -> ParamPath:
        return models.SHARED_LAYER

    def hand_tuned_weights(self) -> dict[str, float]:
        return mt_losses.equal_weights()

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


def make_task(config: ml_collections.ConfigDict) -> MultiTaskTask:
    return MultiTaskTask.from_config(config)


def load_split(config: ml_collections.ConfigDict, split: str) -> Any:
    """The ``tf.data.Dataset`` of ``split`` of ``config.data``, reduced to image and targets."""
    import tensorflow as tf  # local: only data loading needs TensorFlow

    dataset = common_data.load_split(config, split)
    missing = [key for key in KEYS if key not in dataset.element_spec]
    if missing:
        raise ValueError(
            f"Dataset {config.data.name!r} ({split}) lacks {missing}; the multi-task experiment "
            f"needs {list(KEYS)}."
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


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    start_step: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's batches from ``start_step`` (a pure function of ``config.seed``)."""
    return common_data.train_batches(
        config,
        load_split(config, config.data.train_split),
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
    )


def resolve_single_task(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turn ``config.single_task`` into the static one-hot scheme it stands for."""
    task = config.get("single_task", None)
    if not task:
        return config
    return schemes.with_static_weights(config, mt_losses.single_task_weights(task))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True
) -> dict[str, float]:
    """Train ``config`` into ``workdir`` (resuming if possible), then evaluate it."""
    from experiments.multitask import evaluate  # local: evaluate imports this module

    config = resolve_single_task(config)
    trainer, state = common_train.train(
        make_task(config), config, workdir, show_progress=show_progress
    )
    return evaluate.evaluate_and_save(trainer.model_from_state(state), config, workdir)


def main(config: ml_collections.ConfigDict) -> None:
    workdir = flags.FLAGS.workdir
    if workdir is None:
        raise app.UsageError("--workdir is required.")
    summary = train_and_evaluate(config, workdir)
    print(" ".join(f"{key}={value:.4f}" for key, value in summary.items()))


if __name__ == "__main__":
    # Flags are defined only when run as a script, so that evaluate.py and
    # compare.py can import this module next to their own --config flag.
    cli.define_flags()
    flags.DEFINE_string("workdir", None, "Directory for logs and checkpoints (required).")
    cli.run(main)
