"""Data parallelism: a 1-D device mesh over a ``"data"`` axis.

The training state is replicated on every device and each batch is split
along its leading axis, so XLA inserts the gradient all-reduce itself (GSPMD).
On several hosts, call :func:`initialize_distributed` first; every process
then feeds its own share of the global batch and
``jax.make_array_from_process_local_data`` assembles the global array.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def coordinator_bind_address(coordinator_address: str) -> str | None:
    """Where the coordinator listens: the address itself when it is a loopback one.

    JAX's coordinator (process 0) binds to every interface (``[::]:port``) by
    default, which a single-machine run does not need and a firewall may refuse;
    a loopback ``coordinator_address`` (``127.0.0.1:port``, ``localhost:port``,
    ``[::1]:port``) is bound as given. ``None`` keeps JAX's default.
    """
    host, separator, port = coordinator_address.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(
            f"coordinator_address must look like HOST:PORT, got {coordinator_address!r}."
        )
    host = host.strip("[]")
    if host == "localhost":
        return coordinator_address
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may be reached from other machines
        return None
    return coordinator_address if loopback else None


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run through ``jax.distributed.initialize``.

    Args:
      coordinator_address: ``HOST:PORT`` of process 0's coordinator; a loopback
        address is also where it binds (see :func:`coordinator_bind_address`).
      num_processes: how many processes the run has.
      process_id: this process's index, in ``[0, num_processes)``.

    Each argument left ``None`` is auto-detected by JAX from the cluster's
    environment (SLURM, Cloud TPU, Open MPI / mpi4py); on a plain machine give
    all three. A process that has joined already (a second run in the same
    program, e.g. one per scheme) stays in its run.
    """
    if jax.distributed.is_initialized():
        return
    bind = coordinator_bind_address(coordinator_address) if coordinator_address else None
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=bind,
        )
    except ValueError as error:
        raise ValueError(
            f"{error} Outside a cluster manager JAX detects (SLURM, Cloud TPU, MPI), give "
            "--config.coordinator_address=HOST:PORT (process 0's address and a free port), "
            "--config.num_processes=N and --config.process_id=I (0 to N-1, one per process)."
        ) from error


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
    """How many examples this process feeds per step: its rows ``[i·b, (i+1)·b)``, b = B / P.

    The input pipeline gives process ``i`` these rows of every global batch
    (:func:`experiments.data.input_pipeline.make_train_dataset`), so the mesh
    must hold them on this process's devices; this checks that it does.
    """
    check_global_batch_size(global_batch_size, mesh)
    count, index = jax.process_count(), jax.process_index()
    if global_batch_size % count:
        raise ValueError(
            f"The batch size {global_batch_size} must be divisible by the {count} processes."
        )
    local = global_batch_size // count
    indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    rows = {row for index_tuple in indices.values() for row in _rows(index_tuple[0], local * count)}
    if rows != set(range(index * local, (index + 1) * local)):
        held = f"rows {min(rows)} to {max(rows)}" if rows else "no rows"
        raise ValueError(
            f"Process {index} feeds rows {index * local} to {(index + 1) * local - 1} of each "
            f"batch, but its devices in the mesh hold {held}; build the mesh over the devices "
            "of every process, in process order (leave num_devices unset)."
        )
    return local


def _rows(index: slice, size: int) -> range:
    return range(*index.indices(size))


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
