"""Loss values a scheme cannot use, the loss-structure papercuts, and every scheme's facts.

* Schemes whose maths needs positive losses (``properties.positive_losses``)
  reject a step with a loss ≤ 0 exactly like a non-finite one: state
  bit-identical, previous weights, reported as not accepted. The others
  accept zero and negative losses with bounded weights.
* The facts each scheme declares (:class:`covjax.WeightingProperties`: what
  the weights sum to, how they respond to a loss's scale) hold in its
  behaviour, and the docs' scheme table (docs/schemes.md) shows exactly those facts.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Callable
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from precision import normalization_rtol, trace_rtol

import covjax

K = 5


def random_trace(seed: int, steps: int, k: int = K) -> np.ndarray:
    """Positive, noisy, decaying losses on scales 10^±2."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-2, 2, size=k)
    t = np.arange(steps)[:, None]
    noise = rng.lognormal(0.0, 0.3, size=(steps, k))
    return (scales * (0.2 + np.exp(-0.05 * t)) * noise).astype(np.float32)


def random_gramians(seed: int, steps: int, k: int = K) -> np.ndarray:
    """One positive definite Gramian per step, from random gradients on scales 10^±1."""
    rng = np.random.default_rng(seed)
    jacobians = rng.normal(size=(steps, k, 3 * k)) * 10.0 ** rng.uniform(-1, 1, size=(1, k, 1))
    return np.einsum("tid,tjd->tij", jacobians, jacobians).astype(np.float32)


# Every scheme that needs only losses, plus GradNorm (which needs the Gramian's diagonal):
# name -> (constructor, arguments), in configurations that move within a few steps (the
# facts do not depend on learning rates).
CONFIGS: dict[str, tuple[Callable[..., covjax.Weighting], dict]] = {
    "cov_weighting": (covjax.cov_weighting, {}),
    "cov_weighting_loss": (covjax.cov_weighting, {"statistic": "loss"}),
    "cov_weighting_decay": (covjax.cov_weighting, {"decay": 0.9}),
    "cov_weighting_inverse": (covjax.cov_weighting, {"inverse": True}),
    "static_weighting": (covjax.static_weighting, {"weights": jnp.arange(1.0, K + 1.0)}),
    "static_weighting_normalized": (
        covjax.static_weighting,
        {"weights": jnp.arange(1.0, K + 1.0), "normalize": True},
    ),
    "equal_weighting": (covjax.equal_weighting, {}),
    "rlw": (covjax.rlw, {}),
    "uncertainty_weighting": (covjax.uncertainty_weighting, {"optimizer": optax.adam(0.1)}),
    "uncertainty_weighting_kendall": (
        covjax.uncertainty_weighting,
        {"optimizer": optax.adam(0.1), "form": "kendall"},
    ),
    "imtl_l": (covjax.imtl_l, {"optimizer": optax.adam(0.1)}),
    "lsb": (covjax.lsb, {"period": 3}),
    "lsb_scale_only": (covjax.lsb, {"period": 3, "difficulty": False}),
    "multi_loss_rebalancing": (covjax.multi_loss_rebalancing, {"steps_per_epoch": 6}),
    "gls": (covjax.gls, {}),
    "famo": (covjax.famo, {"learning_rate": 0.1}),
    "famo_minimum": (covjax.famo, {"learning_rate": 0.1, "min_losses": 0.5}),
    "famo_zero_minimum": (covjax.famo, {"min_losses": jnp.zeros(K)}),
    "dwa": (covjax.dwa, {"period": 2}),
    "softadapt": (covjax.softadapt, {}),
    "softadapt_normalized": (covjax.softadapt, {"variant": "normalized"}),
    "softadapt_loss_weighted": (covjax.softadapt, {"variant": "loss_weighted"}),
    "relobralo": (covjax.relobralo, {"expected_rho": 0.5}),
    "stch": (covjax.stch, {"mu": 100.0}),  # μ on the scale of the losses: all of them count
    "stch_warmup": (covjax.stch, {"warmup_steps": 2}),
    "pbi": (covjax.pbi, {}),
    "cosmos": (covjax.cosmos, {}),
    "lbpinn": (covjax.lbpinn, {"optimizer": optax.adam(0.1)}),
    "gradnorm": (covjax.gradnorm, {"learning_rate": 0.1}),
    "gradnorm_paper": (covjax.gradnorm, {"form": "paper", "learning_rate": 0.1}),
    # PINN balancers on the Gramian's diagonal (lr_annealing's max/mean form needs the
    # per-loss gradients themselves: tests/test_lr_annealing.py).
    "lr_annealing_grad_norm": (covjax.lr_annealing, {"form": "grad_norm"}),
    "ntk_weighting": (covjax.ntk_weighting, {}),
    # Gradient aggregators (the Gramian of the per-loss gradients).
    "mgda": (covjax.mgda, {}),
    **{
        f"mgda_{label}": (covjax.mgda, {"normalization": normalization})
        for label, normalization in (("l2", "l2"), ("loss", "loss"), ("loss_plus", "loss+"))
    },
    "pcgrad": (covjax.pcgrad, {}),
    "gradvac": (covjax.gradvac, {}),
    "cagrad": (covjax.cagrad, {}),
    "imtl_g": (covjax.imtl_g, {}),
    "nash_mtl": (covjax.nash_mtl, {}),
    "aligned_mtl": (covjax.aligned_mtl, {}),
    "upgrad": (covjax.upgrad, {}),
    "db_mtl": (covjax.db_mtl, {}),
    "fairgrad": (covjax.fairgrad, {}),
    "fairgrad_alpha2": (covjax.fairgrad, {"alpha": 2.0}),
    "dualproj": (covjax.dualproj, {}),
    "krum": (covjax.krum, {"n_byzantine": 1, "n_selected": 3}),
    "sdmgrad": (covjax.sdmgrad, {}),
    "modo": (covjax.modo, {"gamma": 0.1}),
    "cr_mogm": (covjax.cr_mogm, {"weighting": covjax.upgrad()}),
    "pcd": (covjax.pcd, {"tau": 0.3}),
    "conflict_free": (covjax.conflict_free, {}),
}


