"""The shared training machinery: one jitted step for any covjax scheme, and the loop.

A step is ``covjax.value_and_grad`` over the task's named losses: the scheme
turns the K losses (and, for gradient-based schemes, the K×K Gramian of the
per-loss gradients at the scheme's gradient target) into weights, and one
weighted backward pass gives ∇ Σ α_i L_i, which the optimiser (Adam by
default, SGD configurable) applies. A step that covjax did not accept
(``accepted`` False: a non-finite loss or Gramian, a loss the scheme cannot
use) leaves the parameters, the batch statistics, the optimiser and the
weighting untouched, and is counted: ``skipped_steps`` in the logs and the
progress bar.

The loop adds: data parallelism over all devices (:mod:`.sharding`), a tqdm
progress bar with the loss and throughput, the losses and every weight by
name every ``log_every_steps`` to JSONL and TensorBoard (:mod:`.logging_utils`),
and Orbax checkpoints of the whole training state (parameters, batch
statistics, optimiser and weighting state), from which a run in the same
workdir resumes automatically. Ctrl-C (SIGINT) stops after the current step,
saves a checkpoint of it and raises :class:`TrainingInterrupted` (a
``KeyboardInterrupt``) saying how to resume; a second Ctrl-C stops at once.

Config fields read here (see ``experiments/depth/configs/default.py``):
``seed, num_train_steps, batch_size, optimizer, learning_rate, momentum,
scheme, scheme_kwargs, scheme_gradient_target, gradient_chunk_size, gramian_examples,
group_losses,
steps_per_epoch, log_every_steps, checkpoint_every_steps,
max_checkpoints_to_keep, num_devices, distributed, coordinator_address,
num_processes, process_id``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct
from jax import Array
from jax.sharding import Mesh

import covjax
from covjax._src.gradients import _engine_options as engine_options
from covjax._src.gradients import select_leaves
from experiments.common import checkpoints, logging_utils, sharding
from experiments.common.config import ConfigError
from experiments.common.data import check_data_config
from experiments.common.schemes import (
    GradientTarget,
    Scheme,
    SchemeContext,
    available_schemes,
    build_scheme,
)
from experiments.common.task import Batch, Task

#: The name under which the step marks the shared representation z (``perturb``).
REPRESENTATION = "representation"


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: int32, optimiser steps taken.
      skipped_steps: int32, how many of them covjax rejected (and so changed
        nothing but the step counter).
      params: the model's ``nnx.Param`` variables.
      rest: the model's other variables (e.g. batch statistics).
      opt_state: the optimiser state over ``params``.
      weighting: the covjax weighting state.
    """

    step: Array
    skipped_steps: Array
    params: nnx.State
    rest: nnx.State
    opt_state: optax.OptState
    weighting: covjax.WeightingState


class StepMetrics(struct.PyTreeNode):
    """Per-step outputs for logging (kept on device until logged)."""

    total: Array
    losses: dict[str, Array]
    weights: dict[str, Array]
    accepted: Array
    skipped_steps: Array


LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.ScalarOrSchedule:
    """``config.learning_rate``: constant (the paper) or with warm-up and cosine decay.

    ``"cosine"`` rises linearly from 0 over ``config.warmup_steps`` and then
    decays to 10% at ``num_train_steps``; it is for short runs of small
    networks, where Adam's first full-size steps can saturate the depth
    network's disparity sigmoids (a collapse it does not leave) and a small
    final step removes most of the run-to-run noise.
    """
    name = config.get("lr_schedule", "constant")
    if name == "constant":
        return config.learning_rate
    if name == "cosine":
        warmup_steps = int(config.get("warmup_steps", 0))
        total_steps = int(config.num_train_steps)
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, num_train_steps = {total_steps}), got {warmup_steps}."
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup_steps else config.learning_rate,
            peak_value=config.learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=total_steps,
            end_value=0.1 * config.learning_rate,
        )
    raise ValueError(f"Unknown lr_schedule {name!r}; use one of {LR_SCHEDULES}.")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam (the paper's depth setting) or SGD with momentum (its segmentation setting)."""
    name = config.get("optimizer", "adam")
    learning_rate = learning_rate_schedule(config)
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=config.get("momentum", 0.9) or None)
    raise ValueError(f"Unknown optimizer {name!r}; use 'adam' or 'sgd'.")


