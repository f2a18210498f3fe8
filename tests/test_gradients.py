"""The per-loss gradient engine against Python loops of jax.grad, and value_and_grad with it.

These are identities, so both sides run in float64 (:mod:`precision`): in float32 they
would compare the CPU's summation orders. Weights are stored in float32 whatever the
maths (one rounding, eps32 of weights ≤ 1, see ``covjax.WeightingState``).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from precision import EPS32, assert_trees_close64, float64

import covjax
from covjax._src import gradients

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


def marked_loss(params: dict, x: jax.Array, y: jax.Array) -> dict:
    """loss_fn with z marked for MGDA-UB by a zero leaf added to it (the plain-pytree way)."""
    return heads(params, encoder(params, x, y) + params["representation"], x, y)


def with_zero_representation(params: dict, x: jax.Array, y: jax.Array) -> dict:
    return {**params, "representation": jnp.zeros_like(encoder(params, x, y))}


def without_representation(grads: dict) -> dict:
    return {key: value for key, value in grads.items() if key != "representation"}


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


@functools.cache
def float64_case() -> tuple[dict, jax.Array, jax.Array, list[dict[str, np.ndarray]]]:
    """PARAMS, X, Y in float64 and their loop of per-loss gradients (use inside x64)."""
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))
        return params, x, y, loop_gradients(loss_fn, params, x, y)


def test_jacobian_matches_loop_of_grads() -> None:
    with jax.enable_x64(True):
        params, x, y, loop = float64_case()
        _, jacobian, aux = jax.jit(functools.partial(gradients.per_loss_jacobian, loss_fn))(
            params, x, y
        )
        assert aux is None
        assert set(jacobian) == {"encoder/w", "encoder/b", "heads/w"}
        for i in range(K):
            for key, rows in jacobian.items():
                assert_trees_close64(rows[i], loop[i][key])
        _, gramian, _ = gradients.per_loss_gramian(loss_fn, params, x, y)
        assert_trees_close64(gramian, loop_gramian(loop, sorted(jacobian)))


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
    with jax.enable_x64(True):
        params, x, y, loop = float64_case()
        _, jacobian, _ = gradients.per_loss_jacobian(loss_fn, params, x, y, wrt=wrt)
        assert sorted(jacobian) == keys
        for key in keys:
            assert_trees_close64(jacobian[key], np.stack([g[key] for g in loop]))
        _, gramian, _ = gradients.per_loss_gramian(loss_fn, params, x, y, wrt=wrt)
        assert_trees_close64(gramian, loop_gramian(loop, keys))


def test_representation_gradients() -> None:
    with jax.enable_x64(True):
        params, x, y, _ = float64_case()
        z = encoder(params, x, y)
        expected = [jax.grad(lambda rep, n=n: heads(params, rep, x, y)[n])(z) for n in NAMES]
        marked = with_zero_representation(params, x, y)
        _, jacobian, _ = gradients.per_loss_jacobian(
            marked_loss, marked, x, y, wrt="representation"
        )
        assert list(jacobian) == ["representation"]
        assert_trees_close64(jacobian["representation"], np.stack(expected))


@pytest.mark.parametrize("chunk_size", [1, 2, K])
def test_chunk_sizes_agree(chunk_size: int) -> None:
    with jax.enable_x64(True):
        params, x, y, loop = float64_case()
        full = gradients.per_loss_jacobian(loss_fn, params, x, y)[1]
        jacobian_fn = functools.partial(gradients.per_loss_jacobian, loss_fn, chunk_size=chunk_size)
        assert_trees_close64(jax.jit(jacobian_fn)(params, x, y)[1], full)
        # The Gramian path (which may permute non-K axes) chunks the same way.
        gramian_fn = functools.partial(gradients.per_loss_gramian, loss_fn, chunk_size=chunk_size)
        chunked_gramian = jax.jit(gramian_fn)(params, x, y)[1]
        assert_trees_close64(chunked_gramian, loop_gramian(loop, sorted(full)))


def test_vector_and_low_precision_losses() -> None:
    def vector_loss(params, x, y):
        losses = loss_fn(params, x, y)
        return jnp.stack([losses[n] for n in NAMES]).astype(jnp.bfloat16)

    losses, jacobian, _ = gradients.per_loss_jacobian(vector_loss, PARAMS, X, Y, wrt="heads")
    assert losses.shape == (K,) and jacobian["heads/w"].shape == (K, K, 6, 2)
    np.testing.assert_allclose(
        np.asarray(jacobian["heads/w"], np.float32),
        [g["heads/w"] for g in loop_gradients(loss_fn, PARAMS, X, Y)],
        rtol=2e-2,
        atol=1e-2,
    )


# ----------------------------------------------------------------------------- value_and_grad


def expected_step(weights: np.ndarray, params: dict, x: jax.Array, y: jax.Array) -> dict:
    """∇ Σ w_i L_i, by jax.grad of the whole network."""

    def total(params):
        losses = loss_fn(params, x, y)
        return sum(float(w) * losses[n] for w, n in zip(weights, NAMES, strict=True))

    return flat(jax.grad(total)(params))


@pytest.mark.parametrize("wrt", [None, "encoder"])
def test_value_and_grad_with_mgda(wrt) -> None:
    with jax.enable_x64(True):
        params, x, y, loop = float64_case()
        step = jax.jit(covjax.value_and_grad(loss_fn, covjax.mgda(), wrt=wrt))
        scheme_state = covjax.mgda().init(loss_fn(params, x, y))
        out, grads = step(params, scheme_state, x, y)
        keys = sorted(loop[0]) if wrt is None else ["encoder/b", "encoder/w"]
        expected_weights = covjax.min_norm_solver(jnp.asarray(loop_gramian(loop, keys)))
        weights = np.array([out.weights[n] for n in NAMES])
        # The float64 solves agree to ~cond·1e-13; the stored weights (≤ 1) are float32.
        np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=EPS32)
        assert np.ptp(weights) > 1e-2  # not uniform: the check means something
        assert_trees_close64(flat(grads), expected_step(weights, params, x, y))
    assert bool(out.accepted) and int(out.state.count) == 1


def test_value_and_grad_with_representation() -> None:
    scheme = covjax.mgda(normalization="l2")
    with jax.enable_x64(True):
        params, x, y, _ = float64_case()
        step = jax.jit(covjax.value_and_grad(marked_loss, scheme, wrt="representation"))
        marked = with_zero_representation(params, x, y)
        out, grads = step(marked, scheme.init(loss_fn(params, x, y)), x, y)
        grads = without_representation(grads)
        z = encoder(params, x, y)
        rows = np.stack(
            [np.ravel(jax.grad(lambda rep, n=n: heads(params, rep, x, y)[n])(z)) for n in NAMES]
        )
        norms = np.linalg.norm(rows, axis=1)
        gramian = rows @ rows.T / np.outer(norms, norms)
        expected_weights = covjax.min_norm_solver(jnp.asarray(gramian))
        weights = np.array([out.weights[n] for n in NAMES])
        # The float64 solves agree to ~cond·1e-13; the stored weights (≤ 1) are float32.
        np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=EPS32)
        # One weighted backward through heads and encoder gives the full gradient.
        assert_trees_close64(flat(grads), expected_step(weights, params, x, y))


def test_value_and_grad_statistics_scheme_unchanged() -> None:
    scheme = covjax.cov_weighting()
    with jax.enable_x64(True):
        params, x, y, _ = float64_case()
        out, grads = covjax.value_and_grad(loss_fn, scheme)(
            params, scheme.init(loss_fn(params, x, y)), x, y
        )
        # CoV's first step: uniform weights (stored in float32), and ∇ Σ w_i L_i with them.
        weights = np.array([out.weights[n] for n in NAMES])
        np.testing.assert_array_equal(weights, np.float32(1.0 / K))
        assert_trees_close64(flat(grads), expected_step(weights, params, x, y))
        # A representation works for any scheme and gives the same step.
        out2, grads2 = covjax.value_and_grad(marked_loss, scheme, wrt="representation")(
            with_zero_representation(params, x, y), scheme.init(loss_fn(params, x, y)), x, y
        )
        assert_trees_close64(without_representation(grads2), grads)
        assert_trees_close64(out2.total, out.total)


class MultiHead(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32) -> None:
        kinds = {"dtype": dtype, "param_dtype": dtype}
        self.encoder = nnx.Linear(4, 6, rngs=rngs, **kinds)
        self.norm = nnx.BatchNorm(6, rngs=rngs, **kinds)
        self.heads = nnx.List([nnx.Linear(6, 2, rngs=rngs, **kinds) for _ in range(K)])
        # flax keeps BatchNorm's running statistics in float32 whatever param_dtype is.
        for statistic in (self.norm.mean, self.norm.var):
            statistic.value = statistic.value.astype(dtype)

    def encode(self, x: jax.Array) -> jax.Array:
        return self.norm(jnp.tanh(self.encoder(x)))

    def losses(self, z: jax.Array, y: jax.Array) -> dict:
        return {n: jnp.mean((head(z) - y) ** 2) for n, head in zip(NAMES, self.heads, strict=True)}


def module_loss(model: MultiHead, x, y):
    return model.losses(model.encode(x), y)


class PerturbedMultiHead(MultiHead):
    """MultiHead with z marked for MGDA-UB, the Flax way."""

    def encode(self, x: jax.Array) -> jax.Array:
        return self.perturb("representation", super().encode(x))


@pytest.mark.parametrize("mode", ["subset", "representation"])
def test_value_and_grad_on_nnx_module(mode: str) -> None:
    with jax.enable_x64(True):
        _, x, y, _ = float64_case()
        model_type = MultiHead if mode == "subset" else PerturbedMultiHead
        model = model_type(nnx.Rngs(0), dtype=jnp.float64)
        reference = nnx.clone(model)
        scheme = covjax.gradnorm(form="paper", learning_rate=0.1)
        if mode == "subset":
            step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.PathContains("encoder"))
            per_loss = lambda m, n: module_loss(m, x, y)[n]  # noqa: E731
            layer = lambda grads: np.concatenate(  # noqa: E731
                [
                    np.ravel(grads["encoder"]["kernel"].value),
                    np.ravel(grads["encoder"]["bias"].value),
                ]
            )
        else:
            step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.Perturbation)
        state = scheme.init(module_loss(MultiHead(nnx.Rngs(0), dtype=jnp.float64), x, y))
        out, grads = nnx.jit(step)(model, state, x, y)

        # GradNorm's first step uses w(0) = 1; its state holds the next weights,
        # which depend on the Gramian's diagonal: check them against the loop.
        if mode == "subset":
            norms = [
                np.linalg.norm(layer(nnx.grad(lambda m, n=n: per_loss(m, n))(nnx.clone(reference))))
                for n in NAMES
            ]
        else:
            z = MultiHead.encode(nnx.clone(reference), x)
            norms = [
                np.linalg.norm(jax.grad(lambda rep, n=n: nnx.clone(reference).losses(rep, y)[n])(z))
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
        # Equal float64 maths; the learned weights are kept in float32 (one rounding).
        chex.assert_trees_all_close(out.state.inner.weights, expected_next, rtol=EPS32, atol=0)

        expected_grads = nnx.grad(lambda m: sum(m.losses(MultiHead.encode(m, x), y).values()))(
            reference
        )
        assert_trees_close64(
            jax.tree.map(np.asarray, grads), jax.tree.map(np.asarray, expected_grads)
        )
        # BatchNorm's running statistics were updated in place, once.
        assert_trees_close64(model.norm.mean.value, reference.norm.mean.value)
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
    with pytest.raises(ValueError, match="gramian_examples"):
        covjax.value_and_grad(loss_fn, covjax.mgda(), gramian_examples=0)
    with pytest.raises(ValueError, match="has_aux"):
        gradients.per_loss_jacobian(loss_fn, PARAMS, X, Y, has_aux=True)


# ------------------------------------------------- schemes that need the Jacobian or a direction


def first_entry_weighting() -> covjax.Weighting:
    """A JACOBIAN scheme whose weights are the first column of J: they show J's layout."""

    def update_fn(losses, inner, count, jacobian):
        del losses, count
        return jacobian[:, 0], inner

    return covjax.make_weighting(
        lambda losses: optax.EmptyState(),
        update_fn,
        name="first_entry",
        requires={covjax.JACOBIAN},
    )