def takes_gramian(scheme: covjax.Weighting) -> bool:
    """Whether ``update`` takes ``gramian=`` (a Gramian or a cross-Gramian)."""
    return bool(scheme.requires & {covjax.GRAMIAN, covjax.CROSS_GRAMIAN})


# Solvers whose scale behaviour is an identity of exact arithmetic: checked in float64
# (their float32 solves on these Gramians, condition numbers up to ~1e4, lose ~1e-2).
SOLVERS = {
    name
    for name, (constructor, _) in CONFIGS.items()
    if takes_gramian(constructor(**CONFIGS[name][1])) and constructor is not covjax.gradnorm
}
# Steps before a "compensated" scheme first rebalances (equal weights until then).
FIRST_REBALANCING = {"lsb": 3, "lsb_scale_only": 3, "multi_loss_rebalancing": 1}
# Scalarizations whose gradient trades one loss off for the others: weights of either sign.
SIGNED_WEIGHTS = {"pbi", "cosmos"}
# Losses must lie above FAMO's known minima to be used at all.
ABOVE_MINIMUM = {"famo_minimum": 1.0}


def make(name: str) -> covjax.Weighting:
    constructor, arguments = CONFIGS[name]
    return constructor(**arguments)


def arguments_of(constructor: Callable[..., covjax.Weighting]) -> dict:
    return next(arguments for c, arguments in CONFIGS.values() if c is constructor)


def positive(name: str) -> bool:
    return make(name).properties.positive_losses


def stepper(scheme: covjax.Weighting) -> Callable:
    """A jitted ``(losses, state, gramian) -> (weights, state)``; the Gramian only if required."""
    if takes_gramian(scheme):
        return jax.jit(lambda losses, state, gramian: scheme.update(losses, state, gramian=gramian))
    return jax.jit(lambda losses, state, gramian: scheme.update(losses, state))


def run(
    scheme: covjax.Weighting, trace: np.ndarray, gramians: np.ndarray | None = None
) -> tuple[np.ndarray, covjax.WeightingState]:
    """Every step's weights over a (T, K) trace (with one Gramian per step), and the final state."""
    step = stepper(scheme)
    if gramians is None:
        gramians = random_gramians(0, len(trace), trace.shape[1])
    state = scheme.init(trace[0])
    weights = []
    for losses, gramian in zip(trace, gramians, strict=True):
        w, state = step(losses, state, gramian)
        weights.append(np.asarray(w))
    return np.stack(weights), state