def scheme_from_config(
    config: ml_collections.ConfigDict,
    task: Task,
    optimizer: optax.GradientTransformation,
    parameter_count: Callable[[GradientTarget], int] | None = None,
) -> Scheme:
    """Build ``config.scheme`` with its hyper-parameters from ``config.scheme_kwargs.<scheme>``.

    Unset (``None``) hyper-parameters keep the registry's and the constructor's defaults;
    ``parameter_count`` sizes the schemes that keep a vector over the parameters
    (:attr:`~experiments.common.schemes.SchemeContext.parameter_count`).
    """
    name = config.scheme
    kwargs_by_scheme = config.get("scheme_kwargs", None) or {}
    targets_by_scheme = config.get("scheme_gradient_target", None) or {}
    kwargs = kwargs_by_scheme.get(name, None) or {}
    if isinstance(kwargs, ml_collections.ConfigDict):
        kwargs = kwargs.to_dict()
    elif not isinstance(kwargs, Mapping):
        raise ValueError(
            f"config.scheme_kwargs.{name} must be a section of hyper-parameters, got {kwargs!r}."
        )
    context = SchemeContext(
        task=task,
        optimizer=optimizer,
        steps_per_epoch=int(config.steps_per_epoch),
        parameter_count=parameter_count,
    )
    return build_scheme(name, context, kwargs, targets_by_scheme.get(name, None))


def gradient_subset(scheme: Scheme, task: Task) -> Any:
    """The ``wrt`` of covjax's per-loss gradients for ``scheme``'s target (see below)."""
    return target_subset(scheme.gradient_target, task)


def target_subset(target: str, task: Task) -> Any:
    """The ``wrt`` of covjax's per-loss gradients for a gradient ``target``.

    The representation target is ``nnx.Perturbation``: the step marks z with
    ``model.perturb("representation", z)`` (Flax's mechanism for gradients
    of intermediates), so the per-loss gradients are ∂L_i/∂z: under jit only
    the heads' backward pass runs K times for them, the update is still one
    weighted backward pass through the whole network, and batch statistics
    update as in a normal step. The layer target is that layer's path regex;
    the parameters target is None (all of them).
    """
    if target == "representation":
        return nnx.Perturbation
    if target == "layer":
        layer = "/".join(task.shared_layer())
        return re.escape(layer) + "(/|$)"
    return None  # "parameters": all of them


def _mark(model: nnx.Module, path: jax.tree_util.KeyPath, leaf: Array) -> Array:
    """``leaf`` of z marked as a target of the per-loss gradients (one ``perturb`` per array:
    Flax adds the perturbation with ``+``, which would concatenate a tuple)."""
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return model.perturb(f"{REPRESENTATION}/{name}" if name else REPRESENTATION, leaf)