def first_loss_direction() -> covjax.Weighting:
    """A {JACOBIAN, DIRECTION} scheme: uniform weights, direction ∇L_0 + 2 ∇L_1."""

    def update_fn(losses, inner, count, jacobian):
        del count
        k = losses.shape[0]
        return jnp.full((k,), 1.0 / k), inner, jacobian[0] + 2.0 * jacobian[1]

    return covjax.make_weighting(
        lambda losses: optax.EmptyState(),
        update_fn,
        name="first_loss_direction",
        requires={covjax.JACOBIAN, covjax.DIRECTION},
    )


@pytest.mark.parametrize("wrt", [None, "encoder"])
def test_value_and_grad_hands_the_jacobian_to_the_scheme(wrt) -> None:
    with jax.enable_x64(True):
        params, x, y, loop = float64_case()
        keys = sorted(loop[0]) if wrt is None else ["encoder/b", "encoder/w"]
        scheme = first_entry_weighting()
        step = jax.jit(covjax.value_and_grad(loss_fn, scheme, wrt=wrt))
        out, grads = step(params, scheme.init(loss_fn(params, x, y)), x, y)
        # Row i of J is ∇L_i over the selected leaves in jax.tree.leaves order
        # (sorted dict keys): its first entry is that of the first selected leaf.
        weights = np.array([out.weights[n] for n in NAMES])
        first = np.array([np.ravel(g[keys[0]])[0] for g in loop])
        # The float64 gradient entry is stored as a float32 weight: one rounding.
        np.testing.assert_allclose(weights, first, rtol=EPS32, atol=0)
        assert_trees_close64(flat(grads), expected_step(weights, params, x, y))


