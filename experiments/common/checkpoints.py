"""Orbax checkpoints of the whole training state, restored automatically from a workdir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp
from jax.sharding import Sharding

State = TypeVar("State")


class Checkpointer:
    """A thin ``orbax.checkpoint.CheckpointManager`` for one pytree state.

    Args:
      directory: where the step folders live (created if missing).
      save_every_steps: save when ``step % save_every_steps == 0`` (and on ``force``).
      max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | Path, save_every_steps: int, max_to_keep: int = 2):
        if save_every_steps < 1:
            raise ValueError(f"save_every_steps must be ≥ 1, got {save_every_steps}.")
        self.save_every_steps = int(save_every_steps)
        self._manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def maybe_save(self, step: int, state: Any, *, force: bool = False) -> bool:
        """Save ``state`` as ``step`` if it is a checkpoint step (or ``force``)."""
        if not force and step % self.save_every_steps:
            return False
        if self._manager.latest_step() == step:
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore_latest(self, template: State, sharding: Sharding | None = None) -> State:
        """The latest checkpoint restored into ``template``'s structure, or ``template``."""
        step = self._manager.latest_step()
        if step is None:
            return template

        def abstract(leaf: Any) -> Any:
            if isinstance(leaf, jax.Array):
                return jax.ShapeDtypeStruct(
                    leaf.shape, leaf.dtype, sharding=sharding or leaf.sharding
                )
            return leaf

        target = jax.tree.map(abstract, template)
        return self._manager.restore(step, args=ocp.args.StandardRestore(target))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
