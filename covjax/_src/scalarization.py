"""What the loss scalarizations (STCH, PBI, COSMOS) share: checks of μ/θ and of a preference λ.

A scalarization turns the K losses into one objective S(L); covjax's weights
are its gradient ∂S/∂L at the current losses, so Σ α_i ∇L_i is exactly ∇S.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def check_positive(value: float | Array, what: str, name: str) -> None:
    """A clear error for a concrete hyper-parameter ≤ 0 (traced values pass)."""
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"covjax.{name}: {what} must be positive, got {value}")


def preference_vector(preference: Array | None, k: int, name: str) -> Array:
    """The (K,) float32 preference λ (ones when None), checked against K at trace time."""
    if preference is None:
        return jnp.ones((k,), jnp.float32)
    vector = jnp.asarray(preference, jnp.float32)
    if vector.shape != (k,):
        raise ValueError(
            f"covjax.{name}: preference has shape {vector.shape}, expected ({k},): one "
            "entry per loss."
        )
    return vector


def check_concrete_preference(preference: Array | None, name: str) -> None:
    """Concrete preferences must be finite and non-negative (traced ones pass)."""
    if preference is None or isinstance(preference, jax.core.Tracer):
        return
    vector = jnp.asarray(preference)
    if not bool(jnp.all(jnp.isfinite(vector))) or bool(jnp.any(vector < 0)):
        raise ValueError(f"covjax.{name}: preference must be finite and non-negative.")
    if not bool(jnp.any(vector > 0)):
        raise ValueError(f"covjax.{name}: preference must have a positive entry.")