def test_value_and_grad_uses_the_direction_for_the_selected_leaves() -> None:
    with jax.enable_x64(True):
        params, x, y, loop = float64_case()
        scheme = first_loss_direction()
        step = jax.jit(covjax.value_and_grad(loss_fn, scheme, wrt="encoder"))
        out, grads = step(params, scheme.init(loss_fn(params, x, y)), x, y)
        weights = np.array([out.weights[n] for n in NAMES])
        np.testing.assert_array_equal(weights, np.float32(1.0 / K))
        expected = expected_step(weights, params, x, y)  # the other leaves: ∇ Σ w_i L_i
        for key in ("encoder/b", "encoder/w"):
            expected[key] = loop[0][key] + 2.0 * loop[1][key]
        assert_trees_close64(flat(grads), expected)
        assert bool(out.accepted)


def test_direction_scheme_on_nnx_module() -> None:
    with jax.enable_x64(True):
        _, x, y, _ = float64_case()
        model = MultiHead(nnx.Rngs(0), dtype=jnp.float64)
        reference = nnx.clone(model)
        scheme = first_loss_direction()
        step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.PathContains("encoder"))
        state = scheme.init(module_loss(nnx.clone(model), x, y))
        out, grads = nnx.jit(step)(model, state, x, y)

        def grad_of(weights):
            def total(m):
                losses = module_loss(m, x, y).values()
                return sum(w * v for w, v in zip(weights, losses, strict=True))

            return nnx.grad(total)(nnx.clone(reference))

        # dict order of NAMES: depth, edges, normals (the losses' leaf order).
        first, second = grad_of([1.0, 0.0, 0.0]), grad_of([0.0, 1.0, 0.0])
        uniform = grad_of([float(out.weights[n]) for n in NAMES])  # 1/K stored in float32
        for name in ("kernel", "bias"):
            want = first["encoder"][name].value + 2.0 * second["encoder"][name].value
            assert_trees_close64(grads["encoder"][name].value, np.asarray(want))
        for index in range(K):
            assert_trees_close64(
                grads["heads"][index]["kernel"].value,
                np.asarray(uniform["heads"][index]["kernel"].value),
            )
        # BatchNorm's running statistics were updated in place, once.
        module_loss(reference, x, y)  # one forward pass in training mode
        assert_trees_close64(model.norm.mean.value, np.asarray(reference.norm.mean.value))
        assert not np.allclose(model.norm.mean.value, 0.0)


