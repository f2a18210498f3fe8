"""The depth task: monodepth under any covjax weighting (Groenendijk et al. 2021, Sec. 4.1).

The network (:class:`~experiments.depth.models.MonoDepth`) sees the left
image and predicts left and right disparities at 4 scales; the 32
self-supervised losses of :func:`~experiments.depth.losses.monodepth_losses`
are weighted by ``config.scheme`` (see :mod:`experiments.common.schemes`).
Training and evaluation are the shared ones (:mod:`experiments.common.train`,
:mod:`experiments.common.evaluate`); the command line is :mod:`.main`.

Evaluation (monodepth's Eigen protocol, Godard et al. 2017): for each image
of the split the network predicts the left disparity of the image and of its
mirror, blended with Godard's ramp masks (``config.eval.post_process``); the
disparity is resized to its own ground truth's native size (test sets may mix
image sizes, as KITTI's Eigen split does) and turned into depth with that
image's focal length, baseline and principal-point offset (``doffs``);
ABS_REL, SQ_REL, RMSE, RMSE log and δ < 1.25^k are computed on the valid
ground truth, per image, and averaged (:class:`~.metrics.DepthMetric`). On
the synthetic data the ground truth is the rendered depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax import Array

from experiments.common import data as common_data
from experiments.common.config import ConfigError
from experiments.common.task import Batch, Losses, ParamPath
from experiments.depth import losses as depth_losses
from experiments.depth import metrics, models


@dataclasses.dataclass
class DepthTask(common_data.DatasetTask):
    """The self-supervised stereo depth task of the paper (32 monodepth losses).

    MGDA-UB's representation is the ``iconv4`` feature map and GradNorm's
    shared layer the ``iconv4`` kernel, as in the reference code. Training
    reads the stereo pair only (the targets are dropped before caching and
    augmentation); evaluation scores at the ground truth's native size.
    """

    name: str = "depth"
    train_keys = ("left", "right")
    cache_train = True
    resize_eval_targets = False

    def load_split(self, config: ml_collections.ConfigDict, split: str) -> Any:
        return common_data.load_split(config, split)

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> models.MonoDepth:
        return models.MonoDepth(
            encoder=config.model.encoder,
            width=config.model.width,
            batch_norm=config.model.batch_norm,
            initial_disparity=config.model.get("initial_disparity"),
            rngs=rngs,
        )

    def losses(self, model: models.MonoDepth, batch: Batch) -> Losses:
        disparities = model(batch["left"])
        return depth_losses.monodepth_losses(disparities, batch["left"], batch["right"])

    def representation(self, model: models.MonoDepth, batch: Batch) -> tuple[Array, Any]:
        return model.encode(batch["left"])

    def losses_from_representation(
        self, model: models.MonoDepth, representation: Array, carry: Any, batch: Batch
    ) -> Losses:
        disparities = model.decode_from_iconv4(representation, carry)
        return depth_losses.monodepth_losses(disparities, batch["left"], batch["right"])

    def shared_layer(self) -> ParamPath:
        return models.GRADNORM_LAYER

    def hand_tuned_weights(self) -> dict[str, float]:
        return depth_losses.hand_tuned_weights()

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """The depth task's own fields, checked before anything is built."""
        eval_crop(config)

    # -- evaluation ---------------------------------------------------------

    def resolve_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        return config  # every run is the config's scheme

    def predictor(
        self, config: ml_collections.ConfigDict
    ) -> Callable[[models.MonoDepth, Array], Array]:
        return predict_post_processed if config.eval.post_process else predict_disparity

    def metric(self, config: ml_collections.ConfigDict) -> metrics.DepthMetric:
        return metrics.DepthMetric(
            min_depth=config.eval.min_depth,
            max_depth=config.eval.max_depth,
            crop=eval_crop(config),
            source=config.data.name,
        )


def predict_disparity(model: models.MonoDepth, images: Array) -> Array:
    """(B, H, W) left disparities of (B, H, W, 3) images."""
    return model(images)[0][..., 0]


def predict_post_processed(model: models.MonoDepth, images: Array) -> Array:
    """(B, H, W) left disparities, blended with those of the mirrored images (Godard et al.)."""
    mirrored = model(jnp.flip(images, axis=2))[0][..., 0]
    return metrics.post_process_disparity(predict_disparity(model, images), mirrored)


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
