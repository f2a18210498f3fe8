"""One property suite for every gradient aggregator, and the promises table of docs/schemes.md.

Every public scheme that needs the per-loss gradients (``GRAMIAN``, ``JACOBIAN`` or
``CROSS_GRAMIAN`` in ``requires``, found in ``covjax.__all__``: a new one joins when exported),
plus the Mean and Constant baselines of TorchJD (``equal_weighting``, ``static_weighting``),
is an aggregator A: J (K×P, row i the gradient g_i of loss i) ↦ d = Σ_i w_i g_i (a
``DIRECTION`` scheme's direction itself). Each declares in ``properties.promises``
(:class:`covjax.AggregatorPromises`) which of the properties of Quinton & Rey, "Jacobian
Descent for Multi-Objective Optimization" (2024, https://arxiv.org/abs/2406.16232), it
guarantees; here each promise is checked, as TorchJD's property tests check theirs, on
matrices built like TorchJD's (normal, strongly stationary, strictly weakly stationary,
non weakly stationary, rank-deficient, zero rows, scaled from 1e-15 to 1e15). What is not
promised is not checked, except what every scheme owes: a finite update of the right shape
and finite weights on degenerate inputs. TorchJD's recorded outputs for the aggregators
covjax has are reproduced at the end.

Each property runs twice: with the scheme's maths in float64 (``jax.enable_x64``; the
weights are still rounded to float32 by the weighting wrapper) and in float32, as in
training. Schemes are jitted once per K and precision and run from a fresh
state: a stateful scheme's promise is about every step, and its first is checked here.
All matrices have K = 6 rows but one (K = 1), so each scheme compiles four programs.

Regenerate the table of docs/schemes.md with ``python tests/test_aggregator_properties.py``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import covjax

EPS32 = float(np.finfo(np.float32).eps)
PRECISIONS = ("float64", "float32")

# ---------------------------------------------------------------------------
# The schemes: every gradient scheme covjax exports, with the arguments it cannot do
# without, and the variants whose promises differ from the default's.

#: Arguments a constructor cannot do without, as a function of the number of losses K.
REQUIRED: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "static_weighting": lambda k, p: {"weights": jnp.arange(1.0, k + 1.0)},
    "lsb": lambda k, p: {"period": 4},
    "multi_loss_rebalancing": lambda k, p: {"steps_per_epoch": 8},
    "dwa": lambda k, p: {"period": 2},
    "krum": lambda k, p: {"n_byzantine": 1},
    "trimmed_mean": lambda k, p: {"trim": 1},
    "cr_mogm": lambda k, p: {"weighting": covjax.upgrad()},
    # Their state holds a P-vector per loss, sized by the constructor.
    "moco": lambda k, p: {"num_params": p},
    "excess_mtl": lambda k, p: {"num_params": p},
}
#: Schemes defined only from this many losses on (Krum: K ≥ f + 3; trimmed mean: K ≥ 2·trim + 1):
#: the suite's single-loss matrices are skipped for them.
MIN_LOSSES = {"krum": 4, "trimmed_mean": 3}
#: How the promises table shows the REQUIRED arguments of a scheme in the suite.
REQUIRED_SHOWN = {"static_weighting": "weights > 0"}
#: Loss-only schemes that are TorchJD aggregators too (Mean, Constant): in the suite.
BASELINES = ("equal_weighting", "static_weighting")
#: Hyper-parameters that change a promise: each is a row of its own.
VARIANTS: dict[str, list[dict[str, Any]]] = {
    # CAGrad is non-conflicting for c ≥ 1 (Liu et al., 2021, and TorchJD's test of it).
    "cagrad": [{"c": 1.0}],
}


def scheme_constructors() -> dict[str, Callable[..., covjax.Weighting]]:
    return {
        name: getattr(covjax, name)
        for name in covjax.__all__
        if name[0].islower()
        and callable(getattr(covjax, name))
        and inspect.signature(getattr(covjax, name)).return_annotation == "Weighting"
        and name not in ("make_weighting", "stateless")
    }


def missing_arguments(constructor: Callable[..., Any]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(constructor).parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


class Config(NamedTuple):
    """One scheme configuration of the suite: ``make(K)`` builds it for K losses."""

    name: str  # the constructor
    arguments: tuple[tuple[str, Any], ...]  # the variant's arguments beyond REQUIRED

    @property
    def label(self) -> str:
        shown = ", ".join(
            ([REQUIRED_SHOWN[self.name]] if self.name in REQUIRED_SHOWN else [])
            + [f"{key}={value!r}" for key, value in self.arguments]
        )
        return f"{self.name}({shown})"

    def make(self, k: int, p: int = 3) -> covjax.Weighting:
        constructor = getattr(covjax, self.name)
        required = REQUIRED[self.name](k, p) if self.name in REQUIRED else {}
        return constructor(**required, **dict(self.arguments))


def gradient_schemes() -> list[str]:
    """Names of the exported schemes that need the per-loss gradients (plus the baselines)."""
    names = []
    for name, constructor in scheme_constructors().items():
        if missing_arguments(constructor) and name not in REQUIRED:
            continue  # reported by test_every_scheme_is_constructible_for_the_suite
        scheme = Config(name, ()).make(4)
        if (
            scheme.requires & {covjax.GRAMIAN, covjax.CROSS_GRAMIAN, covjax.JACOBIAN}
            or name in BASELINES
        ):
            names.append(name)
    return sorted(names)


def configurations() -> list[Config]:
    configs = []
    for name in gradient_schemes():
        configs.append(Config(name, ()))
        configs += [Config(name, tuple(v.items())) for v in VARIANTS.get(name, [])]
    return configs


CONFIGS = configurations()


def test_every_scheme_is_constructible_for_the_suite() -> None:
    """A constructor with required arguments needs an entry in REQUIRED (else the suite
    could not tell whether it is a gradient scheme, and would silently leave it out)."""
    lacking = {
        name: missing_arguments(constructor)
        for name, constructor in scheme_constructors().items()
        if missing_arguments(constructor) and name not in REQUIRED
    }
    assert not lacking, f"add these to REQUIRED: {lacking}"
    assert {"upgrad", "mgda", "nash_mtl", "equal_weighting"} <= set(gradient_schemes())


# ---------------------------------------------------------------------------
# TorchJD-style matrices (Quinton & Rey's definitions of stationarity), float64, fixed seed.


def orthonormal_complement(rng: np.random.Generator, basis: np.ndarray) -> np.ndarray:
    """A random orthonormal basis (m × (m − k)) of the complement of ``basis``'s columns."""
    m, k = basis.shape
    sample = rng.normal(size=(m, m - k))
    sample -= basis @ (basis.T @ sample)
    return np.linalg.qr(sample)[0]