class PerTaskCopies(MultiHead):
    """MultiHead whose heads each read their own copy of z (one ``perturb`` per task)."""

    def losses(self, z: jax.Array, y: jax.Array) -> dict:
        return {
            n: jnp.mean((head(self.perturb(f"representation/{n}", z)) - y) ** 2)
            for n, head in zip(NAMES, self.heads, strict=True)
        }


@pytest.mark.parametrize("model_type", [PerturbedMultiHead, PerTaskCopies])
def test_direction_on_a_feature_map(model_type: type[MultiHead]) -> None:
    # With wrt=nnx.Perturbation the direction d is w.r.t. z: the encoder is pulled
    # back from d, the heads get ∇ Σ w_i L_i (LibMTL's rep_grad=True).
    with jax.enable_x64(True):
        _, x, y, _ = float64_case()
        model = model_type(nnx.Rngs(0), dtype=jnp.float64)
        reference = nnx.clone(model)
        scheme = first_loss_direction()
        step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.Perturbation)
        state = scheme.init({n: 0.0 for n in NAMES})
        out, grads = nnx.jit(step)(model, state, x, y)

        graphdef, params, rest = nnx.split(reference, nnx.Param, ...)

        def encode(p):
            return MultiHead.encode(nnx.merge(graphdef, p, rest, copy=True), x)

        def losses(p, z):
            return MultiHead.losses(nnx.merge(graphdef, p, rest, copy=True), z, y)

        z, encode_vjp = jax.vjp(encode, params)
        rows = [jax.grad(lambda rep, n=n: losses(params, rep)[n])(z) for n in NAMES]
        weights = [float(out.weights[n]) for n in NAMES]  # 1/K stored in float32
        (encoder_grads,) = encode_vjp(rows[0] + 2.0 * rows[1])
        head_grads = jax.grad(
            lambda p: sum(w * v for w, v in zip(weights, losses(p, z).values(), strict=True))
        )(params)
        for name in ("kernel", "bias"):
            assert_trees_close64(
                grads["encoder"][name].value, np.asarray(encoder_grads["encoder"][name].value)
            )
            for index in range(K):
                assert_trees_close64(
                    grads["heads"][index][name].value,
                    np.asarray(head_grads["heads"][index][name].value),
                )
        # Not the weighted sum's gradient: the direction reached the encoder.
        plain = nnx.grad(
            lambda m: sum(
                w * v for w, v in zip(weights, module_loss(m, x, y).values(), strict=True)
            )
        )(nnx.clone(reference))
        assert not np.allclose(
            grads["encoder"]["kernel"].value, plain["encoder"]["kernel"].value, atol=1e-3
        )
        # BatchNorm's running statistics were updated in place, once.
        MultiHead.encode(reference, x)
        assert_trees_close64(model.norm.mean.value, np.asarray(reference.norm.mean.value))
        assert not jax.tree.leaves(nnx.state(model, nnx.Perturbation))  # no variable added


