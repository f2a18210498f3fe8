"""NumPy/SciPy (float64) oracles of FairGrad, DualProj, Krum, SDMGrad, MoDo, PCD and CR-MOGM,
written from the papers' equations. They take the K×K Gramian (or the gradients' inner
products) and never call covjax.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize


def fairgrad(gramian: np.ndarray, alpha: float) -> np.ndarray:
    """Ban & Ji 2024, Eq. (7): w > 0 with (G w)_i = w_i^(−1/α).

    Solved as a root-finding problem in u = log w (positivity for free) by
    MINPACK's Levenberg–Marquardt with the analytic Jacobian; the residual is
    then checked.
    """
    k = gramian.shape[0]

    def residual(u: np.ndarray) -> np.ndarray:
        w = np.exp(u)
        return gramian @ w - w ** (-1.0 / alpha)

    def jacobian(u: np.ndarray) -> np.ndarray:
        w = np.exp(u)
        return gramian * w[None, :] + np.diag(w ** (-1.0 / alpha) / alpha)

    start = np.log(np.diag(gramian) ** (-alpha / (alpha + 1.0)))
    options = {"xtol": 1e-15, "ftol": 1e-15}
    solution = optimize.root(residual, start, jac=jacobian, method="lm", options=options)
    w = np.exp(solution.x)
    scale = np.abs(gramian).max() * np.abs(w).max() + np.max(w ** (-1.0 / alpha))
    assert np.abs(residual(solution.x)).max() < 1e-10 * scale, solution.message
    assert w.shape == (k,)
    return w


def gradients_of(gramian: np.ndarray) -> np.ndarray:
    """K gradients (rows, in K dimensions) whose Gramian is ``gramian`` (PSD): J = V √Λ."""
    values, vectors = np.linalg.eigh(0.5 * (gramian + gramian.T))
    return vectors * np.sqrt(np.maximum(values, 0.0))[None, :]


def dualproj(gramian: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """The weights w of the projection of g_u = Jᵀu onto the dual cone {v : J v ≥ 0}.

    From the projection's KKT conditions, v = g_u + Jᵀλ with λ ≥ 0 minimising
    ‖g_u + Jᵀλ‖ (complementary slackness makes λ_j > 0 only where ⟨g_j, v⟩ = 0):
    a non-negative least-squares problem on explicit vectors, solved by SciPy's
    NNLS; w = u + λ.
    """
    jacobian = gradients_of(gramian)
    target = jacobian.T @ preference
    multipliers, _ = optimize.nnls(jacobian.T, -target, maxiter=50 * len(preference))
    return preference + multipliers


def krum(gramian: np.ndarray, n_byzantine: int, n_selected: int, squared: bool) -> np.ndarray:
    """Blanchard et al. 2017: score s(i) = Σ over the K − f − 2 nearest j ≠ i of ‖g_i − g_j‖²
    (or ‖g_i − g_j‖), on explicit vectors; the mean of the m best-scored gradients, as weights."""
    jacobian = gradients_of(gramian)
    k = len(jacobian)
    scores = []
    for i in range(k):
        others = [np.linalg.norm(jacobian[i] - jacobian[j]) for j in range(k) if j != i]
        nearest = np.sort(others)[: k - n_byzantine - 2]
        scores.append(np.sum(nearest**2 if squared else nearest))
    weights = np.zeros(k)
    weights[np.argsort(scores, kind="stable")[:n_selected]] = 1.0 / n_selected
    return weights


def simplex_projection(v: np.ndarray) -> np.ndarray:
    """argmin_{w ∈ Δ} ‖w − v‖: w = max(v − θ, 0) with Σ w = 1, θ found by bisection."""
    low, high = v.min() - 1.0, v.max()
    for _ in range(200):
        theta = 0.5 * (low + high)
        if np.maximum(v - theta, 0.0).sum() > 1.0:
            low = theta
        else:
            high = theta
    return np.maximum(v - 0.5 * (low + high), 0.0)


def sdmgrad(
    jacobian_a: np.ndarray,
    jacobian_b: np.ndarray,
    simplex: np.ndarray,
    lamda: float,
    num_steps: int,
    learning_rate: float,
    momentum: float,
    preference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Xiao et al. 2023, Alg. 1 with the authors' heavy-ball inner steps, on explicit gradients
    of two independent batches ξ (rows of ``jacobian_a``) and ξ': the stochastic gradient of
    ½‖g_w + λg_p‖² in w is [⟨g_i(ξ), g_w(ξ') + λ g_p(ξ')⟩]_i (g_p = Σ p_i g_i, the mean by
    default), scaled by 1/(mean_i ‖·‖_i)² with ‖·‖_i² = max(⟨g_i(ξ), g_i(ξ')⟩, 0).
    Returns (loss weights (w + λp)/(1 + λ), the new w)."""
    k = len(simplex)
    preference = np.full(k, 1.0 / k) if preference is None else preference
    scale = np.mean(np.sqrt(np.maximum(np.einsum("ip,ip->i", jacobian_a, jacobian_b), 0.0))) ** 2
    mean_b = jacobian_b.T @ preference
    w, buffer = simplex.copy(), np.zeros(k)
    for step in range(num_steps):
        gradient = jacobian_a @ (jacobian_b.T @ w + lamda * mean_b) / scale
        buffer = gradient if step == 0 else momentum * buffer + gradient
        w = simplex_projection(w - learning_rate * buffer)
    return (w + lamda * preference) / (1.0 + lamda), w