def singular_values(rng: np.random.Generator, rank: int) -> np.ndarray:
    # Bounded away from 0 (TorchJD draws |N(0, 1)|): cond(G) ≤ 100 on the range of J,
    # so that float32 tolerances derived from the conditioning stay meaningful.
    return rng.uniform(0.2, 2.0, size=rank)


def from_left_basis(rng: np.random.Generator, left: np.ndarray, n: int, rank: int) -> np.ndarray:
    """J = U S Vᵀ with U the first ``rank`` columns of ``left``, random V, S ∈ [0.2, 2]."""
    right = orthonormal_complement(rng, np.zeros((n, 0)))
    return left[:, :rank] @ np.diag(singular_values(rng, rank)) @ right[:, :rank].T


def normal(rng: np.random.Generator, m: int, n: int, rank: int) -> np.ndarray:
    return from_left_basis(rng, orthonormal_complement(rng, np.zeros((m, 0))), n, rank)


def strong(rng: np.random.Generator, m: int, n: int, rank: int) -> np.ndarray:
    """Strongly stationary: uᵀJ = 0 for some u > 0 (J is orthogonal to a positive u)."""
    u = np.abs(rng.normal(size=(m, 1)))
    u /= np.linalg.norm(u)
    return from_left_basis(rng, orthonormal_complement(rng, u), n, rank)