def test_direction_on_a_feature_map_of_a_plain_pytree() -> None:
    # A zero leaf added to z marks it; feature_maps=True says so (never inferred).
    with jax.enable_x64(True):
        params, x, y, _ = float64_case()
        scheme = first_loss_direction()
        marked = with_zero_representation(params, x, y)
        state = scheme.init(loss_fn(params, x, y))
        step = covjax.value_and_grad(marked_loss, scheme, wrt="representation", feature_maps=True)
        out, grads = jax.jit(step)(marked, state, x, y)
        weights = np.array([out.weights[n] for n in NAMES])
        z, encode_vjp = jax.vjp(lambda p: encoder(p, x, y), params)
        rows = [jax.grad(lambda rep, n=n: heads(params, rep, x, y)[n])(z) for n in NAMES]
        (encoder_grads,) = encode_vjp(rows[0] + 2.0 * rows[1])
        expected = expected_step(weights, params, x, y)  # the heads: ∇ Σ w_i L_i
        expected["encoder/w"] = np.asarray(encoder_grads["encoder"]["w"])
        expected["encoder/b"] = np.asarray(encoder_grads["encoder"]["b"])
        assert_trees_close64(flat(without_representation(grads)), expected)
        # The mark's own gradient: what Σ w_i L_i sends back into z.
        weighted_rows = sum(w * row for w, row in zip(weights, rows, strict=True))
        assert_trees_close64(np.asarray(grads["representation"]), np.asarray(weighted_rows))
        # One loss's cotangent at a time: the same pull-backs, the same gradient.
        chunked = covjax.value_and_grad(
            marked_loss, scheme, wrt="representation", feature_maps=True, chunk_size=1
        )
        assert_trees_close64(jax.jit(chunked)(marked, state, x, y)[1], grads)
        # Without feature_maps the direction replaces the mark's gradient only.
        plain = covjax.value_and_grad(marked_loss, scheme, wrt="representation")
        _, plain_grads = jax.jit(plain)(marked, state, x, y)
        assert_trees_close64(
            np.asarray(plain_grads["representation"]), np.asarray(rows[0] + 2.0 * rows[1])
        )


