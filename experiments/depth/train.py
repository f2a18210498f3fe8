"""Train monodepth under any covjax weighting (Groenendijk et al. 2021, Sec. 4.1).

    python -m experiments.depth.train \\
        --config=experiments/depth/configs/cpu.py --workdir=/tmp/depth_cov \\
        --config.scheme=cov

The network (:class:`~experiments.depth.models.MonoDepth`) sees the left
image and predicts left and right disparities at 4 scales; the 32
self-supervised losses of :func:`~experiments.depth.losses.monodepth_losses`
are weighted by ``config.scheme`` (see :mod:`experiments.common.schemes`).
Runs resume from the checkpoints in ``--workdir``; logs go to
``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard``.
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

from experiments.common import cli
from experiments.common import data as common_data
from experiments.common import train as common_train
from experiments.common.config import ConfigError
from experiments.common.data import load_split
from experiments.common.task import Batch, Losses, ParamPath
from experiments.depth import losses as depth_losses
from experiments.depth import models


@dataclasses.dataclass
class DepthTask:
    """The self-supervised stereo depth task of the paper (32 monodepth losses).

    MGDA-UB's representation is the ``iconv4`` feature map and GradNorm's
    shared layer the ``iconv4`` kernel, as in the reference code.
    """

    name: str = "depth"

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return models.MonoDepth(
            encoder=config.model.encoder,
            width=config.model.width,
            batch_norm=config.model.batch_norm,
            initial_disparity=config.model.get("initial_disparity"),
            rngs=rngs,
        )

    def losses(self, model: nnx.Module, batch: Batch) -> Losses:
        disparities = model(batch["left"])  # type: ignore[operator]
        return depth_losses.monodepth_losses(disparities, batch["left"], batch["right"])

    def representation(self, model: nnx.Module, batch: Batch) -> tuple[Array, Any]:
        return model.encode(batch["left"])  # type: ignore[attr-defined]

    def losses_from_representation(
        self, model: nnx.Module, representation: Array, carry: Any, batch: Batch
    ) -> Losses:
        disparities = model.decode_from_iconv4(representation, carry)  # type: ignore[attr-defined]
        return depth_losses.monodepth_losses(disparities, batch["left"], batch["right"])

    def shared_layer(self) -> ParamPath:
        return models.GRADNORM_LAYER

    def hand_tuned_weights(self) -> dict[str, float]:
        return depth_losses.hand_tuned_weights()

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """The depth task's own fields, checked before anything is built."""
        eval_crop(config)

    def train_batches(
        self,
        config: ml_collections.ConfigDict,
        *,
        start_step: int,
        process_index: int,
        process_count: int,
    ) -> Iterator[dict[str, np.ndarray]]:
        return train_batches(
            config,
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
        )


#: ``config.eval.crop``: the Garg or Eigen crop of KITTI's Eigen split, or "none".
EVAL_CROPS = ("garg", "eigen", "none")


def eval_crop(config: ml_collections.ConfigDict) -> str | None:
    """``config.eval.crop`` for the metrics (``None`` for ``"none"``), validated."""
    crop = config.eval.crop
    if crop is None or (isinstance(crop, str) and crop.lower() == "none"):
        return None  # also the "None" that --config.eval.crop=None gives
    if crop not in EVAL_CROPS:
        raise ConfigError(f"config.eval.crop must be one of {EVAL_CROPS}, got {crop!r}.")
    return crop


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    start_step: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches ("left", "right" float32 in [0, 1]) from ``start_step``.

    Only the stereo pair is needed for training: the targets are dropped before
    caching and augmentation.
    """
    return common_data.train_batches(
        config,
        load_split(config, config.data.train_split),
        start_step=start_step,
        process_index=process_index,
        process_count=process_count,
        keys=("left", "right"),
        cache=True,
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, show_progress: bool = True
) -> tuple[common_train.Trainer, common_train.TrainState]:
    """Train ``config.scheme`` on the depth task into ``workdir`` (resuming if possible)."""
    return common_train.train(DepthTask(), config, workdir, show_progress=show_progress)


def main(config: ml_collections.ConfigDict) -> None:
    if flags.FLAGS.workdir is None:
        raise app.UsageError("--workdir is required.")
    train_and_evaluate(config, flags.FLAGS.workdir)


def define_flags() -> None:
    """The command-line flags (defined only when run as a program, so modules import freely)."""
    cli.define_flags()
    flags.DEFINE_string("workdir", None, "Directory for logs and checkpoints (required).")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
