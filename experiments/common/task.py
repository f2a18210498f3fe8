"""The ``Task`` protocol: what an experiment plugs into the shared training machinery.

A task (depth, segmentation, multi-task, ...) says how to build its network
from a config, which named losses it yields on a batch, where its shared
representation and shared layer are (for the gradient-based schemes), how to
feed it, and which static weights its authors hand-tuned. The machinery
(:mod:`experiments.common.train`) does everything else: weighting, optimiser,
sharding, logging, checkpoints. An :class:`EvaluatedTask` also says how to
score its network (:mod:`experiments.common.evaluate`), which the shared
``compare`` (:mod:`experiments.common.compare`) needs.

Every member is required: a protocol with optional members would be probed at
run time, and a type checker could not tell a task that forgot one.

Losses are a flat ``{name: scalar}`` dict whose names group with ``/``
(``"l1/left/s0"``): the logs, plots and tables use those names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import ml_collections
import numpy as np
from flax import nnx
from jax import Array

Batch = Mapping[str, Any]  # a dict of arrays with a leading batch axis
Losses = dict[str, Array]

#: A parameter path inside the model, e.g. ``("iconv4", "conv", "kernel")``.
ParamPath = tuple[str, ...]

#: The task's network type: the task's methods take the model its ``create_model`` builds.
ModelT = TypeVar("ModelT", bound=nnx.Module)


@runtime_checkable
class Task(Protocol[ModelT]):
    """What an experiment provides to :func:`experiments.common.train.train`.

    The losses factor through a shared representation z (what MGDA-UB takes
    its per-loss gradients with respect to, Sener & Koltun 2018): with
    ``z, carry = representation(model, batch)``, ``losses(model, batch) ==
    losses_from_representation(model, z, carry, batch)``. ``carry`` holds
    whatever else the heads need from the shared part (e.g. skip
    connections); no per-loss gradient is taken with respect to it.

    Attributes:
      name: a short name, used in logs.
    """

    name: str

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Raise :class:`~experiments.common.config.ConfigError` on a bad task field,
        before anything is built."""
        ...

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> ModelT:
        """Build the network described by ``config.model``."""
        ...

    def losses(self, model: ModelT, batch: Batch) -> Losses:
        """The named scalar losses of ``model`` on ``batch`` (training mode)."""
        ...

    def representation(self, model: ModelT, batch: Batch) -> tuple[Any, Any]:
        """``(z, carry)``: the shared representation (array or pytree) and the rest."""
        ...

    def losses_from_representation(
        self, model: ModelT, representation: Any, carry: Any, batch: Batch
    ) -> Losses:
        """The named losses computed from z (the heads/decoder part of the network)."""
        ...

    def shared_layer(self) -> ParamPath:
        """Path of the parameter GradNorm measures gradient norms at, e.g.
        ``("iconv4", "conv", "kernel")``."""
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


class Metric(Protocol):
    """A task's evaluation metric, accumulated batch by batch on the host."""

    def add(self, batch: Mapping[str, np.ndarray], predictions: Any) -> None:
        """Score one batch of predictions (numpy) against the batch's targets."""
        ...

    def summary(self) -> dict[str, float]:
        """The metric's values over every batch added."""
        ...

    def save(self, directory: Path) -> None:
        """Write what the summary does not hold (per-image rows, a confusion matrix)."""
        ...


@runtime_checkable
class EvaluatedTask(Task[ModelT], Protocol[ModelT]):
    """A task that can also score its network (what ``evaluate`` and ``compare`` need)."""

    def resolve_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The config a run actually trains with (e.g. a single-loss baseline's one-hot
        weights, :func:`experiments.common.schemes.resolve_single`)."""
        ...

    def eval_batches(
        self, config: ml_collections.ConfigDict, split: str
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of ``split`` at the network's size (``config.eval.max_examples`` at most)."""
        ...

    def predictor(self, config: ml_collections.ConfigDict) -> Callable[[ModelT, Array], Any]:
        """``(model in evaluation mode, images) -> predictions``, a pure JAX function.

        It is jitted once per network and function, so return a module-level
        function (not a new closure per call) to share the compiled code
        between the runs of a comparison.
        """
        ...

    def metric(self, config: ml_collections.ConfigDict) -> Metric:
        """A fresh, empty metric for one evaluation."""
        ...