def test_direction_on_a_feature_map_refuses_what_it_cannot_do() -> None:
    x, y = make_batch()
    model = PerturbedMultiHead(nnx.Rngs(0))
    scheme = first_loss_direction()
    state = scheme.init({n: 0.0 for n in NAMES})
    both = covjax.value_and_grad(
        module_loss, scheme, wrt=[nnx.Perturbation, nnx.PathContains("encoder")]
    )
    with pytest.raises(ValueError, match="either parameters or feature maps"):
        both(model, state, x, y)
    with pytest.raises(ValueError, match="gramian_examples"):
        covjax.value_and_grad(module_loss, scheme, wrt=nnx.Perturbation, gramian_examples=2)(
            model, state, x, y
        )
    with pytest.raises(ValueError, match="gramian_examples"):
        covjax.value_and_grad(loss_fn, scheme, feature_maps=True, gramian_examples=2)
    # On parameters selected by an NNX filter, the first examples' direction is fine.
    on_encoder = covjax.value_and_grad(
        module_loss, scheme, wrt=nnx.PathContains("encoder"), gramian_examples=2
    )
    on_encoder(model, state, x, y)
    with pytest.raises(ValueError, match="feature_maps=False"):
        covjax.value_and_grad(module_loss, scheme, wrt=nnx.Perturbation, feature_maps=False)(
            model, state, x, y
        )
    # encoder/w is a matrix product's operand, not a zero leaf added to a feature map.
    not_a_mark = covjax.value_and_grad(loss_fn, scheme, wrt="encoder/w", feature_maps=True)
    with pytest.raises(ValueError, match="encoder/w is not"):
        not_a_mark(PARAMS, state, x, y)


def test_gramian_from_the_first_examples() -> None:
    with jax.enable_x64(True):
        params, x, y, _ = float64_case()
        scheme = covjax.mgda()
        step = jax.jit(covjax.value_and_grad(loss_fn, scheme, wrt="encoder", gramian_examples=3))
        out, grads = step(params, scheme.init(loss_fn(params, x, y)), x, y)
        # The Gramian of the first 3 examples' losses; the step on the whole batch.
        keys = ["encoder/b", "encoder/w"]
        sub_batch = loop_gradients(loss_fn, params, x[:3], y[:3])
        expected_weights = covjax.min_norm_solver(jnp.asarray(loop_gramian(sub_batch, keys)))
        weights = np.array([out.weights[n] for n in NAMES])
        # The float64 solves agree to ~cond·1e-13; the stored weights (≤ 1) are float32.
        np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=EPS32)
        whole_batch = loop_gradients(loss_fn, params, x, y)
        other = covjax.min_norm_solver(jnp.asarray(loop_gramian(whole_batch, keys)))
        assert np.max(np.abs(weights - np.asarray(other))) > 1e-3  # a different estimate
        assert_trees_close64(flat(grads), expected_step(weights, params, x, y))
        losses = loss_fn(params, x, y)
        assert_trees_close64(out.losses, losses)
    with pytest.raises(ValueError, match="gramian_examples=9 but an argument has only 8"):
        covjax.value_and_grad(loss_fn, scheme, gramian_examples=9)(
            PARAMS, scheme.init(loss_fn(PARAMS, X, Y)), X, Y
        )


