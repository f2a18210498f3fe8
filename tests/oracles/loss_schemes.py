"""Oracles for the loss-statistics schemes: float64 loops written from SPEC.md §§2–4.

Each function takes a (T, K) trace of losses and returns the (T, K) weights
used at every step. They never import covjax. Where a scheme draws random
numbers from its PRNG key, the draws are inputs.
"""

from __future__ import annotations

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class Adam:
    """Plain Adam (Kingma & Ba) with optional coupled L2 weight decay, float64."""

    def __init__(
        self,
        lr: float,
        weight_decay: float = 0.0,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        self.lr, self.weight_decay, self.b1, self.b2, self.eps = lr, weight_decay, b1, b2, eps
        self.m = self.v = 0.0
        self.t = 0

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        grad = grad + self.weight_decay * params
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad**2
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return params - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _trace(trace: np.ndarray) -> tuple[np.ndarray, int, int]:
    trace = np.asarray(trace, np.float64)
    return trace, trace.shape[0], trace.shape[1]


def uncertainty(
    trace: np.ndarray, lr: float, form: str = "reference", b2: float = 0.999
) -> np.ndarray:
    """Kendall et al.: weight exp(−s) (×½ kendall), then Adam on ∂/∂s of the objective."""
    trace, steps, k = _trace(trace)
    half = 0.5 if form == "kendall" else 1.0
    s = np.zeros(k)
    adam = Adam(lr, b2=b2)
    out = np.zeros((steps, k))
    for t in range(steps):
        out[t] = half * np.exp(-s)
        # d/ds [half (exp(−s) L + s)] = half (1 − exp(−s) L)
        s = adam.step(s, half * (1 - np.exp(-s) * trace[t]))
    return out


def imtl_l(trace: np.ndarray, lr: float, b2: float = 0.999) -> np.ndarray:
    """IMTL-L: weight e^s, then Adam on ∂/∂s (e^s L − s) = e^s L − 1."""
    trace, steps, k = _trace(trace)
    s = np.zeros(k)
    adam = Adam(lr, b2=b2)
    out = np.zeros((steps, k))
    for t in range(steps):
        out[t] = np.exp(s)
        s = adam.step(s, np.exp(s) * trace[t] - 1)
    return out


def gls(trace: np.ndarray) -> np.ndarray:
    """GLS: the gradient of (Π L)^(1/K) w.r.t. each L_i, i.e. GLS/(K L_i)."""
    trace, _, k = _trace(trace)
    geometric = np.prod(trace ** (1.0 / k), axis=1, keepdims=True)
    return geometric / (k * trace)


def rlw(normal_draws: np.ndarray) -> np.ndarray:
    """RLW: softmax of the given N(0, I) draws, one row per step."""
    return np.stack([_softmax(z) for z in np.asarray(normal_draws, np.float64)])


def famo(
    trace: np.ndarray, lr: float, weight_decay: float, min_losses: float = 0.0, eps: float = 1e-8
) -> np.ndarray:
    """FAMO: ξ step from δ = log D(t−1) − log D(t) via softmax's Jacobian; α = z/(c D)."""
    trace, steps, k = _trace(trace)
    xi = np.zeros(k)
    adam = Adam(lr, weight_decay)
    out = np.zeros((steps, k))
    for t in range(steps):
        d = trace[t] - min_losses + eps
        if t > 0:
            z = _softmax(xi)
            delta = np.log(trace[t - 1] - min_losses + eps) - np.log(d)
            jacobian = np.diag(z) - np.outer(z, z)
            xi = adam.step(xi, jacobian.T @ delta)
        z = _softmax(xi)
        c = np.sum(z / d)
        out[t] = z / (c * d)
    return out


def dwa(trace: np.ndarray, period: int, temperature: float) -> np.ndarray:
    """DWA on period means: K softmax(r/T), r = L̄(p−1)/L̄(p−2); ones in periods 0 and 1."""
    trace, steps, k = _trace(trace)
    out = np.zeros((steps, k))
    means: dict[int, np.ndarray] = {}
    for t in range(steps):
        p = t // period
        if p < 2:
            out[t] = 1.0
        else:
            if p - 1 not in means:
                means[p - 1] = trace[(p - 1) * period : p * period].mean(axis=0)
                means[p - 2] = trace[(p - 2) * period : (p - 1) * period].mean(axis=0)
            out[t] = k * _softmax(means[p - 1] / means[p - 2] / temperature)
    return out


def softadapt(trace: np.ndarray, beta: float, window: int, variant: str) -> np.ndarray:
    """SoftAdapt: softmax of β × secant slopes over the last `window` values."""
    trace, steps, k = _trace(trace)
    out = np.zeros((steps, k))
    for t in range(steps):
        if t + 1 < window:
            out[t] = 1.0 / k
            continue
        recent = trace[t + 1 - window : t + 1]
        slope = (recent[-1] - recent[0]) / (window - 1)
        if variant == "normalized":
            slope = slope / np.abs(slope).sum()
        numerators = np.exp(beta * slope - np.max(beta * slope))
        if variant == "loss_weighted":
            numerators = numerators * recent.mean(axis=0)
        out[t] = numerators / numerators.sum()
    return out


def relobralo(
    trace: np.ndarray, alpha: float, temperature: float, rho_draws: np.ndarray
) -> np.ndarray:
    """ReLoBRaLo; rho_draws[t] is ρ at step t (used for t ≥ 2; ρ = 1 before)."""
    trace, steps, k = _trace(trace)
    out = np.zeros((steps, k))
    lam = np.ones(k)
    for t in range(steps):
        if t > 0:
            a = 0.0 if t == 1 else alpha
            rho = 1.0 if t == 1 else float(rho_draws[t])
            hat_initial = k * _softmax(trace[t] / (temperature * trace[0]))
            hat_previous = k * _softmax(trace[t] / (temperature * trace[t - 1]))
            lam = a * (rho * lam + (1 - rho) * hat_initial) + (1 - a) * hat_previous
        out[t] = lam
    return out


def lsb(
    trace: np.ndarray,
    period: int,
    beta: float = 1.0,
    use_difficulty: bool = True,
    normalize: bool = True,
    priors: np.ndarray | None = None,
    beta_of_update=None,
) -> np.ndarray:
    """LSB per SPEC §3: scale balancing each period end, difficulty from the third period."""
    trace, steps, k = _trace(trace)
    s = np.full(k, 1.0 / k) if priors is None else np.asarray(priors, np.float64)
    w = np.full(k, 1.0 / k)
    d = np.ones(k)
    out = np.zeros((steps, k))
    history: list[tuple[np.ndarray, float]] = []  # (L̄_k(p), L̄(p)) per completed period
    for t in range(steps):
        out[t] = d * w
        if (t + 1) % period == 0:
            mean = trace[t + 1 - period : t + 1].mean(axis=0)
            total = float(np.sum(w * mean))
            history.append((mean, total))
            w = s * total / mean
            if use_difficulty and len(history) >= 2:
                (m_prev, tot_prev), (m_now, tot_now) = history[-2], history[-1]
                b = beta if beta_of_update is None else beta_of_update(len(history) - 1)
                d = ((m_now / m_prev) / (tot_now / tot_prev)) ** b
                if normalize:
                    d = k * d / d.sum()
    return out


def multi_loss_rebalancing(
    trace: np.ndarray, steps_per_epoch: int, rebalances_per_epoch: int
) -> np.ndarray:
    """Lee & Kim (ECCV 2020) rebalancing, SPEC §3.1, with an explicit loss record."""
    trace, steps, k = _trace(trace)
    interval = steps_per_epoch // rebalances_per_epoch
    w = np.full(k, 1.0 / k)
    shares = np.full(k, 1.0 / k)
    record: list[np.ndarray] = []
    t_prev = None
    m_prev = None
    out = np.zeros((steps, k))
    for t in range(steps):
        epoch, j = divmod(t, steps_per_epoch)
        if j == 0:
            record = []
        out[t] = w
        record.append(trace[t])
        if (j + 1) % interval == 0 and (j + 1) // interval <= rebalances_per_epoch:
            m = np.mean(record, axis=0)
            total = np.sum(w * m)
            if t_prev is None:
                w = total * shares / m
            else:
                lam = max(3 - 1.5 * epoch, -3)
                r = (total / t_prev) * (m_prev / m)
                w = w * np.clip(1 + lam * (r - 1), 0.5, 2)
            t_prev = np.sum(w * m)
            m_prev = m
            record = []
    return out


def lbpinn(trace: np.ndarray, lr: float, b2: float = 0.999, init: float = 0.0) -> np.ndarray:
    """LB-PINN: weight 1/(2ε²) with s = log ε², then Adam on ∂/∂s [L e^{−s}/2 + log(1 + e^s)]."""
    trace, steps, k = _trace(trace)
    s = np.full(k, init)
    adam = Adam(lr, b2=b2)
    out = np.zeros((steps, k))
    for t in range(steps):
        out[t] = 0.5 * np.exp(-s)
        s = adam.step(s, -0.5 * np.exp(-s) * trace[t] + 1.0 / (1.0 + np.exp(-s)))
    return out