def modo(
    jacobian_a: np.ndarray, jacobian_b: np.ndarray, simplex: np.ndarray, gamma: float, rho: float
) -> np.ndarray:
    """Chen et al. 2023, Alg. 1 (MoDo): λ ← Π_Δ(λ − γ [⟨g_i(ξ), g_λ(ξ')⟩ + ρ λ_i]_i),
    on explicit gradients of two independent batches."""
    return simplex_projection(
        simplex - gamma * (jacobian_a @ (jacobian_b.T @ simplex) + rho * simplex)
    )


def pcd(
    gramians: list[np.ndarray], tau: float | np.ndarray, beta: float, eps: float
) -> list[np.ndarray]:
    """Varam & AlHajri 2026, PCD, on explicit gradients (the rows of ``gradients_of(G)``): per
    step, v ← βv + (1 − β)‖g_i‖², s_i = 1/√(v/(1 − β^t) + eps), g̃_i = s_i g_i, then the
    primal QP min ½‖d − g̃_1‖² s.t. ⟨g̃_j, d⟩ ≥ τ_j‖g̃_j‖² (j ≥ 2) by SciPy's SLSQP, its
    feasibility decided by a linear program (infeasible: d̃ = g̃_1), and d = ‖g_1‖ d̃/‖d̃‖
    (0 when g_1 = 0). Returns each step's direction, in the coordinates of
    ``gradients_of`` of that step's Gramian (SLSQP's active set, solved exactly by its KKT
    system and checked: multipliers ≥ 0, every constraint met)."""
    average = np.zeros(len(gramians[0]))
    directions = []
    for step, gramian in enumerate(gramians, start=1):
        jacobian = gradients_of(gramian)
        squared = np.sum(jacobian**2, axis=1)
        average = beta * average + (1.0 - beta) * squared
        normalized = jacobian / np.sqrt(average / (1.0 - beta**step) + eps)[:, None]
        primary, secondary = normalized[0], normalized[1:]
        taus = np.broadcast_to(tau, (len(secondary),))
        bounds = taus * np.sum(secondary**2, axis=1)
        feasible = optimize.linprog(
            np.zeros(len(primary)), A_ub=-secondary, b_ub=-bounds, bounds=(None, None)
        )
        if squared[0] == 0.0:
            directions.append(np.zeros(len(primary)))
            continue
        if feasible.status == 2:
            solution = primary
        else:
            result = optimize.minimize(
                lambda d: 0.5 * np.sum((d - primary) ** 2),
                feasible.x,
                jac=lambda d: d - primary,
                constraints=[
                    {
                        "type": "ineq",
                        "fun": lambda d: secondary @ d - bounds,
                        "jac": lambda d: secondary,
                    }
                ],
                method="SLSQP",
                options={"ftol": 1e-15, "maxiter": 1000},
            )
            # SLSQP finds the active set; the KKT system on it gives the exact solution
            # (status 8: its line search stalled at round-off, the iterate is optimal).
            assert result.status in (0, 8), result.message
            active = secondary @ result.x - bounds <= 1e-7 * max(1.0, np.abs(bounds).max())
            rows = secondary[active]
            multipliers = np.linalg.lstsq(rows @ rows.T, bounds[active] - rows @ primary)[0]
            solution = primary + rows.T @ multipliers
            assert np.all(multipliers >= -1e-9), multipliers
            assert np.all(secondary @ solution - bounds >= -1e-9 * max(1.0, np.abs(bounds).max()))
        directions.append(np.sqrt(squared[0]) * solution / np.linalg.norm(solution))
    return directions


def cr_mogm(raw: list[np.ndarray], alpha: float, initial: np.ndarray | None) -> list[np.ndarray]:
    """Zhou et al. 2022: λ_k = α λ_{k−1} + (1 − α) λ̂_k from λ_0 (λ̂_1 when not given)."""
    smoothed, previous = [], raw[0] if initial is None else initial
    for weights in raw:
        previous = alpha * previous + (1.0 - alpha) * weights
        smoothed.append(previous)
    return smoothed