@dataclasses.dataclass
class Trainer:
    """The jitted train step of ``task`` under ``scheme``, on a device mesh.

    Attributes:
      task: the experiment.
      config: the run's config.
      mesh: the data-parallel mesh.
    """

    task: Task
    config: ml_collections.ConfigDict
    mesh: Mesh

    def __post_init__(self) -> None:
        self.optimizer = make_optimizer(self.config)
        self.graphdef, params, rest = self._create_model()
        self._initial_params, self._initial_rest = params, rest
        self.scheme = scheme_from_config(
            self.config, self.task, self.optimizer, self._parameter_count
        )
        self._wrt = gradient_subset(self.scheme, self.task)
        self._replicated = sharding.replicated(self.mesh)
        self._step_fn: Callable[..., tuple[TrainState, StepMetrics]] | None = None

    def _create_model(self) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
        """The model's graph and initial variables, initialised in one compiled call.

        Eagerly, every initialiser of a deep network compiles on its own; in one
        call with threefry keys, XLA compiles hundreds of threefry expansions.
        The "rbg" generator (XLA's RngBitGenerator) compiles several times
        faster, and initial values only need to be random and seeded.
        """

        def create() -> nnx.Module:
            key = jax.random.key(self.config.seed, impl="rbg")
            return self.task.create_model(self.config, nnx.Rngs(key))

        graphdef, _, _ = nnx.split(nnx.eval_shape(create), nnx.Param, ...)
        params, rest = jax.jit(lambda: nnx.split(create(), nnx.Param, ...)[1:])()
        return graphdef, params, rest

    def _parameter_count(self, target: GradientTarget) -> int:
        """P of a parameter target: the size of the parameters its per-loss gradients cover."""
        if target == "representation":
            raise ValueError(
                f"Scheme {self.config.scheme!r} keeps a vector per loss over what its gradients "
                "are taken of, and the representation's size depends on the batch: use the "
                "'parameters' or 'layer' target, or give scheme_kwargs.<scheme>.num_params."
            )
        params = self._initial_params
        mask, _ = select_leaves(params, target_subset(target, self.task))
        leaves = jax.tree.leaves(params)
        return sum(int(np.size(leaf)) for leaf, chosen in zip(leaves, mask, strict=True) if chosen)

    # -- the pure functions -------------------------------------------------

    def model(self, params: nnx.State, rest: nnx.State) -> nnx.Module:
        return nnx.merge(self.graphdef, params, rest, copy=True)

    def _losses_only(self, params: nnx.State, rest: nnx.State, batch: Batch) -> dict[str, Array]:
        return self.task.losses(self.model(params, rest), batch)

    def _objective(self, model: nnx.Module, batch: Batch) -> dict[str, Array]:
        if self.scheme.gradient_target == "representation":
            z, carry = self.task.representation(model, batch)
            z = jax.tree_util.tree_map_with_path(functools.partial(_mark, model), z)
            return self.task.losses_from_representation(model, z, carry, batch)
        return self.task.losses(model, batch)

    def _train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, StepMetrics]:
        kwargs: dict[str, Any] = {}
        model = self.model(state.params, state.rest)
        if self.scheme.needs_gradients:
            kwargs.update(
                wrt=self._wrt,
                chunk_size=self.config.get("gradient_chunk_size", None),
                gramian_examples=self.config.get("gramian_examples", None),
            )
        step = covjax.value_and_grad(self._objective, self.scheme.weighting, **kwargs)
        # config.group_losses is a benchmark switch of the engine's cost model,
        # read while this step is traced.
        with engine_options(group_losses=self.config.get("group_losses", True)):
            result, grads = step(model, state.weighting, batch)
        new_rest = nnx.split(model, nnx.Param, ...)[2]  # batch statistics after the step
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A step covjax rejected changes nothing (covjax already kept the
        # weighting state); the step counter still advances so the data
        # stream and the logs stay aligned with it, and the skip is counted.
        # (lax.cond rather than jnp.where: it also selects PRNG-key leaves.)
        keep = lambda new, old: jax.lax.cond(result.accepted, lambda: new, lambda: old)  # noqa: E731
        skipped_steps = state.skipped_steps + (~result.accepted).astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1,
            skipped_steps=skipped_steps,
            params=keep(params, state.params),
            rest=keep(new_rest, state.rest),
            opt_state=keep(opt_state, state.opt_state),
            weighting=result.state,
        )
        metrics = StepMetrics(
            total=result.total,
            losses=covjax.named(result.losses),
            weights=covjax.named(result.weights),
            accepted=result.accepted,
            skipped_steps=skipped_steps,
        )
        return new_state, metrics

    # -- public API ------------------------------------------------------

    def init_state(self, first_batch: Batch) -> TrainState:
        """The initial state, replicated over the mesh.

        covjax's ``init`` only uses the losses' structure (schemes take L(0)
        and the like from their first ``update``), so it gets ones of the
        right structure, found without compiling the network.
        """
        params, rest = self._initial_params, self._initial_rest
        shapes = jax.eval_shape(self._losses_only, params, rest, first_batch)
        losses = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            skipped_steps=jnp.zeros((), jnp.int32),
            params=params,
            rest=rest,
            opt_state=self.optimizer.init(params),
            weighting=self.scheme.weighting.init(losses),
        )
        # Some schemes initialise two state leaves from one array; give every
        # leaf its own buffer, as the jitted step donates (and reuses) them.
        state = jax.tree.map(lambda leaf: jnp.array(leaf, copy=True), state)
        return sharding.replicate(state, self.mesh)

    @property
    def train_step(self) -> Callable[[TrainState, Batch], tuple[TrainState, StepMetrics]]:
        """``(state, sharded batch) -> (state, metrics)``, jitted, state donated."""
        if self._step_fn is None:
            self._step_fn = jax.jit(
                self._train_step,
                out_shardings=self._replicated,
                donate_argnums=0,
            )
        return self._step_fn

    def initial_variables(self) -> tuple[nnx.State, nnx.State]:
        """``(params, rest)`` of the untrained network (seeded by ``config.seed``)."""
        return self._initial_params, self._initial_rest

    def model_from_state(self, state: TrainState) -> nnx.Module:
        return self.model(state.params, state.rest)

    def loss_names(self, first_batch: Batch) -> tuple[str, ...]:
        shapes = jax.eval_shape(
            self._losses_only, self._initial_params, self._initial_rest, first_batch
        )
        return covjax.loss_names(shapes)


