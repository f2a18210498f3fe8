"""covjax.graddrop against its float64 oracle, and its contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jacobian_scheme_cases import K, P, check_value_and_grad, random_jacobian, run_steps64
from oracles import jacobian_aggregators as oracle

import covjax
from covjax._src.graddrop import uniform_draws


@pytest.mark.parametrize(
    "leak", [0.0, 0.3, np.random.default_rng(9).uniform(size=K)], ids=["none", "scalar", "per_loss"]
)
def test_matches_oracle_in_float64(leak) -> None:
    J = random_jacobian(1)
    outputs, state = run_steps64(covjax.graddrop(leak=leak, seed=4), [J, J])
    directions = [out.direction for out in outputs]
    weights = outputs[-1].weights
    key = jax.random.PRNGKey(4)
    for direction in directions:  # a new draw every step, from the key in the state
        with jax.enable_x64(True):
            key, uniform = uniform_draws(key, P, jnp.float64)
        want = oracle.graddrop(J, np.asarray(uniform), leak)
        np.testing.assert_allclose(direction, want, rtol=1e-12, atol=1e-12 * np.abs(J).max())
    assert not np.array_equal(directions[0], directions[1])
    np.testing.assert_array_equal(weights, np.ones(K, np.float32))
    assert int(state.count) == 2


@pytest.mark.parametrize("leak", [0.0, 0.4], ids=["none", "scalar"])
def test_batch_separated_matches_oracle_in_float64(leak) -> None:
    rng = np.random.default_rng(11)
    k, batch = 4, 5
    # Two activations: ReLU-like (exact zeros: sign 0) and signed, one of them 3-D.
    activations = [np.maximum(rng.normal(size=(batch, 6)), 0.0), rng.normal(size=(batch, 2, 3))]
    per_grads = [rng.normal(size=(k, *a.shape)) for a in activations]
    J = np.concatenate([g.reshape(k, -1) for g in per_grads], axis=1)
    scheme = covjax.graddrop(leak=leak, seed=5, batch_separated=True)
    assert covjax.FEATURE_MAPS in scheme.requires
    with jax.enable_x64(True):
        losses = jnp.ones(k, jnp.float64)
        out, _ = scheme.update(
            losses,
            scheme.init(losses),
            jacobian=J,
            feature_maps=[jnp.asarray(a) for a in activations],
        )
        _, uniform = uniform_draws(jax.random.PRNGKey(5), 6 + 6, jnp.float64)
    flat = [g.reshape(k, batch, -1) for g in per_grads]
    maps = [a.reshape(batch, -1) for a in activations]
    want = oracle.graddrop_batch_separated(flat, maps, np.asarray(uniform), leak)
    np.testing.assert_allclose(out.direction, want, rtol=1e-12, atol=1e-12 * np.abs(J).max())


def test_batch_separated_on_a_marked_activation_end_to_end() -> None:
    # value_and_grad hands GradDrop z's values; the trunk is pulled back from its direction.
    rng = np.random.default_rng(12)
    k, batch = 3, 6
    with jax.enable_x64(True):
        params = {
            "trunk": jnp.asarray(rng.normal(size=(4, 5))),
            "heads": jnp.asarray(rng.normal(size=(k, 5))),
        }
        x = jnp.asarray(rng.normal(size=(batch, 4)))
        y = jnp.asarray(rng.normal(size=(batch,)))

        def features(p):
            return jax.nn.relu(x @ p["trunk"])  # exact zeros: sign 0

        def heads(p, z):
            return jnp.stack([jnp.mean((z @ p["heads"][i] - y * i) ** 2) for i in range(k)])

        def loss_fn(p, x, y):
            return heads(p, features(p) + p["mark"])

        z, features_vjp = jax.vjp(features, params)
        scheme = covjax.graddrop(seed=2, batch_separated=True)
        step = covjax.value_and_grad(loss_fn, scheme, wrt="mark", feature_maps=True)
        state = scheme.init(jnp.ones(k))
        _, grads = jax.jit(step)({**params, "mark": jnp.zeros_like(z)}, state, x, y)
        rows = jax.jacrev(lambda z: heads(params, z))(z)  # (K, B, F)
        _, uniform = uniform_draws(jax.random.PRNGKey(2), z.shape[1], jnp.float64)
        direction = oracle.graddrop_batch_separated(
            [np.asarray(rows)], [np.asarray(z)], np.asarray(uniform)
        ).reshape(z.shape)
        (want_trunk,) = features_vjp(jnp.asarray(direction))
        want_heads = jax.grad(lambda p: jnp.sum(heads(p, z)))(params)["heads"]
        np.testing.assert_allclose(grads["trunk"], want_trunk["trunk"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(grads["heads"], want_heads, rtol=1e-12, atol=1e-13)
        assert np.any(np.asarray(z) == 0.0)


def test_batch_separated_needs_the_feature_maps() -> None:
    scheme = covjax.graddrop(batch_separated=True)
    losses = jnp.ones(3)
    with pytest.raises(ValueError, match="needs the feature maps"):
        scheme.update(losses, scheme.init(losses), jacobian=jnp.ones((3, 8)))
    with pytest.raises(ValueError, match=r"do not match the Jacobian's 8 columns"):
        scheme.update(
            losses, scheme.init(losses), jacobian=jnp.ones((3, 8)), feature_maps=[jnp.ones((2, 3))]
        )
    step = covjax.value_and_grad(lambda p, x: jnp.stack([p["w"] @ x] * 3), scheme, wrt="w")
    with pytest.raises(ValueError, match="FEATURE_MAPS"):
        step({"w": jnp.ones(2)}, scheme.init(losses), jnp.ones(2))


def test_full_leak_is_the_sum_and_agreeing_signs_pass() -> None:
    J = random_jacobian(2, k=4, p=9)
    direction = run_steps64(covjax.graddrop(leak=1.0), [J])[0][0].direction
    np.testing.assert_allclose(direction, J.sum(axis=0), rtol=1e-12)
    positive = np.abs(J)  # purity 1 everywhere: every component is kept
    direction = run_steps64(covjax.graddrop(), [positive])[0][0].direction
    np.testing.assert_allclose(direction, positive.sum(axis=0), rtol=1e-12)
    dead = np.zeros((4, 9))
    direction = run_steps64(covjax.graddrop(), [dead])[0][0].direction
    np.testing.assert_array_equal(direction, np.zeros(9))


def test_keeps_one_sign_per_coordinate() -> None:
    J = random_jacobian(3, k=6, p=50).astype(np.float32)
    scheme = covjax.graddrop()
    losses = jnp.ones(6)
    out, _ = scheme.update(losses, scheme.init(losses), jacobian=J)
    positive_sum, negative_sum = np.where(J > 0, J, 0).sum(0), np.where(J < 0, J, 0).sum(0)
    # Each coordinate is the sum of its positive or of its negative components (float32 sums).
    tolerance = 8 * 1.2e-7 * np.abs(J).sum(0)
    chose_positive = np.abs(out.direction - positive_sum) <= tolerance
    chose_negative = np.abs(out.direction - negative_sum) <= tolerance
    assert np.all(chose_positive | chose_negative)


def test_vmaps_over_leak() -> None:
    J = random_jacobian(4, k=5, p=30)
    leaks = jnp.array([0.0, 0.5, 1.0])

    def direction(leak):
        scheme = covjax.graddrop(leak=leak, seed=1)
        losses = jnp.ones(5)
        return scheme.update(losses, scheme.init(losses), jacobian=jnp.asarray(J))[0].direction

    with jax.enable_x64(True):
        swept = np.asarray(jax.jit(jax.vmap(direction))(leaks))
        _, uniform = uniform_draws(jax.random.PRNGKey(1), 30, jnp.float64)
    for index, leak in enumerate(np.asarray(leaks)):
        want = oracle.graddrop(J, np.asarray(uniform), float(leak))
        np.testing.assert_allclose(swept[index], want, rtol=1e-12, atol=1e-12)


def test_rejected_step_keeps_the_key() -> None:
    scheme = covjax.graddrop()
    losses = jnp.ones(3)
    state = scheme.init(losses)
    out, new_state = jax.jit(scheme.update)(
        losses, state, jacobian=jnp.ones((3, 4)).at[0, 0].set(jnp.nan)
    )
    np.testing.assert_array_equal(out.direction, np.zeros(4))
    np.testing.assert_array_equal(new_state.inner.key, state.inner.key)
    assert not covjax.step_accepted(state, new_state)


def test_leak_of_the_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"leak has shape \(2,\).*\(3,\)"):
        covjax.graddrop(leak=jnp.ones(2)).init(jnp.ones(3))


def test_value_and_grad_end_to_end() -> None:
    check_value_and_grad(covjax.graddrop(leak=0.2, seed=3))
