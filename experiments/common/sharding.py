"""Data parallelism: a 1-D device mesh over a ``"data"`` axis.

The training state is replicated on every device and each batch is split
along its leading axis, so XLA inserts the gradient all-reduce itself (GSPMD).
On several hosts, call :func:`initialize_distributed` first; every process
then feeds its own share of the global batch and
``jax.make_array_from_process_local_data`` assembles the global array.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-host run (no-op arguments are auto-detected on TPU/SLURM)."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A mesh over the first ``num_devices`` devices (all by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"Asked for {num_devices} devices; {len(devices)} are available.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def check_global_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    if global_batch_size % mesh.size:
        raise ValueError(
            f"The batch size {global_batch_size} must be divisible by the {mesh.size} devices "
            "of the data-parallel mesh."
        )


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """How many examples this process feeds per step."""
    check_global_batch_size(global_batch_size, mesh)
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"The batch size {global_batch_size} must be divisible by the "
            f"{jax.process_count()} processes."
        )
    return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this process's share of a batch into global arrays split over ``"data"``."""
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"Batch entry {key!r} is a scalar; every entry needs a batch axis.")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