def test_gramian_examples_on_a_module_with_perturbations() -> None:
    with jax.enable_x64(True):
        _, x, y, _ = float64_case()
        model = PerturbedMultiHead(nnx.Rngs(0), dtype=jnp.float64)
        reference = nnx.clone(model)
        scheme = covjax.mgda()
        step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.Perturbation, gramian_examples=2)
        state = scheme.init({n: 0.0 for n in NAMES})
        out, _ = nnx.jit(step)(model, state, x, y)
        z = MultiHead.encode(nnx.clone(reference), x[:2])
        rows = np.stack(
            [
                np.ravel(jax.grad(lambda rep, n=n: nnx.clone(reference).losses(rep, y[:2])[n])(z))
                for n in NAMES
            ]
        )
        expected = covjax.min_norm_solver(jnp.asarray(rows @ rows.T))
        weights = np.array([out.weights[n] for n in NAMES])
        # The float64 solves agree to ~cond·1e-13; the stored weights (≤ 1) are float32.
        np.testing.assert_allclose(weights, expected, rtol=0, atol=EPS32)
        # The statistics moved once, with the whole batch (not the sub-batch's forward pass).
        MultiHead.encode(reference, x)
        assert_trees_close64(model.norm.mean.value, np.asarray(reference.norm.mean.value))


class PerturbedDictHeads(PerturbedMultiHead):
    """PerturbedMultiHead with its heads in an ``nnx.Dict`` (the quickstart notebook's layout)."""

    def __init__(self, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32) -> None:
        super().__init__(rngs, dtype)
        self.heads = nnx.Dict(dict(zip(NAMES, self.heads, strict=True)))

    def losses(self, z: jax.Array, y: jax.Array) -> dict:
        return {n: jnp.mean((head(z) - y) ** 2) for n, head in self.heads.items()}


def test_perturbation_with_heads_in_an_nnx_dict() -> None:
    # Under nnx.capture flax 0.12 adds an entry to every nnx.Dict of submodules, so iterating
    # the heads would fail: the perturbations are added without it.
    with jax.enable_x64(True):
        _, x, y, _ = float64_case()
        model = PerturbedDictHeads(nnx.Rngs(0), dtype=jnp.float64)
        reference = nnx.clone(model)
        z = MultiHead.encode(nnx.clone(reference), x)
        rows = np.stack(
            [
                np.ravel(jax.grad(lambda rep, n=n: nnx.clone(reference).losses(rep, y)[n])(z))
                for n in NAMES
            ]
        )
        _, gramian, _ = covjax.per_loss_gramian(module_loss, model, x, y, wrt=nnx.Perturbation)
        assert_trees_close64(gramian, rows @ rows.T)
        scheme = covjax.mgda()
        step = covjax.value_and_grad(module_loss, scheme, wrt=nnx.Perturbation)
        out, _ = nnx.jit(step)(model, scheme.init({n: 0.0 for n in NAMES}), x, y)
        expected = covjax.min_norm_solver(jnp.asarray(rows @ rows.T))
        weights = np.array([out.weights[n] for n in NAMES])
        # The float64 solves agree to ~cond·1e-13; the stored weights (≤ 1) are float32.
        np.testing.assert_allclose(weights, expected, rtol=0, atol=EPS32)
        assert np.ptp(weights) > 1e-3  # not trivially uniform
        assert not jax.tree.leaves(nnx.state(model, nnx.Perturbation))  # no variable added