def strictly_weak(rng: np.random.Generator, m: int, n: int, rank: int) -> np.ndarray:
    """Weakly (vᵀJ = 0, v ≥ 0, v ≠ 0) but not strongly stationary.

    v and v′ ≥ 0 have disjoint supports that cover all rows; J is orthogonal to v and has
    v′ as a left singular vector with a positive singular value, so any u > 0 has
    uᵀJ Jᵀv′ = s² uᵀv′ > 0: no positive u is orthogonal to J.
    """
    magnitudes = np.abs(rng.normal(size=m))
    rows = rng.permutation(m)
    split = int(rng.integers(1, m))
    v, v_prime = np.zeros(m), np.zeros(m)
    v[rows[:split]] = magnitudes[rows[:split]]
    v_prime[rows[split:]] = magnitudes[rows[split:]]
    pair = np.stack([v / np.linalg.norm(v), v_prime / np.linalg.norm(v_prime)], axis=1)
    left = np.concatenate([pair[:, 1:], orthonormal_complement(rng, pair)], axis=1)
    return from_left_basis(rng, left, n, rank)


def non_weak(rng: np.random.Generator, m: int, n: int, rank: int) -> np.ndarray:
    """Not weakly stationary: a positive left singular vector u with s > 0 makes vᵀJ Jᵀu > 0
    for every v ≥ 0, v ≠ 0."""
    u = np.abs(rng.normal(size=(m, 1)))
    u /= np.linalg.norm(u)
    left = np.concatenate([u, orthonormal_complement(rng, u)], axis=1)
    return from_left_basis(rng, left, n, rank)


def build_matrices() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    matrices = {
        # More losses than parameters (TorchJD's 4×3), and more parameters than losses.
        "normal_6x3_r2": normal(rng, 6, 3, 2),
        "normal_6x3_r3": normal(rng, 6, 3, 3),
        "normal_6x9_r6": normal(rng, 6, 9, 6),
        "rank1_6x9": normal(rng, 6, 9, 1),  # parallel gradients of both signs
        "strong_6x9_r3": strong(rng, 6, 9, 3),
        "strong_6x9_r5": strong(rng, 6, 9, 5),
        "strictly_weak_6x9_r3": strictly_weak(rng, 6, 9, 3),
        "strictly_weak_6x9_r5": strictly_weak(rng, 6, 9, 5),
        "non_weak_6x9_r3": non_weak(rng, 6, 9, 3),
        "non_weak_6x9_r6": non_weak(rng, 6, 9, 6),
        "zero_6x3": np.zeros((6, 3)),
    }
    zero_row = matrices["normal_6x9_r6"].copy()
    zero_row[2] = 0.0
    matrices["zero_row_6x9"] = zero_row
    return matrices


MATRICES = build_matrices()
TYPICAL = tuple(MATRICES)
NON_STRONG = tuple(name for name in MATRICES if name.startswith(("strictly_weak", "non_weak")))
SCALES = (1e-15, 1e-10, 1e-5, 1e3, 1e5, 1e10, 1e15)


def degenerate_matrices() -> Iterator[tuple[str, np.ndarray]]:
    """Every scale of a normal matrix, a single loss, exact opposing/parallel rows, zeros."""
    for scale in SCALES:
        yield f"normal_6x9_r6×{scale:g}", scale * MATRICES["normal_6x9_r6"]
    g = MATRICES["normal_6x3_r3"][0]
    yield "opposing_6x3", np.stack([g, -g, 2.0 * g, -0.5 * g, g, 3.0 * g])
    yield "single_1x3", MATRICES["normal_6x3_r3"][:1]
    yield "single_zero_1x3", np.zeros((1, 3))
    for name in ("zero_6x3", "zero_row_6x9", "rank1_6x9", "strictly_weak_6x9_r3"):
        yield name, MATRICES[name]


