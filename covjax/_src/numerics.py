"""Numerical building blocks shared by the weighting schemes.

Running statistics over millions of steps lose their increments in float32:
at step 10⁷ the Welford increment (x − μ)/t is ~1e-8 of μ, below half an ulp,
and a plain ``μ += inc`` stops moving. ``Compensated`` keeps the rounding error
of every addition (Kahan–Babuška summation), so float32 state tracks a float64
reference to ~1e-7 relative after 10⁷ steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

#: Smallest denominator used by guarded divisions (far below any real loss).
TINY = 1e-12


class Compensated(NamedTuple):
    """A float32 accumulator with its running rounding error (Kahan sum)."""

    value: Array
    error: Array


def compensated_zeros(shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> Compensated:
    return Compensated(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def compensated_add(acc: Compensated, increment: Array) -> Compensated:
    """``acc + increment`` keeping the low-order bits lost by the addition."""
    corrected = increment - acc.error
    total = acc.value + corrected
    # (total − value) is what the addition actually added; minus what we meant
    # to add is the rounding error, subtracted again on the next call.
    error = (total - acc.value) - corrected
    return Compensated(total, error)


def compensated_set(value: Array) -> Compensated:
    return Compensated(value, jnp.zeros_like(value))


def safe_divide(numerator: Array, denominator: Array, fallback: float | Array = 0.0) -> Array:
    """``numerator / denominator`` where the denominator is > TINY, else ``fallback``."""
    ok = denominator > TINY
    return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), fallback)


def normalize(values: Array) -> Array:
    """``values / Σ values``; uniform when the sum is not positive and finite."""
    total = jnp.sum(values)
    k = values.shape[-1]
    ok = (total > 0) & jnp.isfinite(total)
    return jnp.where(ok, values / jnp.where(ok, total, 1.0), 1.0 / k)


def check_positive_int(value: int, what: str, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"covjax.{name}: {what} must be a positive integer, got {value!r}")


#: Cap on softmax logits: a ratio over a zero loss stays finite (and dominant).
MAX_LOGIT = 1e30


def at_least_tiny(x: Array) -> Array:
    return jnp.maximum(x, TINY)


def capped_softmax(logits: Array) -> Array:
    return jax.nn.softmax(jnp.minimum(logits, MAX_LOGIT))