def _host_metrics(metrics: StepMetrics) -> dict[str, float]:
    host = jax.device_get(metrics)
    row = {
        "total": float(host.total),
        "accepted": bool(host.accepted),
        "skipped_steps": int(host.skipped_steps),
    }
    row.update({f"loss/{name}": float(value) for name, value in host.losses.items()})
    row.update({f"weight/{name}": float(value) for name, value in host.weights.items()})
    return row


LAUNCH_FIELDS = ("coordinator_address", "num_processes", "process_id")


def setup_runtime(config: ml_collections.ConfigDict) -> Mesh:
    """Join a multi-process run if configured and build the data-parallel mesh."""
    launch = {name: config.get(name, None) for name in LAUNCH_FIELDS}
    if config.get("distributed", False):
        sharding.initialize_distributed(**launch)
    elif given := [f"{name}={value!r}" for name, value in launch.items() if value is not None]:
        raise ValueError(f"{', '.join(given)} given without --config.distributed=True.")
    mesh = sharding.make_mesh(config.get("num_devices", None))
    sharding.local_batch_size(config.batch_size, mesh)
    return mesh


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run after saving a checkpoint of its last step; the message says how
    to resume."""


@contextlib.contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """An event set by the first SIGINT (Ctrl-C); a second SIGINT interrupts at once.

    The loop checks the event between steps, so the state it saves is a
    finished step (the jitted step donates its input state, which an
    interrupt inside the call would leave deleted).
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be installed in the main thread
        return

    def handle(signum: int, frame: Any) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def check_config(task: Task, config: ml_collections.ConfigDict) -> None:
    """The checks that need no model or data: the data source and its options, the
    scheme's name, and the task's own (``task.check_config``).
    A config without ``data`` (a task that makes its own batches) skips the data check."""
    if "data" in config:
        check_data_config(config)
    if config.scheme not in available_schemes():
        raise ConfigError(
            f"Unknown config.scheme {config.scheme!r}; known: {list(available_schemes())}."
        )
    task.check_config(config)


