"""The per-loss gradient engine against Python loops of jax.grad, and value_and_grad with it."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import covjax
from covjax import gradients

NAMES = ("depth", "edges", "normals")  # covjax.loss_names order (sorted dict keys)
K = len(NAMES)


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "encoder": {
            "w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(6,)) * 0.1, jnp.float32),
        },
        "heads": {"w": jnp.asarray(rng.normal(size=(K, 6, 2)) * 0.5, jnp.float32)},
    }


def make_batch(seed: int = 1, size: int = 8) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(size, 4)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(size, 2)), jnp.float32)
    return x, y


def encoder(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    del y
    return jnp.tanh(x @ params["encoder"]["w"] + params["encoder"]["b"])


def heads(params: dict, z: jax.Array, x: jax.Array, y: jax.Array) -> dict:
    del x
    predictions = jnp.einsum("bd,kdo->kbo", z, params["heads"]["w"])
    return {
        "depth": jnp.mean((predictions[0] - y) ** 2),
        "normals": jnp.mean(jnp.abs(predictions[1] + y)),
        "edges": jnp.mean(jnp.cos(predictions[2] * y)),
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> dict:
    return heads(params, encoder(params, x, y), x, y)


def flat(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def loop_gradients(fn, primal, *args) -> list[dict[str, np.ndarray]]:
    """One jax.grad per loss: the slow, obviously right way."""
    return [flat(jax.grad(lambda p, name=name: fn(p, *args)[name])(primal)) for name in NAMES]


def loop_gramian(per_loss: list[dict[str, np.ndarray]], keys) -> np.ndarray:
    rows = np.stack([np.concatenate([g[key].ravel() for key in keys]) for g in per_loss])
    rows = rows.astype(np.float64)
    return rows @ rows.T


PARAMS = make_params()
X, Y = make_batch()
LOOP = loop_gradients(loss_fn, PARAMS, X, Y)


def test_jacobian_matches_loop_of_grads() -> None:
    _, jacobian, aux = jax.jit(functools.partial(gradients.per_loss_jacobian, loss_fn))(
        PARAMS, X, Y
    )
    assert aux is None
    assert set(jacobian) == {"encoder/w", "encoder/b", "heads/w"}
    for i in range(K):
        for key, rows in jacobian.items():
            np.testing.assert_allclose(rows[i], LOOP[i][key], rtol=1e-5, atol=1e-6)
    _, gramian, _ = gradients.per_loss_gramian(loss_fn, PARAMS, X, Y)
    np.testing.assert_allclose(gramian, loop_gramian(LOOP, sorted(jacobian)), rtol=1e-5)


@pytest.mark.parametrize(
    "wrt, keys",
    [
        ("encoder", ["encoder/b", "encoder/w"]),  # a path prefix
        (r".*/w$", ["encoder/w", "heads/w"]),  # a regex
        (lambda path, leaf: leaf.ndim == 1, ["encoder/b"]),  # a predicate
        (["encoder/b", "heads"], ["encoder/b", "heads/w"]),  # a union
    ],
)
def test_subset_of_parameters(wrt, keys: list[str]) -> None:
    _, jacobian, _ = gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y, wrt=wrt)
    assert sorted(jacobian) == keys
    for key in keys:
        np.testing.assert_allclose(jacobian[key], [g[key] for g in LOOP], rtol=1e-5, atol=1e-6)
    _, gramian, _ = gradients.per_loss_gramian(loss_fn, PARAMS, X, Y, wrt=wrt)
    np.testing.assert_allclose(gramian, loop_gramian(LOOP, keys), rtol=1e-5, atol=1e-7)


def test_representation_gradients() -> None:
    z = encoder(PARAMS, X, Y)
    expected = [jax.grad(lambda rep, n=n: heads(PARAMS, rep, X, Y)[n])(z) for n in NAMES]
    _, jacobian, _ = gradients.per_loss_jacobian(heads, PARAMS, X, Y, representation=encoder)
    assert list(jacobian) == ["representation"]
    np.testing.assert_allclose(jacobian["representation"], np.stack(expected), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 2, K])
def test_chunk_sizes_agree(chunk_size: int) -> None:
    full = gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y)[1]
    jacobian_fn = functools.partial(gradients.per_loss_jacobian, loss_fn, chunk_size=chunk_size)
    chunked = jax.jit(jacobian_fn)(PARAMS, X, Y)[1]
    chex.assert_trees_all_close(chunked, full, rtol=1e-6, atol=1e-7)
    # The Gramian path (which may permute non-K axes) chunks the same way.
    gramian_fn = functools.partial(gradients.per_loss_gramian, loss_fn, chunk_size=chunk_size)
    chunked_gramian = jax.jit(gramian_fn)(PARAMS, X, Y)[1]
    np.testing.assert_allclose(chunked_gramian, loop_gramian(LOOP, sorted(full)), rtol=1e-5)


def test_vector_and_low_precision_losses() -> None:
    def vector_loss(params, x, y):
        losses = loss_fn(params, x, y)
        return jnp.stack([losses[n] for n in NAMES]).astype(jnp.bfloat16)

    losses, jacobian, _ = gradients.per_loss_jacobian(vector_loss, PARAMS, X, Y, wrt="heads")
    assert losses.shape == (K,) and jacobian["heads/w"].shape == (K, K, 6, 2)
    np.testing.assert_allclose(
        np.asarray(jacobian["heads/w"], np.float32),
        [g["heads/w"] for g in LOOP],
        rtol=2e-2,
        atol=1e-2,
    )


# ----------------------------------------------------------------------------- value_and_grad


def expected_step(weights: np.ndarray) -> dict[str, np.ndarray]:
    """∇ Σ w_i L_i, by jax.grad of the whole network."""

    def total(params):
        losses = loss_fn(params, X, Y)
        return sum(float(w) * losses[n] for w, n in zip(weights, NAMES, strict=True))

    return flat(jax.grad(total)(PARAMS))


@pytest.mark.parametrize("wrt", [None, "encoder"])
def test_value_and_grad_with_mgda(wrt) -> None:
    step = jax.jit(covjax.value_and_grad(loss_fn, covjax.mgda(), wrt=wrt))
    scheme_state = covjax.mgda().init(loss_fn(PARAMS, X, Y))
    out, grads = step(PARAMS, scheme_state, X, Y)
    keys = sorted(LOOP[0]) if wrt is None else ["encoder/b", "encoder/w"]
    expected_weights = covjax.min_norm_solver(jnp.asarray(loop_gramian(LOOP, keys), jnp.float32))
    weights = np.array([out.weights[n] for n in NAMES])
    np.testing.assert_allclose(weights, expected_weights, atol=1e-5)
    assert np.ptp(weights) > 1e-2  # not uniform: the check means something
    chex.assert_trees_all_close(flat(grads), expected_step(weights), rtol=1e-5, atol=1e-6)
    assert bool(out.accepted) and int(out.state.count) == 1


def test_value_and_grad_with_representation() -> None:
    scheme = covjax.mgda(normalization="l2")
    step = jax.jit(covjax.value_and_grad(heads, scheme, representation=encoder))
    out, grads = step(PARAMS, scheme.init(loss_fn(PARAMS, X, Y)), X, Y)
    z = encoder(PARAMS, X, Y)
    rows = np.stack(
        [np.ravel(jax.grad(lambda rep, n=n: heads(PARAMS, rep, X, Y)[n])(z)) for n in NAMES]
    ).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1)
    gramian = rows @ rows.T / np.outer(norms, norms)
    expected_weights = covjax.min_norm_solver(jnp.asarray(gramian, jnp.float32))
    weights = np.array([out.weights[n] for n in NAMES])
    np.testing.assert_allclose(weights, expected_weights, atol=1e-5)
    # One weighted backward through heads and encoder gives the full gradient.
    chex.assert_trees_all_close(flat(grads), expected_step(weights), rtol=1e-5, atol=1e-6)


def test_value_and_grad_statistics_scheme_unchanged() -> None:
    scheme = covjax.cov_weighting()
    out, grads = covjax.value_and_grad(loss_fn, scheme)(
        PARAMS, scheme.init(loss_fn(PARAMS, X, Y)), X, Y
    )
    chex.assert_trees_all_close(
        flat(grads), expected_step(np.full(K, 1.0 / K)), rtol=1e-5, atol=1e-6
    )
    # A representation works for any scheme and gives the same step.
    out2, grads2 = covjax.value_and_grad(heads, scheme, representation=encoder)(
        PARAMS, scheme.init(loss_fn(PARAMS, X, Y)), X, Y
    )
    chex.assert_trees_all_close(grads2, grads, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(out2.total, out.total)


class MultiHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.encoder = nnx.Linear(4, 6, rngs=rngs)
        self.norm = nnx.BatchNorm(6, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(6, 2, rngs=rngs) for _ in range(K)])

    def encode(self, x: jax.Array) -> jax.Array:
        return self.norm(jnp.tanh(self.encoder(x)))

    def losses(self, z: jax.Array, y: jax.Array) -> dict:
        return {n: jnp.mean((head(z) - y) ** 2) for n, head in zip(NAMES, self.heads, strict=True)}


def module_loss(model: MultiHead, x, y):
    return model.losses(model.encode(x), y)


@pytest.mark.parametrize("mode", ["subset", "representation"])
def test_value_and_grad_on_nnx_module(mode: str) -> None:
    model = MultiHead(nnx.Rngs(0))
    reference = nnx.clone(model)
    scheme = covjax.gradnorm(form="paper", learning_rate=0.1)
    if mode == "subset":
        step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.PathContains("encoder"))
        per_loss = lambda m, n: module_loss(m, X, Y)[n]  # noqa: E731
        layer = lambda grads: np.concatenate(  # noqa: E731
            [np.ravel(grads["encoder"]["kernel"].value), np.ravel(grads["encoder"]["bias"].value)]
        )
    else:
        step = covjax.value_and_grad(
            lambda m, z, x, y: m.losses(z, y), scheme, representation=lambda m, x, y: m.encode(x)
        )
    state = scheme.init(module_loss(nnx.clone(model), X, Y))
    out, grads = nnx.jit(step)(model, state, X, Y)

    # GradNorm's first step uses w(0) = 1; its state holds the next weights,
    # which depend on the Gramian's diagonal: check them against the loop.
    if mode == "subset":
        norms = [
            np.linalg.norm(layer(nnx.grad(lambda m, n=n: per_loss(m, n))(nnx.clone(reference))))
            for n in NAMES
        ]
    else:
        z = nnx.clone(reference).encode(X)
        norms = [
            np.linalg.norm(jax.grad(lambda rep, n=n: nnx.clone(reference).losses(rep, Y)[n])(z))
            for n in NAMES
        ]
    losses = np.array([out.losses[n] for n in NAMES])
    expected_next = (
        covjax.gradnorm(form="paper", learning_rate=0.1)
        .update(
            jnp.asarray(losses),
            scheme.init(jnp.asarray(losses)),
            gramian=jnp.diag(jnp.square(jnp.asarray(norms))),
        )[1]
        .inner.weights
    )
    chex.assert_trees_all_close(out.state.inner.weights, expected_next, rtol=1e-5, atol=1e-6)

    expected_grads = nnx.grad(lambda m: sum(module_loss(m, X, Y).values()))(reference)
    chex.assert_trees_all_close(
        jax.tree.map(np.asarray, grads),
        jax.tree.map(np.asarray, expected_grads),
        rtol=1e-5,
        atol=1e-6,
    )
    # BatchNorm's running statistics were updated in place, once.
    np.testing.assert_allclose(model.norm.mean.value, reference.norm.mean.value, rtol=1e-6)
    assert not np.allclose(model.norm.mean.value, 0.0)


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"selects no parameter.*encoder/w"):
        gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y, wrt="decoder")
    with pytest.raises(TypeError, match="wrt must be"):
        gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y, wrt=3)
    with pytest.raises(ValueError, match="chunk_size"):
        gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        covjax.value_and_grad(loss_fn, covjax.mgda(), chunk_size=-2)
    with pytest.raises(TypeError, match="representation"):
        covjax.value_and_grad(heads, covjax.mgda(), representation="z")
    with pytest.raises(ValueError, match="has_aux"):
        gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y, has_aux=True)


# ----------------------------------------------------------------------------- sharding


@pytest.mark.slow
def test_sharded_gradient_step_matches_single_device() -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    script = pathlib.Path(__file__).parent / "sharded_gradients_check.py"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    for scheme in ("mgda", "mgda_materialised", "gradnorm", "mgda_ub_grouped"):
        # The 8 shards sum the Gramian in another order; the min-norm solve
        # amplifies that float32 rounding a little (parameters agree to 1e-6).
        assert report[scheme]["weights"] < 5e-5, report
        assert report[scheme]["params"] < 1e-5, report
        assert report[scheme]["weight_spread"] > 1e-3, report  # not trivially uniform
