"""The ``Task`` protocol: what an experiment plugs into the shared training machinery.

A task (depth, segmentation, multi-task, ...) says how to build its network
from a config, which named losses it yields on a batch, where its shared
representation and shared layer are (for the gradient-based schemes), how to
feed and evaluate it, and which static weights its authors hand-tuned. The
machinery (:mod:`experiments.common.train`) does everything else: weighting,
optimiser, sharding, logging, checkpoints.

Losses are a flat ``{name: scalar}`` dict whose names group with ``/``
(``"l1/left/s0"``): the logs, plots and tables use those names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import ml_collections
import numpy as np
from flax import nnx
from jax import Array

Batch = Mapping[str, Any]  # a dict of arrays with a leading batch axis
Losses = dict[str, Array]

#: A parameter path inside the model, e.g. ``("iconv4", "conv", "kernel")``.
ParamPath = tuple[str, ...]


@runtime_checkable
class Task(Protocol):
    """What an experiment provides to :func:`experiments.common.train.train`.

    Attributes:
      name: a short name, used in logs.
    """

    name: str

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        """Build the network described by ``config.model``."""
        ...

    def losses(self, model: nnx.Module, batch: Batch) -> Losses:
        """The named scalar losses of ``model`` on ``batch`` (training mode)."""
        ...

    def hand_tuned_weights(self) -> dict[str, float]:
        """The task's hand-tuned static weights, keyed by loss name."""
        ...

    def train_batches(
        self,
        config: ml_collections.ConfigDict,
        *,
        start_step: int,
        process_index: int,
        process_count: int,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Training batches from step ``start_step`` on (this process's share).

        Resuming calls it with the restored step, so the sequence of batches
        seen by a resumed run must equal that of an uninterrupted run.
        """
        ...


@runtime_checkable
class RepresentationTask(Task, Protocol):
    """A task whose losses factor through a shared representation z (MGDA-UB).

    With ``z, carry = representation(model, batch)``,
    ``losses(model, batch) == losses_from_representation(model, z, carry,
    batch)``; MGDA-UB takes the per-loss gradients with respect to z instead
    of the parameters (Sener & Koltun). ``carry`` holds whatever else the
    heads need from the shared part (e.g. skip connections); no per-loss
    gradient is taken with respect to it.
    """

    def representation(self, model: nnx.Module, batch: Batch) -> tuple[Any, Any]:
        """``(z, carry)``: the shared representation (array or pytree) and the rest."""
        ...

    def losses_from_representation(
        self, model: nnx.Module, representation: Any, carry: Any, batch: Batch
    ) -> Losses:
        """The named losses computed from z (the heads/decoder part of the network)."""
        ...


@runtime_checkable
class SharedLayerTask(Task, Protocol):
    """A task that names the shared layer GradNorm measures gradient norms at."""

    def shared_layer(self) -> ParamPath:
        """Path of the shared parameter, e.g. ``("iconv4", "conv", "kernel")``."""
        ...


def has_representation(task: Task) -> bool:
    return callable(getattr(task, "representation", None)) and callable(
        getattr(task, "losses_from_representation", None)
    )


def has_shared_layer(task: Task) -> bool:
    return callable(getattr(task, "shared_layer", None))