def train(
    task: Task,
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    mesh: Mesh | None = None,
    show_progress: bool = True,
) -> tuple[Trainer, TrainState]:
    """Train ``task`` under ``config.scheme`` into ``workdir``, resuming from its checkpoints.

    Returns the trainer (for its model) and the final state.
    """
    check_config(task, config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logging_utils.check_same_config(workdir, config)
    mesh = mesh or setup_runtime(config)
    trainer = Trainer(task, config, mesh)
    manager = checkpoints.Checkpointer(
        workdir / "checkpoints",
        save_every_steps=config.checkpoint_every_steps,
        max_to_keep=config.get("max_checkpoints_to_keep", 2),
    )
    num_steps = int(config.num_train_steps)
    initial_batches = task.train_batches(
        config,
        start_step=0,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    first_local = next(initial_batches)
    state = trainer.init_state(sharding.shard_batch(first_local, mesh))
    state = manager.restore_latest(state, sharding.replicated(mesh))
    start_step = int(state.step)
    batches: Iterator[Mapping[str, np.ndarray]]
    if start_step:
        if jax.process_index() == 0:
            print(f"Resumed {task.name}/{trainer.scheme.name} from step {start_step}.", flush=True)
        batches = task.train_batches(
            config,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    else:
        batches = _prepend(first_local, initial_batches)
    writer = logging_utils.MetricWriter(workdir, enabled=jax.process_index() == 0)
    writer.write_config(config)
    progress = logging_utils.progress_bar(
        start_step,
        num_steps,
        desc=f"{task.name}/{config.scheme}",
        enabled=show_progress and jax.process_index() == 0,
    )
    log_every = int(config.log_every_steps)
    tick, tick_step = time.perf_counter(), start_step
    with _stop_requests() as stop_requested:
        for step in range(start_step, num_steps):
            batch = sharding.shard_batch(next(batches), mesh)
            state, metrics = trainer.train_step(state, batch)
            done = step + 1
            if done % log_every == 0 or done == num_steps:
                row = _host_metrics(metrics)
                now = time.perf_counter()
                row["images_per_second"] = (done - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, done
                writer.write(done, row)
                postfix = {
                    "loss": f"{row['total']:.4g}",
                    "img_s": f"{row['images_per_second']:.1f}",
                }
                if row["skipped_steps"]:
                    postfix["skipped"] = row["skipped_steps"]
                progress.set_postfix(**postfix)
            progress.update(1)
            interrupted = stop_requested.is_set() and done < num_steps
            manager.maybe_save(done, state, force=done == num_steps or interrupted)
            if interrupted:
                break
    progress.close()
    writer.close()
    manager.wait()
    if stop_requested.is_set() and int(state.step) < num_steps:
        raise TrainingInterrupted(
            f"Interrupted: {task.name}/{trainer.scheme.name} saved at step {int(state.step)} of "
            f"{num_steps} in {workdir / 'checkpoints'}; run the same command to resume."
        )
    return trainer, state


def _prepend(first: Mapping[str, np.ndarray], rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def restore_trainer(
    task: Task, config: ml_collections.ConfigDict, workdir: str | Path, mesh: Mesh | None = None
) -> tuple[Trainer, TrainState]:
    """The trainer and the latest checkpointed state of a finished (or partial) run."""
    check_config(task, config)
    mesh = mesh or sharding.make_mesh(config.get("num_devices", None))
    trainer = Trainer(task, config, mesh)
    batches = task.train_batches(
        config, start_step=0, process_index=jax.process_index(), process_count=jax.process_count()
    )
    state = trainer.init_state(sharding.shard_batch(next(batches), mesh))
    manager = checkpoints.Checkpointer(Path(workdir) / "checkpoints", save_every_steps=1)
    if manager.latest_step() is None:
        raise FileNotFoundError(f"No checkpoint in {Path(workdir) / 'checkpoints'}.")
    return trainer, manager.restore_latest(state, sharding.replicated(mesh))
