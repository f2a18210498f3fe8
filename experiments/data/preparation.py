"""Preparing a TFDS dataset once per run, also when several processes start together.

A TFDS builder writes into ``<data_dir>/<name>/<config>/incomplete.*`` and
renames that folder when it is done; two processes preparing the same
directory at once collide (the second rename fails with ``FileExistsError``,
and the first process then waits for its partner at JAX's shutdown barrier).
In a multi-process JAX run (``jax.distributed.initialize`` called, more than
one process), :func:`prepare_once` lets process 0 prepare while the others
wait for its word through the key-value store of JAX's coordination service,
then read what it wrote; a single process simply prepares when needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["PREPARE_TIMEOUT_S", "prepare_once"]

Builder = TypeVar("Builder")

#: How long the other processes wait for process 0 to prepare a dataset
#: (rendering a large synthetic dataset takes long). Process 0 failing ends
#: the wait at once: an exception is passed on to the others, and if process
#: 0 dies, the coordination service, which runs in it, goes with it (or, if it
#: only becomes unreachable, JAX's heartbeat times out after 100 s).
PREPARE_TIMEOUT_S = 6 * 3600

_OK = "ok"


def _distributed_client() -> Any | None:
    """JAX's coordination-service client when this is one of several processes, else None."""
    import jax  # local: the readers do not need JAX otherwise

    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        return None
    # The key-value store has no public accessor; Orbax reaches the same client.
    from jax._src import distributed

    return distributed.global_state.client


def prepare_once(
    make_builder: Callable[[], Builder],
    prepare: Callable[[Builder], None],
    *,
    timeout_s: float = PREPARE_TIMEOUT_S,
) -> Builder:
    """A builder whose data is prepared; in a multi-process run only process 0 prepares.

    Every process of the run must call this for the same dataset (as every
    process of a data-parallel run loads its data).

    Args:
      make_builder: makes the TFDS builder (called again by the processes that
        waited, so that they read the metadata process 0 wrote).
      prepare: prepares a builder whose ``is_prepared()`` is False.
      timeout_s: how long the other processes wait for process 0.

    Returns:
      a builder ready for ``as_dataset``.

    Raises:
      RuntimeError: in the other processes, when process 0 failed to prepare,
        stopped (or became unreachable) before it was done, or took longer
        than ``timeout_s``.
      FileNotFoundError: when process 0 prepared a ``data_dir`` this process
        does not see (it is not on a file system all processes share).
    """
    builder: Any = make_builder()
    client = _distributed_client()
    if client is None:
        if not builder.is_prepared():
            prepare(builder)
        return builder

    import jax

    key = f"experiments.data.prepare_once:{builder.data_dir}"
    if jax.process_index() == 0:
        status = "did not finish"
        try:
            if not builder.is_prepared():
                prepare(builder)
            status = _OK
        except BaseException as error:
            status = f"{type(error).__name__}: {error}"
            raise
        finally:
            client.key_value_set(key, status, allow_overwrite=True)
        return builder
    try:
        status = client.blocking_key_value_get(key, int(timeout_s * 1000))
    except jax.errors.JaxRuntimeError as error:
        raise RuntimeError(
            f"Process {jax.process_index()} waited for process 0 to prepare "
            f"{builder.data_dir}, but process 0 stopped or could not be reached, or took "
            f"longer than {timeout_s:g} s (see its log): {error}"
        ) from error
    if status != _OK:
        raise RuntimeError(f"Process 0 could not prepare {builder.data_dir}: {status}")
    builder = make_builder()
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"Process 0 prepared {builder.data_dir}, but process {jax.process_index()} does "
            "not find it there: give a data_dir on a file system every process shares, or "
            "prepare the dataset on each machine first."
        )
    return builder