# ---------------------------------------------------------------------------
# Running a scheme as an aggregator.


def losses_for(k: int) -> np.ndarray:
    # Positive and distinct: the schemes that read the losses (DB-MTL, GradNorm) see a
    # valid step, and permuting the losses is visible.
    return np.linspace(1.0, 2.0, k)


@functools.cache
def jitted(config: Config, k: int, p: int, precision: str) -> tuple[covjax.Weighting, Callable]:
    """The scheme for K losses of P parameters and its jitted update (one compilation each)."""
    del precision  # part of the cache key: x64 and float32 programs are compiled apart
    scheme = config.make(k, p)
    return scheme, jax.jit(scheme.update)


def precision_scope(precision: str) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if precision == "float64" else contextlib.nullcontext()


class Result(NamedTuple):
    direction: np.ndarray  # (P,) float64
    weights: np.ndarray  # (K,) float64 (the scheme's float32 weights)
    accepted: bool


def aggregate(
    config: Config, J: np.ndarray, precision: str, losses: np.ndarray | None = None
) -> Result:
    """One step from a fresh state on the Jacobian J (float64): d and the weights."""
    k = J.shape[0]
    losses = losses_for(k) if losses is None else losses
    scheme, update = jitted(config, k, J.shape[1], precision)
    dtype = jnp.float64 if precision == "float64" else jnp.float32
    with precision_scope(precision):
        loss_values = jnp.asarray(losses, dtype)
        state = scheme.init(loss_values)
        if covjax.JACOBIAN in scheme.requires:
            out, new_state = update(loss_values, state, jacobian=jnp.asarray(J, dtype))
        else:
            # The float64 Gramian rounded once, as a float32 J Jᵀ would be.
            out, new_state = update(loss_values, state, gramian=jnp.asarray(J @ J.T, dtype))
    if isinstance(out, covjax.Aggregation):
        weights = np.asarray(out.weights, np.float64)
        direction = np.asarray(out.direction, np.float64)
    else:
        weights = np.asarray(out, np.float64)
        direction = weights @ J
    return Result(direction, weights, bool(new_state.count == 1))


def effective_eps(J: np.ndarray, precision: str) -> float:
    """Relative error of d from the scheme's arithmetic.

    float64: the weights are returned in float32, one rounding (eps32). float32: a
    solve on the float32-rounded Gramian moves w by ≈ cond⁺(G)·eps32 relative, with
    cond⁺ = (σ_max/σ_min)² over J's non-zero singular values (d lives in J's row space,
    so the null directions of a rank-deficient J do not enter).
    """
    if precision == "float64":
        return EPS32
    s = np.linalg.svd(J, compute_uv=False)
    kept = s[s > 1e-10 * s.max(initial=0.0)]
    return EPS32 * (float(kept.max() / kept.min()) ** 2 if kept.size else 1.0)


def term_size(result: Result, J: np.ndarray) -> float:
    """Σ|w_i|‖g_i‖ (or ‖d‖ for a direction that is not Σ w g): the size of the terms of d."""
    terms = float(np.abs(result.weights) @ np.linalg.norm(J, axis=1))
    return max(terms, float(np.linalg.norm(result.direction)))


def tolerance(J: np.ndarray, precision: str, *results: Result) -> float:
    """An absolute bound on the error of d: K·eps_eff times the size of d's terms, × 8 for
    the handful of solver steps (refinement, normalisation) that each add one such error."""
    k = J.shape[0]
    return 8 * k * effective_eps(J, precision) * sum(term_size(r, J) for r in results)


