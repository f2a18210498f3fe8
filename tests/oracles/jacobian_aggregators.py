"""NumPy (float64) oracles of the aggregators that need the per-loss gradients themselves.

Trimmed mean, GradDrop, ConFIG / M-ConFIG, MoCo and ExcessMTL, each written
from its paper's equations (and the authors' published conventions) on the
explicit K×P Jacobian ``J``, one row per loss, with plain loops where the
paper has them. They never call covjax.
"""

from __future__ import annotations

import numpy as np


def trimmed_mean(J: np.ndarray, trim: int) -> np.ndarray:
    """Yin et al. 2018: per coordinate, drop the ``trim`` smallest and largest values; average."""
    k, p = J.shape
    direction = np.empty(p)
    for column in range(p):
        values = sorted(J[:, column])
        direction[column] = np.mean(values[trim : k - trim])
    return direction
