"""Learning-rate annealing (Wang, Teng, Perdikaris, 2021): both forms against float64 oracles,
the Jacobian from covjax's engine, edge cases and sweeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import pinn_balancers as oracle
from pinn_support import (
    assert_close_to_oracle,
    assert_vmap_sweep_over_alpha,
    gramians_of,
    random_jacobians,
    run_gradients,
)

import covjax


@pytest.mark.parametrize(
    ("alpha", "reference", "update_every"), [(0.9, 0, 1), (0.5, 3, 4), (0.0, 31, 1)]
)
def test_max_mean_form_matches_numpy_oracle(alpha: float, reference: int, update_every: int):
    jacobians = random_jacobians(seed=reference)
    scheme = covjax.lr_annealing(alpha, reference=reference, update_every=update_every)
    assert scheme.requires == {covjax.JACOBIAN}
    got = run_gradients(scheme, "jacobian", jnp.asarray(jacobians))
    assert_close_to_oracle(
        got, oracle.lr_annealing_max_mean(jacobians, alpha, reference, update_every)
    )


@pytest.mark.parametrize(("alpha", "update_every"), [(0.9, 1), (0.3, 5)])
def test_grad_norm_form_matches_numpy_oracle(alpha: float, update_every: int) -> None:
    gramians = gramians_of(random_jacobians(seed=7))
    scheme = covjax.lr_annealing(alpha, form="grad_norm", update_every=update_every)
    assert scheme.requires == {covjax.GRAMIAN}
    got = run_gradients(scheme, "gramian", jnp.asarray(gramians))
    assert_close_to_oracle(got, oracle.lr_annealing_grad_norm(gramians, alpha, update_every))


def test_a_pinn_trained_through_value_and_grad() -> None:
    """A 1-D Poisson PINN (residual and boundary losses): value_and_grad feeds the Jacobian, the
    weights follow the oracle on the same Jacobian, the gradient is Σ λ_i ∇L_i."""
    rng = np.random.default_rng(0)
    params = {
        "hidden": jnp.asarray(rng.normal(size=(1, 16)), jnp.float32),
        "out": jnp.asarray(rng.normal(size=(16,)) / 4, jnp.float32),
    }
    points = jnp.linspace(0.0, 1.0, 32)

    def u(p, x):
        return jnp.tanh(x * p["hidden"][0]) @ p["out"]

    def losses_fn(p):
        u_xx = jax.vmap(jax.grad(jax.grad(lambda x: u(p, x))))(points)
        residual = jnp.mean((u_xx + jnp.pi**2 * jnp.sin(jnp.pi * points)) ** 2)
        boundary = 100.0 * (u(p, 0.0) ** 2 + u(p, 1.0) ** 2)
        return jnp.stack([residual, boundary])

    scheme = covjax.lr_annealing()
    step = jax.jit(covjax.value_and_grad(losses_fn, scheme))
    state = scheme.init(jnp.ones(2))
    jacobians, weights = [], []
    for _ in range(3):
        _, jacobian, _ = covjax.per_loss_jacobian(losses_fn, params)
        jacobians.append(
            np.concatenate([np.reshape(leaf, (2, -1)) for leaf in jax.tree.leaves(jacobian)], 1)
        )
        out, grads = step(params, state)
        assert bool(covjax.step_accepted(state, out.state))
        expected = jax.grad(lambda p, w=out.weights: covjax.weighted_sum(losses_fn(p), w))(params)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
            # The same float32 backward pass, weighted before or after: a few roundings.
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        weights.append(np.asarray(out.weights))
        params = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
        state = out.state
    want = oracle.lr_annealing_max_mean(np.stack(jacobians), alpha=0.9)
    # The engine's and per_loss_jacobian's float32 Jacobians: the max/mean of 32 entries.
    np.testing.assert_allclose(np.stack(weights), want, rtol=1e-5)


def test_a_vanishing_gradient_gets_a_bounded_weight() -> None:
    jacobian = jnp.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [1e-3, 0.0, 0.0]])
    scheme = covjax.lr_annealing(alpha=0.0)
    weights, _ = scheme.update(jnp.ones(3), scheme.init(jnp.ones(3)), jacobian=jacobian)
    # λ̂ = max|∇L_r| / max(mean|∇L_i|, eps32 max|∇L_r|): capped at 1/eps32 (float32 division).
    cap = 1 / np.finfo(np.float32).eps
    np.testing.assert_allclose(weights, [1.0, cap, 2.0 / (1e-3 / 3)], rtol=1e-6)
    norms = covjax.lr_annealing(alpha=0.0, form="grad_norm")
    weights, _ = norms.update(jnp.ones(2), norms.init(jnp.ones(2)), gramian=jnp.zeros((2, 2)))
    np.testing.assert_array_equal(weights, [1.0, 1.0])  # 0/0: the neutral estimate


def test_a_non_finite_jacobian_is_rejected() -> None:
    scheme = covjax.lr_annealing()
    state = scheme.init(jnp.ones(2))
    weights, new_state = scheme.update(
        jnp.ones(2), state, jacobian=jnp.array([[1.0, jnp.nan], [1.0, 2.0]])
    )
    assert not bool(covjax.step_accepted(state, new_state))
    np.testing.assert_array_equal(weights, [0.5, 0.5])  # uniform before any accepted step


@pytest.mark.parametrize("form", ["max_mean", "grad_norm"])
def test_vmap_sweep_over_alpha(form: str) -> None:
    jacobians = random_jacobians(seed=9, steps=12, k=5)
    keyword, gradients = (
        ("jacobian", jacobians) if form == "max_mean" else ("gramian", gramians_of(jacobians))
    )
    assert_vmap_sweep_over_alpha(
        lambda alpha: covjax.lr_annealing(alpha, form=form), keyword, gradients
    )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: covjax.lr_annealing(alpha=1.0), "alpha must lie in"),
        (lambda: covjax.lr_annealing(form="max"), "form must be"),
        (lambda: covjax.lr_annealing(reference=-1), "reference must be"),
        (lambda: covjax.lr_annealing(update_every=0), "update_every must be"),
        (
            lambda: covjax.lr_annealing(reference=2).update(
                jnp.ones(2),
                covjax.lr_annealing(reference=2).init(jnp.ones(2)),
                jacobian=jnp.ones((2, 3)),
            ),
            "reference 2 is not one of the 2 losses",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