def test_every_scheme_declares_its_facts() -> None:
    for name in CONFIGS:
        properties = make(name).properties
        assert properties.weights_sum in ("1", "K", "free"), name
        assert properties.loss_scale in ("compensated", "unchanged", "learned", "no"), name


def test_the_rule_is_in_help() -> None:
    """What help() shows states the rule, for every constructor."""
    constructors = {constructor for constructor, _ in CONFIGS.values()}
    for constructor in constructors:
        doc = " ".join(constructor.__doc__.split())
        needs_positive = [positive(n) for n, (c, _) in CONFIGS.items() if c is constructor]
        if any(needs_positive):
            assert re.search(r"must be positive|must exceed their minima", doc), constructor
            assert "is rejected" in doc, constructor
        # The aggregators other than DB-MTL never look at the loss values.
        loss_statistics = not takes_gramian(constructor(**arguments_of(constructor)))
        if loss_statistics and not all(needs_positive):
            assert re.search(r"any finite (value|losses)", doc), constructor


# ---------------------------------------------------------------------------
# Non-positive losses: rejected where the maths needs positive losses, used elsewhere.


def bad_losses(value: float, name: str) -> np.ndarray:
    losses = random_trace(1, 1)[0]
    losses[2] = value
    if name == "famo_minimum":
        losses[3] = 0.25  # positive, but below FAMO's known minimum 0.5
    return losses


@pytest.mark.parametrize("when", ["first step", "mid-run"])
@pytest.mark.parametrize("value", [0.0, -1.0])
@pytest.mark.parametrize("name", [name for name in CONFIGS if positive(name)])
def test_non_positive_loss_is_rejected(name: str, value: float, when: str) -> None:
    scheme = make(name)
    step = stepper(scheme)
    trace = random_trace(2, 7) + 1.0  # above FAMO's minimum too
    gramians = random_gramians(2, 8)
    state = scheme.init(trace[0])
    if when == "first step":
        previous = np.asarray(state.weights)
        # Uniform on the scheme's scale: 1/K each, or 1 each for weights that sum to K.
        np.testing.assert_allclose(previous.sum(), K if scheme.properties.weights_sum == "K" else 1)
    else:
        for losses, gramian in zip(trace, gramians, strict=False):
            previous, state = step(losses, state, gramian)
    weights, new_state = step(bad_losses(value, name), state, gramians[-1])
    chex.assert_trees_all_equal(new_state, state)  # bit-identical, the count included
    np.testing.assert_array_equal(weights, previous)
    assert not bool(covjax.step_accepted(state, new_state))
    # Training continues: the next step with positive losses is accepted.
    weights, next_state = step(trace[-1], state, gramians[-1])
    assert bool(covjax.step_accepted(state, next_state))
    assert np.all(np.isfinite(weights))


@pytest.mark.parametrize("value", [0.0, -1.0])
@pytest.mark.parametrize("name", [name for name in CONFIGS if not positive(name)])
def test_schemes_without_positivity_use_zero_and_negative_losses(name: str, value: float) -> None:
    scheme = make(name)
    trace = random_trace(3, 12)
    trace[4:, 2] = value  # from mid-run
    trace[:, 0] = value  # and from the first step
    weights, state = run(scheme, trace)
    assert int(state.count) == len(trace)  # every step accepted
    assert np.all(np.isfinite(weights))
    if takes_gramian(scheme):
        return  # the aggregators' weights come from the gradients, not the loss values
    assert name in SIGNED_WEIGHTS or np.all(weights >= 0)
    if scheme.properties.weights_sum == "1":
        assert np.all(weights <= 1.0)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=normalization_rtol(K))


def test_value_and_grad_reports_a_rejected_non_positive_step() -> None:
    scheme = covjax.gls()
    params = jnp.array([1.0, 2.0])
    step = jax.jit(covjax.value_and_grad(lambda p: jnp.stack([p[0] ** 2, p[1] - 2.0]), scheme))
    state = scheme.init(jnp.ones(2))
    out, grads = step(params, state)  # the second loss is exactly 0
    assert not bool(covjax.step_accepted(state, out.state))
    chex.assert_trees_all_equal(out.state, state)
    np.testing.assert_array_equal(out.weights, [0.5, 0.5])
    assert np.all(np.isfinite(grads))


# ---------------------------------------------------------------------------
# The declared facts hold in each scheme's behaviour.

# A power of two: multiplying by it is exact in floating point, so a scale-free
# statistic (a ratio of losses) is bit-identical before and after.
SCALE = 8.0
SCALED_LOSS = 1


