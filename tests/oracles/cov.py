"""CoV-Weighting oracle: a literal float64 transcription of SPEC.md §1.1/§1.2."""

from __future__ import annotations

import numpy as np


def cov_weights(
    trace: np.ndarray,
    decay: float | None = None,
    statistic: str = "ratio",
    inverse: bool = False,
    reference_decay: bool = False,
) -> np.ndarray:
    """Weights per step for a (T, K) trace of losses, following the released code."""
    trace = np.asarray(trace, np.float64)
    steps, k = trace.shape
    mean_big_l = np.zeros(k)
    mean_x = np.zeros(k)
    s_x = np.zeros(k)
    ew_var = np.zeros(k)
    std_x = np.zeros(k)
    out = np.zeros((steps, k))
    proper_ew = decay is not None and not reference_decay
    for t in range(steps):
        big_l = trace[t]
        if statistic == "ratio":
            x = np.ones(k) if t == 0 else big_l / mean_big_l
        else:
            x = big_l
        if t <= 1:
            alpha = np.full(k, 1.0 / k)
        else:
            c = mean_x / std_x if inverse else std_x / mean_x
            alpha = c / c.sum()
        out[t] = alpha
        if t == 0:
            beta = 0.0
        elif decay is not None:
            beta = decay
        else:
            beta = 1.0 - 1.0 / (t + 1)
        new_mean = beta * mean_x + (1 - beta) * x
        if proper_ew:
            a = 1 - beta
            d = x - mean_x
            ew_var = (1 - a) * (ew_var + a * d * d)
            std_x = np.sqrt(ew_var + 1e-8)
        else:
            s_x = s_x + (x - mean_x) * (x - new_mean)
            std_x = np.sqrt(s_x / (t + 1) + 1e-8)
        mean_x = new_mean
        mean_big_l = beta * mean_big_l + (1 - beta) * big_l
    return out


def cumulative_ratio_weights(trace: np.ndarray) -> np.ndarray:
    """Final CoV weights after a long trace, vectorised in float64 (no Python loop).

    With β = 1 − 1/(t+1) every running mean is the exact cumulative mean, and
    Welford's S/t is the population variance, so the whole history can be
    computed with cumulative sums. Returns the weights the step after the trace
    would use.
    """
    trace = np.asarray(trace, np.float64)
    steps = trace.shape[0]
    counts = np.arange(1, steps + 1, dtype=np.float64)[:, None]
    running_mean = np.cumsum(trace, axis=0) / counts
    ratios = np.empty_like(trace)
    ratios[0] = 1.0
    ratios[1:] = trace[1:] / running_mean[:-1]
    mean = ratios.mean(axis=0)
    std = np.sqrt(((ratios - mean) ** 2).mean(axis=0) + 1e-8)
    c = std / mean
    return c / c.sum()
