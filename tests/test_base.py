"""The weighting API: loss structures, errors, weighted_sum, value_and_grad, checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from precision import assert_trees_close64

import covjax
from covjax._src import base


def test_vector_and_pytree_losses() -> None:
    scheme = covjax.cov_weighting()
    vector_state = scheme.init(jnp.ones(4))
    weights, _ = scheme.update(jnp.arange(1.0, 5.0), vector_state)
    assert weights.shape == (4,)
    losses = {"l1": {"left": jnp.float32(1.0), "right": jnp.float32(2.0)}, "ssim": jnp.float32(3.0)}
    state = scheme.init(losses)
    weights, _ = scheme.update(losses, state)
    assert jax.tree.structure(weights) == jax.tree.structure(losses)
    assert covjax.loss_names(losses) == ("l1/left", "l1/right", "ssim")
    assert set(covjax.named(weights)) == {"l1/left", "l1/right", "ssim"}


def test_structure_errors_at_trace_time() -> None:
    scheme = covjax.cov_weighting()
    state = scheme.init({"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match="initialised with 2 losses named"):
        jax.jit(scheme.update)({"a": 1.0, "c": 2.0}, state)
    with pytest.raises(ValueError, match="initialised with"):
        scheme.update(jnp.ones(2), state)
    with pytest.raises(ValueError, match=r"loss 'b' has shape \(3,\)"):
        scheme.init({"a": 1.0, "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="zero losses"):
        scheme.init({})
    with pytest.raises(ValueError, match="empty loss vector"):
        scheme.init(jnp.ones(0))
    with pytest.raises(TypeError, match="state returned by init"):
        scheme.update(jnp.ones(2), None)
    with pytest.raises(ValueError, match="a loss must be a scalar"):
        scheme.init(jnp.ones((2, 2)))


def test_stateless_schemes_keep_optax_empty_state() -> None:
    losses = jnp.array([1.0, 2.0, 3.0])
    gramian = jnp.diag(jnp.array([1.0, 4.0, 9.0]))
    stateless = {
        "equal_weighting": covjax.equal_weighting(),
        "static_weighting": covjax.static_weighting(jnp.ones(3)),
        "gls": covjax.gls(),
        "mgda": covjax.mgda(),
        "imtl_g": covjax.imtl_g(),
        "aligned_mtl": covjax.aligned_mtl(),
    }
    for name, scheme in stateless.items():
        state = scheme.init(losses)
        assert state.inner == optax.EmptyState(), name
        _, new_state = jax.jit(scheme.update)(losses, state, gramian)
        assert new_state.inner == optax.EmptyState(), name
        assert int(new_state.count) == 1, name
    # Two schemes with the same (empty) inner state still tell their states apart.
    mgda_state = stateless["mgda"].init(losses)
    with pytest.raises(TypeError, match=r"made by covjax\.mgda's init, not by covjax\.imtl_g"):
        stateless["imtl_g"].update(losses, mgda_state, gramian)
    # A stateful scheme rejects an empty state, naming both.
    with pytest.raises(TypeError, match=r"covjax\.cov_weighting.*made by covjax\.mgda"):
        covjax.cov_weighting().update(losses, mgda_state)
    with pytest.raises(TypeError, match=r"covjax\.cov_weighting: the state holds a EmptyState"):
        covjax.cov_weighting().update(losses, mgda_state.replace(scheme=""))


def test_weighted_sum_stops_gradients_through_weights() -> None:
    losses = {"a": jnp.float32(2.0), "b": jnp.float32(3.0)}
    value, grad = jax.value_and_grad(lambda w: covjax.weighted_sum(losses, w))(
        {"a": jnp.float32(0.25), "b": jnp.float32(0.75)}
    )
    assert float(value) == pytest.approx(2.75)
    assert float(grad["a"]) == 0.0 and float(grad["b"]) == 0.0
    with pytest.raises(ValueError, match="weights are"):
        covjax.weighted_sum(losses, jnp.ones(3))


def _pytree_loss_fn(params: dict, x: jax.Array) -> dict:
    y = x @ params["w"]
    return {
        "fit": jnp.mean((y - 1.0) ** 2),
        "small": 1e-3 * jnp.mean(params["w"] ** 2),
        "abs": jnp.mean(jnp.abs(y)),
    }


def test_value_and_grad_equals_grad_of_weighted_sum() -> None:
    scheme = covjax.cov_weighting()
    # An identity, so in float64 (tests/precision.py): float32 would compare summation orders.
    with jax.enable_x64(True):
        params = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, 2), jnp.float64)}
        x = jax.random.normal(jax.random.PRNGKey(1), (5, 3), jnp.float64)
        state = scheme.init(_pytree_loss_fn(params, x))
        step = jax.jit(covjax.value_and_grad(_pytree_loss_fn, scheme))
        for _ in range(4):
            out, grads = step(params, state, x)
            state = out.state
            want_total, want_grads = jax.value_and_grad(
                lambda p, w=out.weights: covjax.weighted_sum(_pytree_loss_fn(p, x), w)
            )(params)
            assert_trees_close64((out.total, grads), (want_total, want_grads))
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert int(state.count) == 4


def test_value_and_grad_has_aux() -> None:
    scheme = (
        covjax.equal_weighting() if hasattr(covjax, "equal_weighting") else covjax.cov_weighting()
    )

    def loss_fn(p, x):
        losses = _pytree_loss_fn(p, x)
        return losses, {"prediction_mean": jnp.mean(x @ p["w"])}

    params = {"w": jnp.ones((3, 2))}
    x = jnp.ones((4, 3))
    state = scheme.init(loss_fn(params, x)[0])
    out, _ = covjax.value_and_grad(loss_fn, scheme, has_aux=True)(params, state, x)
    assert float(out.aux["prediction_mean"]) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="has_aux=True"):
        covjax.value_and_grad(_pytree_loss_fn, scheme, has_aux=True)(params, state, x)


class TwoHeads(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32) -> None:
        kinds = {"dtype": dtype, "param_dtype": dtype}
        self.trunk = nnx.Linear(4, 8, rngs=rngs, **kinds)
        self.norm = nnx.BatchNorm(8, rngs=rngs, **kinds)
        self.head_a = nnx.Linear(8, 1, rngs=rngs, **kinds)
        self.head_b = nnx.Linear(8, 1, rngs=rngs, **kinds)
        # flax keeps BatchNorm's running statistics in float32 whatever param_dtype is.
        for statistic in (self.norm.mean, self.norm.var):
            statistic.value = statistic.value.astype(dtype)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nnx.relu(self.norm(self.trunk(x)))
        return self.head_a(h)[:, 0], self.head_b(h)[:, 0]


def _module_losses(model: TwoHeads, x: jax.Array, y: jax.Array) -> dict:
    a, b = model(x)
    return {"a": jnp.mean((a - y) ** 2), "b": jnp.mean((b + 100.0 * y) ** 2)}


def test_nnx_module_step_matches_nnx_grad_and_updates_batch_stats() -> None:
    # An identity, so in float64 (tests/precision.py): float32 would compare summation orders.
    with jax.enable_x64(True):
        model = TwoHeads(nnx.Rngs(0), dtype=jnp.float64)
        x = jax.random.normal(jax.random.PRNGKey(2), (16, 4), jnp.float64)
        y = jnp.sin(x[:, 0])
        scheme = covjax.cov_weighting()
        state = scheme.init(_module_losses(model, x, y))
        reference_model = nnx.clone(model)
        batch_mean_before = np.asarray(model.norm.mean[...]).copy()

        @nnx.jit
        def grad_step(model, state, x, y):
            return covjax.value_and_grad(_module_losses, scheme)(model, state, x, y)

        out, grads = grad_step(model, state, x, y)
        want = nnx.grad(lambda m: covjax.weighted_sum(_module_losses(m, x, y), out.weights))(
            reference_model
        )
        assert jax.tree.structure(grads) == jax.tree.structure(want)
        # Relative to the largest gradient entry: the bias before BatchNorm has a true
        # gradient of 0, so its two values are rounding noise of the terms that cancelled.
        largest = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(want))
        assert_trees_close64(grads, want, scale=largest)
        # Batch statistics were updated in place, as nnx.grad does.
        assert not np.allclose(np.asarray(model.norm.mean[...]), batch_mean_before)
        assert_trees_close64(model.norm.mean[...], reference_model.norm.mean[...])

        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

        @nnx.jit
        def train_step(model, optimizer, state, x, y):
            out, grads = covjax.value_and_grad(_module_losses, scheme)(model, state, x, y)
            optimizer.update(model, grads)
            return out

        for _ in range(3):
            out = train_step(model, optimizer, out.state, x, y)
    assert int(out.state.count) == 4


def test_no_host_transfers_inside_the_step() -> None:
    scheme = covjax.cov_weighting(decay=0.9)
    params = {"w": jnp.ones((3, 2))}
    x = jnp.ones((4, 3))
    state = scheme.init(_pytree_loss_fn(params, x))
    step = jax.jit(covjax.value_and_grad(_pytree_loss_fn, scheme))
    step(params, state, x)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            out, _ = step(params, state, x)
            state = out.state


def test_orbax_restore_mid_run_continues_identically(tmp_path) -> None:
    rng = np.random.default_rng(0)
    trace = jnp.asarray(rng.lognormal(size=(30, 6)).astype(np.float32))
    scheme = covjax.cov_weighting(decay=0.95)
    update = jax.jit(scheme.update)
    state = scheme.init(trace[0])
    uninterrupted = []
    for t, losses in enumerate(trace):
        weights, state = update(losses, state)
        uninterrupted.append(weights)
        if t == 14:
            with ocp.StandardCheckpointer() as checkpointer:
                checkpointer.save(tmp_path / "weighting", state)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, scheme.init(trace[0]))
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "weighting", abstract)
    assert isinstance(restored, covjax.WeightingState)
    for t in range(15, 30):
        weights, restored = update(trace[t], restored)
        np.testing.assert_array_equal(weights, uninterrupted[t])


def _sign_mean_scheme() -> covjax.Weighting:
    """A DIRECTION scheme for the contract: the mean gradient signed by the majority sign."""

    def update_fn(losses, inner, count, jacobian):
        del count
        direction = jnp.mean(jacobian, axis=0) * jnp.sign(jnp.sum(jnp.sign(jacobian), axis=0))
        return jnp.full(losses.shape, 1.0 / losses.shape[0]), inner, direction

    return covjax.make_weighting(
        lambda losses: optax.EmptyState(),
        update_fn,
        name="sign_mean",
        requires={covjax.JACOBIAN, covjax.DIRECTION},
    )


def test_direction_scheme_contract() -> None:
    scheme = _sign_mean_scheme()
    losses = jnp.array([1.0, 2.0, 3.0])
    state = scheme.init(losses)
    jacobian = jnp.array([[1.0, -2.0], [3.0, 2.0], [2.0, 2.0]])
    out, new_state = jax.jit(scheme.update)(losses, state, jacobian=jacobian)
    assert isinstance(out, covjax.Aggregation)
    np.testing.assert_allclose(out.direction, [2.0, 2.0 / 3.0], rtol=2e-7)  # one float32 division
    assert covjax.step_accepted(state, new_state)
    # A non-finite Jacobian entry is rejected like a non-finite loss: zero direction, state kept.
    out, rejected = scheme.update(losses, state, jacobian=jacobian.at[0, 1].set(jnp.nan))
    np.testing.assert_array_equal(out.direction, [0.0, 0.0])
    assert not covjax.step_accepted(state, rejected)
    with pytest.raises(ValueError, match="needs the per-loss gradients"):
        scheme.update(losses, state)
    with pytest.raises(ValueError, match=r"jacobian has shape \(2, 2\), expected \(3, P\)"):
        scheme.update(losses, state, jacobian=jacobian[:2])
    with pytest.raises(ValueError, match="must also require the JACOBIAN"):
        covjax.make_weighting(lambda x: (), lambda *a: a, name="x", requires={covjax.DIRECTION})


def test_jacobian_finiteness_test_when_its_sum_overflows() -> None:
    # One sum decides, and the entry-wise test runs when the sum is not finite: finite entries
    # whose sum overflows float32 still pass, an inf or a NaN among them does not.
    huge = jnp.full((3, 4), 3e38, jnp.float32)
    all_finite = jax.jit(base._all_finite)
    assert bool(all_finite(huge))
    assert not bool(all_finite(huge.at[2, 1].set(jnp.inf)))
    assert not bool(all_finite(huge.at[0, 3].set(jnp.nan)))
    assert not bool(all_finite(jnp.ones((3, 4)).at[1, 1].set(-jnp.inf)))


#: Every per-loss-gradient scheme, for a 3×4 Jacobian.
JACOBIAN_SCHEMES = {
    "trimmed_mean": lambda: covjax.trimmed_mean(1),
    "graddrop": covjax.graddrop,
    "m_config": lambda: covjax.conflict_free(momentum=True, num_params=4),
    "moco": lambda: covjax.moco(num_params=4),
    "excess_mtl": lambda: covjax.excess_mtl(num_params=4),
    "lr_annealing": covjax.lr_annealing,
    "cr_mogm": lambda: covjax.cr_mogm(covjax.excess_mtl(num_params=4)),
}


@pytest.mark.parametrize("name", sorted(JACOBIAN_SCHEMES))
def test_non_finite_jacobian_never_reaches_the_state(name: str) -> None:
    # The Jacobian reaches the scheme uncleaned (no K×P copy): a rejected step must still
    # leave every state leaf as it was, and the next step must be the one without it.
    scheme = JACOBIAN_SCHEMES[name]()
    assert covjax.JACOBIAN in scheme.requires
    losses = jnp.array([1.0, 2.0, 3.0])
    jacobian = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    update = jax.jit(scheme.update)
    _, state = update(losses, scheme.init(losses), jacobian=jacobian)
    expected = update(losses, state, jacobian=2.0 * jacobian)
    for bad in (jnp.nan, jnp.inf):
        out, rejected = update(losses, state, jacobian=jacobian.at[1, 2].set(bad))
        assert not covjax.step_accepted(state, rejected)
        jax.tree.map(np.testing.assert_array_equal, rejected, state)
        if isinstance(out, covjax.Aggregation):
            np.testing.assert_array_equal(out.direction, np.zeros(4))
        after = update(losses, rejected, jacobian=2.0 * jacobian)
        jax.tree.map(np.testing.assert_array_equal, after, expected)