def scale_vector(k: int = K) -> np.ndarray:
    scale = np.ones(k, np.float32)
    scale[SCALED_LOSS] = SCALE
    return scale


def with_scaled_loss(
    scheme_factory: Callable[[], covjax.Weighting], trace: np.ndarray, gramians: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weights on a trace, and on the same trace with one loss (and its gradient) × SCALE."""
    scale = scale_vector(trace.shape[1])
    weights, _ = run(scheme_factory(), trace, gramians)
    scaled, _ = run(scheme_factory(), trace * scale, gramians * np.outer(scale, scale))
    return weights, scaled


def change(weights: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """Per step, the largest change of a weight relative to the largest weight."""
    return np.abs(scaled - weights).max(axis=1) / np.abs(weights).max(axis=1)


def compensation_error(weights: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """Per step, the spread of α'_i c_i / α_i around its mean: 0 when α_i ∝ 1/c_i up to a
    factor common to all weights (so every α_i L_i keeps its share). Weights that are 0
    in both runs (MGDA's inactive losses) are consistent with any factor."""
    both_zero = (weights == 0) & (scaled == 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a weight that left 0: infinite
        ratio = np.where(both_zero, np.nan, scaled * scale_vector(weights.shape[1]))
        ratio = ratio / np.where(both_zero, 1.0, weights)
        spread = np.nanmax(ratio, axis=1) - np.nanmin(ratio, axis=1)
        error = spread / np.abs(np.nanmean(ratio, axis=1))
    return np.where(np.isinf(ratio).any(axis=1), np.inf, error)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_declared_weights_sum(name: str) -> None:
    scheme = make(name)
    weights, state = run(scheme, random_trace(4, 24) + ABOVE_MINIMUM.get(name, 0.0))
    assert int(state.count) == 24
    sums = weights.sum(axis=1)
    declared = scheme.properties.weights_sum
    if declared == "free":
        # Not normalized: at some step the sum is neither 1 nor K.
        distance = np.minimum(np.abs(sums - 1.0), np.abs(sums - K) / K)
        assert distance.max() > 1e-3, sums
    else:
        # Normalized float32 weights, summed again in float32.
        np.testing.assert_allclose(sums, 1.0 if declared == "1" else K, rtol=normalization_rtol(K))


# Learned schemes at their equilibrium: constant losses and an optimiser that settles.
SETTLING = {
    "uncertainty_weighting": (covjax.uncertainty_weighting, {"optimizer": optax.sgd(0.5)}),
    "uncertainty_weighting_kendall": (
        covjax.uncertainty_weighting,
        {"optimizer": optax.sgd(1.0), "form": "kendall"},
    ),
    "imtl_l": (covjax.imtl_l, {"optimizer": optax.sgd(0.5)}),
    # GradNorm's gradient is a sign: Adam's decaying steps (Σ_{s>t} lr·0.97^s ≈ 1e-4 lr·33
    # after 300 steps) bound how close w gets to its equilibrium; the paper's w sum to K,
    # so its steps are K times larger.
    **{
        name: (
            covjax.gradnorm,
            {**arguments, "optimizer": optax.adam(optax.exponential_decay(lr, 1, 0.97))},
        )
        for name, arguments, lr in (
            ("gradnorm", {}, 0.02),
            ("gradnorm_paper", {"form": "paper"}, 0.02 * K),
        )
    },
}
# The moving average forgets its start λ = 1 as α^t (0.9^300 ≈ 2e-14).
SETTLING["lr_annealing_grad_norm"] = (covjax.lr_annealing, {"form": "grad_norm"})
SETTLING_STEPS = 300


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_declared_loss_scale(name: str) -> None:
    declared = make(name).properties.loss_scale
    if declared == "learned":
        constructor, arguments = SETTLING[name]
        trace = np.tile(random_trace(5, 1)[0], (SETTLING_STEPS, 1))
        gramians = np.tile(random_gramians(5, 1)[0], (SETTLING_STEPS, 1, 1))
        weights, scaled = with_scaled_loss(lambda: constructor(**arguments), trace, gramians)
        errors = compensation_error(weights, scaled)
        assert errors[0] > 0.1, "compensated at once: declare it 'compensated'"
        tolerance = 1e-3 if constructor is covjax.gradnorm else 1e-5  # see SETTLING
        assert errors[-1] < tolerance, errors[-1]
        return
    trace, gramians = random_trace(6, 16), random_gramians(6, 16)
    offset = ABOVE_MINIMUM.get(name, 0.0)
    precision = jax.enable_x64(True) if name in SOLVERS else contextlib.nullcontext()
    if name in SOLVERS:
        trace, gramians = trace.astype(np.float64), gramians.astype(np.float64)
    with precision:
        weights, scaled = with_scaled_loss(lambda: make(name), trace + offset, gramians)
    if declared == "unchanged":
        # Scale-free statistics are bit-identical (SCALE is a power of two); 1e-6 leaves
        # room for a reduction reordered by the compiler.
        assert change(weights, scaled).max() < 1e-6
    elif declared == "compensated":
        # From the first rebalancing on; float32 logs/exps of the losses: ~10 ulps.
        errors = compensation_error(weights, scaled)[FIRST_REBALANCING.get(name, 0) :]
        assert errors.max() < 1e-5, errors
    else:
        neither = np.minimum(change(weights, scaled), compensation_error(weights, scaled))
        # Small losses too: CoV's raw-loss statistic depends on the scale only through
        # its σ floor sqrt(1e-8), i.e. for losses varying by less than ~1e-4.
        with precision:
            weights, scaled = with_scaled_loss(lambda: make(name), 1e-4 * trace + offset, gramians)
        small = np.minimum(change(weights, scaled), compensation_error(weights, scaled))
        assert max(np.nanmax(neither), np.nanmax(small)) > 1e-3, (neither, small)


# ---------------------------------------------------------------------------
# Loss-structure papercuts: each a clear error (at trace time) or now working.


def test_a_none_loss_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="loss 'a' is None"):
        covjax.cov_weighting().init({"a": None, "b": 1.0})
    state = covjax.cov_weighting().init({"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="loss 'a' is None"):
        jax.jit(covjax.cov_weighting().update)({"a": None, "b": 1.0}, state)


@pytest.mark.parametrize(
    ("losses", "name"), [({"a": jnp.ones(1)}, "a"), ([jnp.ones(3)], "0"), ((jnp.ones(2),), "0")]
)
def test_a_vector_inside_a_container_is_not_a_vector_of_losses(losses, name: str) -> None:
    with pytest.raises(ValueError, match=rf"loss '{name}' has shape .*pass the 1-D array itself"):
        covjax.gls().init(losses)
    assert covjax.gls().init(jnp.ones(1)).structure.is_vector  # by itself it is one


def test_an_integer_loss_is_a_trace_time_error_naming_it() -> None:
    params = {"w": jnp.ones(3)}

    def loss_fn(p):
        return {"fit": jnp.sum(p["w"] ** 2), "errors": jnp.sum(p["w"] > 2.0)}  # an int32 count

    for scheme in (covjax.mgda(), covjax.cov_weighting()):
        state = scheme.init({"fit": 1.0, "errors": 1.0})
        step = covjax.value_and_grad(loss_fn, scheme)
        with pytest.raises(TypeError, match=r"loss 'errors' has dtype int32.*floating point"):
            jax.eval_shape(step, params, state)  # raised while tracing


def test_a_state_from_another_scheme_names_both() -> None:
    famo_state = covjax.famo().init(jnp.ones(3))
    with pytest.raises(TypeError, match=r"made by covjax\.famo's init, not by covjax\.cov_weight"):
        jax.jit(covjax.cov_weighting().update)(jnp.ones(3), famo_state)
    # The same scheme with another optimiser keeps another state.
    with pytest.raises(TypeError, match="differently configured"):
        covjax.famo(optimizer=optax.sgd(0.1)).update(jnp.ones(3), famo_state)


def test_named_keeps_leading_batch_axes() -> None:
    """Weights of a vmapped sweep: one (B,) array per name, equal to each sweep member's."""
    trace = jnp.asarray(random_trace(7, 6, 3))

    def run_one(decay, losses_as_dict: bool):
        scheme = covjax.cov_weighting(decay=decay)
        pack = (lambda v: {"a": v[0], "b": {"c": v[1], "d": v[2]}}) if losses_as_dict else None
        pack = pack or (lambda v: v)
        state = scheme.init(pack(trace[0]))
        for losses in trace:
            weights, state = scheme.update(pack(losses), state)
        return weights

    decays = jnp.array([0.5, 0.9])
    for as_dict, names in ((True, ["a", "b/c", "b/d"]), (False, ["loss_0", "loss_1", "loss_2"])):
        swept = jax.vmap(lambda d, as_dict=as_dict: run_one(d, as_dict))(decays)
        logged = covjax.named(swept)
        assert list(logged) == names
        for index, decay in enumerate(decays):
            single = covjax.named(run_one(decay, as_dict))
            for name in names:
                assert logged[name].shape == (2,)
                # Batched and single programs may order each step's 3-term sums differently.
                rtol = trace_rtol(len(trace), normalization_rtol(3))
                np.testing.assert_allclose(logged[name][index], single[name], rtol=rtol)


def test_forgetting_has_aux_suggests_it() -> None:
    params = jnp.array([1.0, 2.0])

    def loss_fn(p):
        return {"a": p[0] ** 2, "b": p[1] ** 2}, {"accuracy": jnp.float32(0.5)}

    scheme = covjax.cov_weighting()
    state = scheme.init({"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="pass has_aux=True"):
        covjax.value_and_grad(loss_fn, scheme)(params, state)
    out, _ = covjax.value_and_grad(loss_fn, scheme, has_aux=True)(params, state)
    assert float(out.aux["accuracy"]) == 0.5
    # A pair of scalar losses is still two losses.
    pair = covjax.value_and_grad(lambda p: (p[0] ** 2, p[1] ** 2), scheme)
    out, _ = pair(params, scheme.init((1.0, 1.0)))
    assert len(out.weights) == 2


# ---------------------------------------------------------------------------
# The docs' scheme table shows exactly the declared facts.

SCHEME_PAGE = Path(__file__).resolve().parents[1] / "docs" / "schemes.md"
# Arguments a constructor cannot do without.
REQUIRED = {
    "lsb": {"period": 4},
    "multi_loss_rebalancing": {"steps_per_epoch": 8},
    "dwa": {"period": 2},
    "static_weighting": {"weights": jnp.ones(K)},
    "krum": {"n_byzantine": 1},
    "cr_mogm": {"weighting": covjax.upgrad()},
    "trimmed_mean": {"trim": 1},
    "moco": {"num_params": 8},
    "excess_mtl": {"num_params": 8},
}
# The argument that a bare `"value"` in a table cell sets.
BARE_OPTION = {"mgda": "normalization", "softadapt": "variant"}
FACT_COLUMNS = {
    "Σ α": lambda p: p.weights_sum,
    "loss × c": lambda p: p.loss_scale,
    "losses": lambda p: "> 0" if p.positive_losses else "any",
}


def scheme_table() -> list[dict[str, str]]:
    text = SCHEME_PAGE.read_text()
    table = text[text.index("| constructor |", text.index("# Schemes")) :]
    lines = table[: table.index("\n\n")].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def variants(constructor: str, cell: str) -> list[tuple[dict, str]]:
    """``(arguments, fact)`` for each "(`option`, ...: fact)" note in a cell."""
    found = []
    for options, fact in re.findall(r"\(([^():]*`[^():]*): ([^()]*)\)", cell):
        for option in re.findall(r"`([^`]*)`", options):
            if "=" in option:
                key, value = option.split("=", 1)
                found.append(({key: ast.literal_eval(value)}, fact))
            else:
                found.append(({BARE_OPTION[constructor]: ast.literal_eval(option)}, fact))
    return found


def test_scheme_table_matches_the_declared_facts() -> None:
    rows = scheme_table()
    listed = set()
    for row in rows:
        name = re.match(r"`(\w+)\(", row["constructor"]).group(1)
        listed.add(name)
        constructor = getattr(covjax, name)
        default = constructor(**REQUIRED.get(name, {})).properties
        for column, fact_of in FACT_COLUMNS.items():
            cell = row[column]
            assert cell.split(" (")[0] == fact_of(default), (name, column, cell)
            for arguments, fact in variants(name, cell):
                scheme = constructor(**{**REQUIRED.get(name, {}), **arguments})
                assert fact == fact_of(scheme.properties), (name, column, arguments)
    # Every public scheme constructor has a row.
    constructors = {
        name
        for name in covjax.__all__
        if callable(getattr(covjax, name))
        and name[0].islower()
        and getattr(getattr(covjax, name), "__annotations__", {}).get("return") == "Weighting"
    }
    assert constructors - {"make_weighting", "stateless"} == listed, constructors ^ listed