def promised(config: Config, promise: str) -> bool:
    return bool(getattr(config.make(4).properties.promises, promise))


def configs_promising(promise: str) -> list[Config]:
    return [config for config in CONFIGS if promised(config, promise)]


ids = lambda config: config.label  # noqa: E731

# ---------------------------------------------------------------------------
# The properties.


# The structure and degenerate-input checks run in float32, the precision of real use
# (float64 programs are compiled only for the promises below: the suite's cost is compiling).
@pytest.mark.parametrize("precision", ["float32"])
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_expected_structure(config: Config, precision: str) -> None:
    """Every scheme: d has one entry per parameter and is finite, on every typical matrix."""
    for name in TYPICAL:
        J = MATRICES[name]
        result = aggregate(config, J, precision)
        assert result.direction.shape == J.shape[1:], name
        assert np.all(np.isfinite(result.direction)), (name, result)
        assert result.accepted, (name, result)


@pytest.mark.parametrize("precision", ["float32"])
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_weights_are_finite_on_degenerate_inputs(config: Config, precision: str) -> None:
    """Every scheme: at scales 1e-15 … 1e15, on zero, single, parallel and opposing gradients,
    the step is accepted (the scheme's own weights and direction are finite)."""
    for name, J in degenerate_matrices():
        if J.shape[0] < MIN_LOSSES.get(config.name, 1):
            continue
        result = aggregate(config, J, precision)
        assert result.accepted, (name, result)
        assert np.all(np.isfinite(result.weights)) and np.all(np.isfinite(result.direction))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", configs_promising("non_conflicting"), ids=ids)
def test_non_conflicting(config: Config, precision: str) -> None:
    """J d ≥ 0 up to the arithmetic's error on ⟨g_i, d⟩ (‖g_i‖ × the error of d)."""
    for name in TYPICAL:
        J = MATRICES[name]
        result = aggregate(config, J, precision)
        improvements = J @ result.direction
        bound = np.linalg.norm(J, axis=1) * tolerance(J, precision, result)
        assert np.all(improvements >= -bound), (name, improvements, bound)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", configs_promising("permutation_invariant"), ids=ids)
def test_permutation_invariant(config: Config, precision: str) -> None:
    rng = np.random.default_rng(1)
    for name in TYPICAL:
        J = MATRICES[name]
        k = J.shape[0]
        result = aggregate(config, J, precision)
        for _ in range(2):
            order = rng.permutation(k)
            permuted = aggregate(config, J[order], precision, losses_for(k)[order])
            error = np.linalg.norm(permuted.direction - result.direction)
            assert error <= tolerance(J, precision, result, permuted), (name, order, error)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", configs_promising("linear_under_scaling"), ids=ids)
def test_linear_under_scaling(config: Config, precision: str) -> None:
    """A(diag(a c + b c′) J) = a A(diag(c) J) + b A(diag(c′) J) for c, c′ > 0, a, b > 0."""
    rng = np.random.default_rng(2)
    for name in TYPICAL:
        J = MATRICES[name]
        k = J.shape[0]
        c, c_prime = rng.uniform(0.1, 1.0, size=(2, k))
        a, b = rng.uniform(0.1, 1.0, size=2)
        first = aggregate(config, c[:, None] * J, precision)
        second = aggregate(config, c_prime[:, None] * J, precision)
        combined_J = (a * c + b * c_prime)[:, None] * J
        combined = aggregate(config, combined_J, precision)
        want = a * first.direction + b * second.direction
        error = np.linalg.norm(combined.direction - want)
        bound = (
            tolerance(combined_J, precision, combined)
            + a * tolerance(c[:, None] * J, precision, first)
            + b * tolerance(c_prime[:, None] * J, precision, second)
        )
        assert error <= bound, (name, error, bound)


