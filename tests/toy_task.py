"""A tiny multi-loss regression task: the test bed of the shared machinery (a test fixture).

A shared trunk (Linear → BatchNorm → tanh, the representation z) feeds K
linear heads; head k regresses a fixed random linear function of the input,
and its mean squared error is scaled by ``10^(k mod 3 − 1)`` so the losses
live on different scales, as the depth losses do. Batches are a pure
function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax import Array

from experiments.common.task import Batch, Losses, ParamPath

INPUT_DIM = 8


class ToyNet(nnx.Module):
    """Trunk (the shared representation) and K linear heads."""

    def __init__(self, num_losses: int, hidden: int, *, rngs: nnx.Rngs):
        self.trunk = nnx.Linear(INPUT_DIM, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, use_running_average=False, rngs=rngs)
        self.heads = nnx.Linear(hidden, num_losses, rngs=rngs)

    def encode(self, x: Array) -> Array:
        return jnp.tanh(self.norm(self.trunk(x)))

    def __call__(self, x: Array) -> Array:
        return self.heads(self.encode(x))


@dataclasses.dataclass
class ToyTask:
    """K scaled regression losses on a shared trunk (see the module docstring)."""

    num_losses: int = 4
    hidden: int = 16
    name: str = "toy"

    def __post_init__(self) -> None:
        rng = np.random.default_rng(1234)
        self._targets = rng.normal(size=(INPUT_DIM, self.num_losses)).astype(np.float32)
        self._scales = (10.0 ** (np.arange(self.num_losses) % 3 - 1)).astype(np.float32)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"mse/t{k}" for k in range(self.num_losses))

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        del config  # every field is the machinery's

    def create_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> ToyNet:
        del config
        return ToyNet(self.num_losses, self.hidden, rngs=rngs)

    def representation(self, model: ToyNet, batch: Batch) -> tuple[Array, None]:
        return model.encode(batch["x"]), None

    def losses_from_representation(
        self, model: ToyNet, representation: Array, carry: None, batch: Batch
    ) -> Losses:
        predictions = model.heads(representation)
        errors = jnp.mean((predictions - batch["y"]) ** 2, axis=0) * self._scales
        return {name: errors[k] for k, name in enumerate(self.names)}

    def losses(self, model: ToyNet, batch: Batch) -> Losses:
        return self.losses_from_representation(model, *self.representation(model, batch), batch)

    def shared_layer(self) -> ParamPath:
        return ("trunk", "kernel")

    def hand_tuned_weights(self) -> dict[str, float]:
        inverse_scales = 1.0 / self._scales
        inverse_scales /= inverse_scales.sum()
        return {name: float(inverse_scales[k]) for k, name in enumerate(self.names)}

    def batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, step])
        x = rng.normal(size=(batch_size, INPUT_DIM)).astype(np.float32)
        noise = 0.1 * rng.normal(size=(batch_size, self.num_losses)).astype(np.float32)
        return {"x": x, "y": np.sin(x @ self._targets) + noise}

    def train_batches(
        self,
        config: ml_collections.ConfigDict,
        *,
        start_step: int,
        process_index: int,
        process_count: int,
    ) -> Iterator[dict[str, np.ndarray]]:
        local = config.batch_size // process_count
        step = start_step
        while True:
            full = self.batch(config.seed, step, config.batch_size)
            yield {
                key: value[process_index * local : (process_index + 1) * local]
                for key, value in full.items()
            }
            step += 1


def toy_config(**overrides: object) -> ml_collections.ConfigDict:
    """A config for :class:`ToyTask` runs (a few steps, tiny sizes)."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_train_steps = 6
    config.batch_size = 8
    config.optimizer = "adam"
    config.learning_rate = 1e-2
    config.momentum = 0.9
    config.scheme = "cov"
    config.scheme_kwargs = ml_collections.ConfigDict()
    config.scheme_gradient_target = ml_collections.ConfigDict()
    config.gradient_chunk_size = None
    config.steps_per_epoch = 3
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.max_checkpoints_to_keep = 2
    config.num_devices = None
    config.distributed = False
    config.update(overrides)
    return config
