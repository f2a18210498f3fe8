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


def graddrop(J: np.ndarray, uniform: np.ndarray, leak: np.ndarray | float = 0.0) -> np.ndarray:
    """Chen et al. 2020, Alg. 1 lines 10-15 (f = identity) with the given draws U (P,)."""
    k, p = J.shape
    leak = np.broadcast_to(np.asarray(leak, np.float64), (k,))
    direction = np.zeros(p)
    for column in range(p):
        values = J[:, column]
        magnitude = np.sum(np.abs(values))
        purity = 0.5 * (1.0 + np.sum(values) / magnitude) if magnitude > 0 else 0.5
        for i in range(k):
            if purity > uniform[column]:
                mask = float(values[i] > 0)
            elif purity < uniform[column]:
                mask = float(values[i] < 0)
            else:
                mask = 0.0
            direction[column] += (leak[i] + (1.0 - leak[i]) * mask) * values[i]
    return direction