#: ‖A(J)‖ on a matrix that is not strongly stationary must be clearly non-zero. The
#: matrices' singular values are ≥ 0.2, so such a d (a non-degenerate combination of
#: the gradients) has norm of order 0.1; 1e-3 is TorchJD's threshold on its own matrices,
#: and 10⁴ times above the float32 error of a d that should be 0.
STATIONARITY_THRESHOLD = 1e-3


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("config", configs_promising("strongly_stationary"), ids=ids)
def test_strongly_stationary(config: Config, precision: str) -> None:
    """d = 0 only on strongly stationary J: on the weakly-but-not-strongly and the
    non-weakly stationary matrices, d ≠ 0."""
    for name in NON_STRONG:
        J = MATRICES[name]
        result = aggregate(config, J, precision)
        norm = np.linalg.norm(result.direction) / np.linalg.norm(J, axis=1).max()
        assert norm > STATIONARITY_THRESHOLD, (name, norm)


def test_the_matrices_have_their_stationarity() -> None:
    """The generators' claims, checked by linear programming on u: strongly stationary
    matrices have uᵀJ = 0 with u ≥ 1 (u > 0, scaled); the others have no such u, and the
    non-weak ones not even u ≥ 0 with Σu = 1."""
    from scipy.optimize import linprog

    def exists(J: np.ndarray, lower: float, normalised: bool) -> bool:
        k = J.shape[0]
        equalities = [J.T] + ([np.ones((1, k))] if normalised else [])
        rhs = np.concatenate([np.zeros(J.shape[1])] + ([np.ones(1)] if normalised else []))
        # uᵀJ = 0 to the float64 round-off of the generators' products.
        found = linprog(
            np.zeros(k), A_eq=np.concatenate(equalities), b_eq=rhs, bounds=(lower, None)
        )
        return found.status == 0

    for name, J in MATRICES.items():
        if name.startswith("strong"):
            assert exists(J, 1.0, False), name
        if name.startswith(("strictly_weak", "non_weak")):
            assert not exists(J, 1.0, False), name
        if name.startswith("strictly_weak"):
            assert exists(J, 0.0, True), name
        if name.startswith("non_weak"):
            assert not exists(J, 0.0, True), name


# ---------------------------------------------------------------------------
# TorchJD's recorded outputs (tests/unit/aggregation/test_values.py, TorchJD 0.18) for the
# aggregators covjax has, on J = [[-4, 1, 1], [6, 1, 1]]. TorchJD returns them to 1e-4.

J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
J_TRIMMED_MEAN = np.array([[1e11, 3.0], [1.0, -1e11], [-1e10, 1e10], [2.0, 2.0]])


def clipped(direction: np.ndarray, max_norm: float = 1.0) -> np.ndarray:
    """TorchJD's NashMTL keeps the authors' clip of the update to norm ``max_norm`` (1.0);
    covjax leaves clipping to the optimiser (``optax.clip_by_global_norm``)."""
    return direction * min(1.0, max_norm / np.linalg.norm(direction))


#: TorchJD's UPGrad and DualProj solve with G/tr(G) + 1e-4·I; on J_BASE that ridge moves
#: their recorded d by 5.1e-4 and 7.7e-4 from the exact projections (covjax's: UPGrad
#: [0.29240, 1.90058, 1.90058], DualProj [0.55556, 1.11111, 1.11111], by SciPy in float64).
REGULARIZED_ATOL = 1e-3

