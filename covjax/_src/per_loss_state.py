"""State that holds one vector per loss over the selected parameters (MoCo, M-ConFIG, ExcessMTL).

A scheme's ``init`` sees only the losses, so a scheme that tracks per-loss
gradient statistics takes P, the number of selected parameters (the columns
of the Jacobian ``update`` gets), as a constructor argument; these helpers
allocate that state and check the Jacobian against it at trace time.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def checked_num_params(name: str, num_params: int | None) -> int:
    """``num_params`` as a positive int, or a clear error naming the scheme."""
    if num_params is None or int(num_params) != num_params or num_params < 1:
        raise ValueError(
            f"covjax.{name}: num_params must be P, the number of selected parameters (the "
            f"columns of the Jacobian, e.g. sum(x.size for x in jax.tree.leaves(params))), "
            f"got {num_params!r}."
        )
    return int(num_params)


def per_loss_zeros(losses: Array, num_params: int) -> Array:
    """(K, P) zeros in the losses' dtype (float32; float64 in x64 mode): one vector per loss."""
    return jnp.zeros((losses.shape[0], num_params), losses.dtype)


def check_columns(name: str, jacobian: Array, num_params: int) -> None:
    """Raise (at trace time) if the Jacobian's columns are not the P the state was sized for."""
    if jacobian.shape[1] != num_params:
        raise ValueError(
            f"covjax.{name}: the Jacobian has {jacobian.shape[1]} columns but the scheme was "
            f"built with num_params={num_params}; pass the number of selected parameters."
        )
