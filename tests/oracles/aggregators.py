"""NumPy/SciPy (float64) oracles of the gradient aggregators, written from the papers.

They work on explicit gradient vectors (the K×P Jacobian ``J``, one row per
loss), never on the Gramian, and return the aggregated direction d (P,) and,
where the paper defines them, the weights over the losses. They never call
covjax.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import optimize


def pcgrad(J: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Yu et al. 2020, Alg. 1: project each g_i off every conflicting g_j; sum.

    ``orders[i]`` is the visiting order of loss i (all j, i included).
    """
    projected = []
    for i in range(J.shape[0]):
        g = J[i].copy()
        for j in orders[i]:
            dot = g @ J[j]
            if dot < 0 and J[j] @ J[j] > 0:
                g = g - dot / (J[j] @ J[j]) * J[j]
        projected.append(g)
    return np.sum(projected, axis=0)


def gradvac(
    J: np.ndarray, orders: np.ndarray, targets: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Wang et al. 2021, Alg. 1 (per pair EMA targets); returns (d, new targets)."""
    targets = targets.copy()
    projected = []
    for i in range(J.shape[0]):
        g = J[i].copy()
        for j in orders[i]:
            if j == i:
                continue
            phi = g @ J[j] / (np.linalg.norm(g) * np.linalg.norm(J[j]))
            target = targets[i, j]
            if phi < target:
                g = (
                    g
                    + (
                        np.linalg.norm(g)
                        * (target * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - target**2))
                        / (np.linalg.norm(J[j]) * np.sqrt(1 - target**2))
                    )
                    * J[j]
                )
            targets[i, j] = (1 - beta) * target + beta * phi
        projected.append(g)
    return np.sum(projected, axis=0), targets


def cagrad_objective(w: np.ndarray, J: np.ndarray, c: float) -> float:
    """The CAGrad dual F(w) = ⟨g_w, g0⟩ + c‖g0‖‖g_w‖ on explicit vectors (w over all K)."""
    g0 = J.mean(axis=0)
    gw = w @ J
    return float(gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw))


def _cagrad_face_candidates(J: np.ndarray, live: np.ndarray, c: float) -> list[np.ndarray]:
    """Stationary points of the CAGrad dual in the relative interior of every face.

    On a face S with invertible G_S = J_S J_Sᵀ, stationarity a_S + r G_S u/s = ν1
    (a = J g0, r = c‖g0‖, s = ‖J_Sᵀu‖) gives u = (s/r)(ν p − q) with p = G_S⁻¹1,
    q = G_S⁻¹a_S; Σu = 1 and s² = uᵀG_S u leave a quadratic in ν:
    ν²·1ᵀp − 2ν·1ᵀq + a_Sᵀq − r² = 0, with s = r / (ν·1ᵀp − 1ᵀq) > 0.
    """
    g0 = J.mean(axis=0)
    r = c * np.linalg.norm(g0)
    indices = np.flatnonzero(live)
    candidates = []
    for size in range(1, len(indices) + 1):
        for subset in itertools.combinations(indices, size):
            S = list(subset)
            if size == 1:
                w = np.zeros(J.shape[0])
                w[S] = 1.0
                candidates.append(w)
                continue
            G = J[S] @ J[S].T
            if np.linalg.cond(G) > 1e10 or r == 0:
                continue
            a = J[S] @ g0
            p = np.linalg.solve(G, np.ones(size))
            q = np.linalg.solve(G, a)
            for nu in np.roots([p.sum(), -2 * q.sum(), a @ q - r**2]):
                if abs(nu.imag) > 1e-12:
                    continue
                nu = nu.real
                denominator = nu * p.sum() - q.sum()
                if denominator <= 0:
                    continue
                u = (nu * p - q) / denominator  # (s/r)(νp − q) with s = r/denominator
                if np.all(u >= -1e-12):
                    w = np.zeros(J.shape[0])
                    w[S] = np.clip(u, 0, None) / np.clip(u, 0, None).sum()
                    candidates.append(w)
    return candidates


def cagrad(J: np.ndarray, c: float, rescale: bool) -> tuple[np.ndarray, float]:
    """Liu et al. 2021: brute-force dual optimum; returns (d, F(w*)).

    The best of (i) the exact stationary points of every face of the simplex
    (closed form, see ``_cagrad_face_candidates``) and (ii) SLSQP from several
    starts (for faces with singular Gramians).

    Convention shared with covjax: losses with a zero gradient are left out of
    the worst case (w_i = 0), since their improvement is 0 for every d.
    """
    live = np.linalg.norm(J, axis=1) > 0
    k = int(live.sum())

    def embed(w_live: np.ndarray) -> np.ndarray:
        w = np.zeros(J.shape[0])
        w[live] = w_live
        return w

    candidates = _cagrad_face_candidates(J, live, c)
    for start in [np.full(k, 1.0 / k), *np.eye(k)]:
        result = optimize.minimize(
            lambda w_live: cagrad_objective(embed(w_live), J, c),
            start,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w_live: np.sum(w_live) - 1.0}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        w = embed(np.clip(result.x, 0, None))
        candidates.append(w / w.sum())
    w = min(candidates, key=lambda w: cagrad_objective(w, J, c))
    g0 = J.mean(axis=0)
    gw = w @ J
    d = g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw
    if rescale:
        d = d / (1 + c**2)
    return d, cagrad_objective(w, J, c)


def cagrad_primal_value(J: np.ndarray, c: float) -> float:
    """CAGrad's primal problem solved directly: max_d min_i ⟨g_i, d⟩ s.t. ‖d − g0‖ ≤ c‖g0‖.

    SLSQP on (d, t): max t subject to J d ≥ t and ‖d − g0‖² ≤ r² (a convex
    problem, so one start suffices), independent of the dual used by covjax.
    Zero rows are left out of the minimum (the shared convention).
    """
    live = np.linalg.norm(J, axis=1) > 0
    rows = J[live]
    g0 = J.mean(axis=0)
    r = c * np.linalg.norm(g0)
    p = J.shape[1]
    unit = max(np.abs(rows).max(), 1e-300) ** 2
    start = np.concatenate([g0, [np.min(rows @ g0) / unit]])
    result = optimize.minimize(
        lambda x: -x[-1],
        start,
        jac=lambda x: np.concatenate([np.zeros(p), [-1.0]]),
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda x: (rows @ x[:p]) / unit - x[-1]},
            {"type": "ineq", "fun": lambda x: (r**2 - np.sum((x[:p] - g0) ** 2)) / unit},
        ],
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    d = result.x[:p]
    assert np.sum((d - g0) ** 2) <= r**2 * (1 + 1e-8) + 1e-12 * unit, result.message
    return float(np.min(rows @ d))


def imtl_g(J: np.ndarray) -> np.ndarray:
    """Liu et al. ICLR 2021, IMTL-G closed form: α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹."""
    u = J / np.linalg.norm(J, axis=1, keepdims=True)
    D = J[0] - J[1:]
    U = u[0] - u[1:]
    rest = (J[0] @ U.T) @ np.linalg.inv(D @ U.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def nash_mtl(J: np.ndarray) -> np.ndarray:
    """Navon et al. 2022: α > 0 with (J Jᵀ α)_i = 1/α_i.

    Minimises the convex ½‖Jᵀα‖² − Σ log α (whose stationary points are the
    solutions) with L-BFGS-B, then polishes the root with least squares on
    log α; asserts that the equation holds to 1e-9.
    """
    k = J.shape[0]

    def objective(alpha: np.ndarray) -> tuple[float, np.ndarray]:
        d = J.T @ alpha
        return 0.5 * d @ d - np.sum(np.log(alpha)), J @ d - 1.0 / alpha

    start = 1.0 / np.linalg.norm(J, axis=1)
    coarse = optimize.minimize(
        objective,
        start,
        jac=True,
        method="L-BFGS-B",
        bounds=[(1e-12, None)] * k,
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )

    def residual(log_alpha: np.ndarray) -> np.ndarray:
        alpha = np.exp(log_alpha)
        return alpha * (J @ (J.T @ alpha)) - 1.0

    fine = optimize.least_squares(residual, np.log(coarse.x), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert np.max(np.abs(fine.fun)) < 1e-9, f"oracle failed to solve Gα = 1/α for K={k}"
    return np.exp(fine.x)


def aligned_mtl(J: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Senushkin et al. 2023: d = Σ_i t_i (σ_min U Vᵀ)_i from the SVD J = U Σ Vᵀ."""
    k = J.shape[0]
    t = np.ones(k) if weights is None else weights
    U, S, Vt = np.linalg.svd(J, full_matrices=False)
    squared = S**2
    keep = squared > squared[0] * k * np.finfo(np.float32).eps
    if not keep.any():
        return np.zeros(J.shape[1])
    U, S, Vt = U[:, keep], S[keep], Vt[keep]
    aligned = S[-1] * U @ Vt  # rows: the balanced gradients
    return t @ aligned


def upgrad(J: np.ndarray) -> np.ndarray:
    """Quinton & Rey 2024: mean of the projections of each g_i onto {v: Jv ≥ 0}.

    Each projection min ‖v − g_i‖ s.t. Jv ≥ 0 is solved through its dual, the
    non-negative least squares min_{λ≥0} ‖Jᵀλ + g_i‖ on the explicit vectors
    (SciPy's NNLS), v = g_i + Jᵀλ.
    """
    projections = []
    for g in J:
        lam, _ = optimize.nnls(J.T, -g, maxiter=10_000)
        v = g + J.T @ lam
        projections.append(v)
    return np.mean(projections, axis=0)


def db_mtl(
    J_steps: list[np.ndarray],
    losses_steps: list[np.ndarray],
    beta: float,
    beta_sigma: float,
    epsilon: float,
) -> list[np.ndarray]:
    """Lin et al. (DB-MTL) with EMA gradient NORMS; the direction of every step."""
    directions = []
    ema = None
    for t, (J, losses) in enumerate(zip(J_steps, losses_steps, strict=True), start=1):
        log_grads = J / (losses + epsilon)[:, None]
        norms = np.linalg.norm(log_grads, axis=1)
        ema = (
            norms
            if ema is None
            else (1 - beta / t**beta_sigma) * norms + (beta / t**beta_sigma) * ema
        )
        directions.append(np.sum((ema.max() / ema)[:, None] * log_grads, axis=0))
    return directions


def nash_mtl_authors(
    J: np.ndarray, rounds: int = 20, start: np.ndarray | None = None
) -> np.ndarray:
    """Nash-MTL as the authors' code (AvivNavon/nash-mtl, also LibMTL) runs it, in SciPy.

    Their procedure, re-implemented from its description: G = J Jᵀ, n = ‖G‖_F,
    Ĝ = G/n; from α_t (all ones on the first step) solve at most ``rounds``
    convex sub-problems, each linearising the concave part φ(α) = Σ log α_i +
    log (Ĝα)_i at α_t::

        min_α  1ᵀĜα + ∇φ(α_t)ᵀ(α − α_t) / n
        s.t.   −log(α_i n) − log (Ĝα)_i ≤ 0,  α ≥ 0

    and stop when ‖Ĝα_t − 1/α_t‖ < 1e-3 or the sub-problem's solution moves
    less than 1e-6 from α_t (their stopping rule, returning α_t). They solve
    the sub-problems with ECOS through cvxpy; here SLSQP solves them, started
    from a strictly feasible point (a multiple of the root of α_i (Gα)_i = 1;
    the start does not change a convex problem's solution), and each
    solution is checked against the sub-problem's constraints.
    """
    G = J @ J.T
    n = np.linalg.norm(G)
    Gn = G / n
    k = G.shape[0]
    feasible = 2.0 * nash_mtl(J)  # α_i (Gα)_i = 4 > 1: strictly inside
    alpha_t = np.ones(k) if start is None else np.asarray(start, np.float64)

    def constraint(a: np.ndarray) -> np.ndarray:
        return np.log(n * a) + np.log(np.maximum(Gn @ a, 1e-300))

    for _ in range(rounds):
        phi_gradient = 1.0 / alpha_t + Gn @ (1.0 / (Gn @ alpha_t))
        cost = Gn.sum(axis=0) + phi_gradient / n
        # SLSQP works on x = α/σ with an O(1) objective (α spans decades across cases).
        sigma = feasible.max()
        unit = abs(cost @ feasible)
        result = optimize.minimize(
            lambda x: cost @ (sigma * x) / unit,
            feasible / sigma,
            jac=lambda x: cost * sigma / unit,
            method="SLSQP",
            bounds=[(1e-15, None)] * k,
            constraints=[
                {
                    "type": "ineq",
                    "fun": lambda x: constraint(sigma * x),
                    "jac": lambda x: np.diag(1.0 / x) + Gn / np.maximum(Gn @ x, 1e-300)[:, None],
                }
            ],
            options={"ftol": 1e-14, "maxiter": 1000},
        )
        new = sigma * result.x
        # Status 8 ("positive directional derivative") is SLSQP stopping at
        # round-off; feasibility is what must hold.
        assert result.status in (0, 8) and constraint(new).min() > -1e-9, result.message
        if np.linalg.norm(Gn @ alpha_t - 1.0 / (alpha_t + 1e-10)) < 1e-3:
            break
        if np.linalg.norm(new - alpha_t) < 1e-6:
            break
        alpha_t = new
    return alpha_t