TORCHJD_VALUES = [
    # (constructor, arguments, J, post-processing, TorchJD's A(J))
    ("upgrad", {}, J_BASE, None, [0.2929, 1.9004, 1.9004]),
    ("mgda", {}, J_BASE, None, [0.0, 1.0, 1.0]),
    ("pcgrad", {}, J_BASE, None, [0.5848, 3.8012, 3.8012]),
    ("imtl_g", {}, J_BASE, None, [0.0767, 1.0, 1.0]),
    # TorchJD's CAGrad is the paper's d (no 1/(1 + c²) rescale of the authors' code).
    ("cagrad", {"c": 0.5, "rescale": False}, J_BASE, None, [0.1835, 1.2041, 1.2041]),
    ("nash_mtl", {}, J_BASE, clipped, [0.0542, 0.7061, 0.7061]),
    # TorchJD's default preference is the mean (1/K); covjax's is the sum (t = 1).
    ("aligned_mtl", {"task_weights": jnp.full(2, 0.5)}, J_BASE, None, [0.2133, 0.9673, 0.9673]),
    ("equal_weighting", {}, J_BASE, None, [1.0, 1.0, 1.0]),
    ("static_weighting", {"weights": jnp.array([1.0, 2.0])}, J_BASE, None, [8.0, 3.0, 3.0]),
    # Schemes being added (run once they are exported).
    ("dualproj", {}, J_BASE, None, [0.5563, 1.1109, 1.1109]),
    ("conflict_free", {}, J_BASE, None, [0.1588, 2.0706, 2.0706]),
    ("trimmed_mean", {"trim": 1}, J_TRIMMED_MEAN, None, [1.5, 2.5]),
]


@pytest.mark.parametrize(
    ("name", "arguments", "J", "post", "want"), TORCHJD_VALUES, ids=[c[0] for c in TORCHJD_VALUES]
)
def test_torchjd_recorded_values(name, arguments, J, post, want) -> None:
    if not hasattr(covjax, name):
        pytest.skip(f"covjax.{name} is not exported yet")
    scheme = getattr(covjax, name)(**arguments)
    with jax.enable_x64(True):
        losses = jnp.ones(J.shape[0])
        state = scheme.init(losses)
        update = jax.jit(scheme.update)  # compiling is cheaper than running a solver eagerly
        if covjax.JACOBIAN in scheme.requires:
            out, _ = update(losses, state, jacobian=jnp.asarray(J))
        else:
            out, _ = update(losses, state, gramian=jnp.asarray(J @ J.T))
    if isinstance(out, covjax.Aggregation):
        direction = np.asarray(out.direction, np.float64)
    else:
        direction = np.asarray(out, np.float64) @ J
    if post is not None:
        direction = post(direction)
    # TorchJD's own tolerance, 1e-4 on values of order 1, but for its regularized solvers.
    atol = REGULARIZED_ATOL if name in ("upgrad", "dualproj") else 1e-4
    np.testing.assert_allclose(direction, want, rtol=0, atol=atol)


# ---------------------------------------------------------------------------
# The docs' promises table (docs/schemes.md) is generated from the declarations.

SCHEME_PAGE = Path(__file__).resolve().parents[1] / "docs" / "schemes.md"
PROMISE_COLUMNS = {
    "non-conflicting": "non_conflicting",
    "permutation-invariant": "permutation_invariant",
    "linear under scaling": "linear_under_scaling",
    "strongly stationary": "strongly_stationary",
}


def promises_table() -> str:
    """The promises table of docs/schemes.md, one row per configuration of the suite."""
    header = "| scheme | " + " | ".join(PROMISE_COLUMNS) + " |"
    lines = [header, "|---" * (len(PROMISE_COLUMNS) + 1) + "|"]
    for config in CONFIGS:
        promises = config.make(4).properties.promises
        cells = ["✓" if getattr(promises, field) else "—" for field in PROMISE_COLUMNS.values()]
        lines.append(f"| `{config.label}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_promises_table() -> str:
    text = SCHEME_PAGE.read_text()
    start = text.index("| scheme | non-conflicting |")
    return text[start : text.index("\n\n", start)]


def test_readme_promises_table_is_generated_from_the_declarations() -> None:
    assert readme_promises_table() == promises_table(), (
        "regenerate the promises table of docs/schemes.md with "
        "`python tests/test_aggregator_properties.py`"
    )


if __name__ == "__main__":
    print(promises_table())
