"""Factorized Dense Gramians and per-task representation copies against the plain engine.

The oracle for both is a Gramian of per-loss gradients from a Python loop of
``jax.grad`` calls, independent of the batched engine. These are identities, so
both sides run in float64 (:mod:`precision`): float32 would compare the CPU's
summation orders instead.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from oracles import gradient_schemes as oracle
from precision import EPS32, assert_trees_close64, float64

import covjax
from covjax._src import block_diagonal, factorized, gradients, program

K = 3


def make_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float = 0.5) -> jax.Array:
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    return {
        "dense": {"w": normal(5, 12), "b": normal(12, scale=0.1)},  # x @ W
        "left": {"w": normal(12, 12)},  # W @ hᵀ: the parameter is the left operand
        "attention": {"w": normal(12, 2, 6)},  # contracts one axis, two free axes
        "tied": {"w": normal(12, 12)},  # used twice: never factorized
        "conv": {"w": normal(3, 1, 2)},  # a convolution kernel: never factorized
        "heads": {"w": normal(K, 12)},
    }


@jax.jit
def _nested_product(h: jax.Array, w: jax.Array) -> jax.Array:
    return h @ w  # a nested jit: the tapped product sits inside it


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """(K,) losses of a network that uses parameters in every supported and unsupported way."""
    h = jnp.tanh(_nested_product(x, params["dense"]["w"]) + params["dense"]["b"])  # (B, T, 12)
    h = jnp.tanh(jnp.einsum("ij,btj->bti", params["left"]["w"], h))
    a = jnp.einsum("btd,dhe->bthe", h, params["attention"]["w"]).reshape(h.shape)
    h = jnp.tanh(a @ params["tied"]["w"]) @ params["tied"]["w"]
    conv = jax.lax.conv_general_dilated(
        h[..., :1].transpose(0, 2, 1), params["conv"]["w"].transpose(2, 1, 0), (1,), "SAME"
    )
    pooled = jnp.mean(h, axis=1) + jnp.mean(conv, axis=(1, 2))[:, None]  # (B, 12)
    predictions = pooled @ params["heads"]["w"].T  # (B, K)
    targets = jnp.stack([y, -y, jnp.sin(3 * y)], axis=1)
    return jnp.mean((predictions - targets) ** 2, axis=0) + jnp.array([0.0, 0.1, 0.2])


def make_batch(size: int = 6, length: int = 4) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(size, length, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(size,)), jnp.float32)
    return x, y


PARAMS = make_params()
X, Y = make_batch()


def per_loss_gramian_with(factorize, *args, **kwargs) -> jax.Array:
    """The Gramian with the engine's (benchmark-only) factorize mode set."""
    with gradients._engine_options(factorize=factorize):
        return gradients.per_loss_gramian(*args, **kwargs)[1]


def loop_gramian(params: dict, x: jax.Array, y: jax.Array, prefix: str = "") -> np.ndarray:
    rows = []
    for i in range(K):
        grads = jax.grad(lambda p, i=i: loss_fn(p, x, y)[i])(params)
        flat = jax.tree_util.tree_flatten_with_path(grads)[0]
        rows.append(
            np.concatenate(
                [
                    np.ravel(leaf)
                    for path, leaf in flat
                    if "/".join(str(k.key) for k in path).startswith(prefix)
                ]
            )
        )
    rows = np.stack(rows)
    return rows @ rows.T


def traced_taps(wrt: str | None = None, always: bool = True) -> set[str]:
    leaves, treedef = jax.tree.flatten(PARAMS)
    mask, names = gradients.select_leaves(PARAMS, wrt)
    closed = jax.make_jaxpr(lambda *ls: loss_fn(jax.tree.unflatten(treedef, ls), X, Y))(*leaves)
    traced = program.walk(closed, mask, num_losses=1)  # one output: the (K,) losses
    return {names[leaf] for leaf in factorized.find_taps(traced, mask, K, always=always)}


def test_taps_are_the_single_use_products() -> None:
    assert traced_taps() == {"dense/w", "left/w", "attention/w", "heads/w"}
    assert traced_taps("dense") == {"dense/w"}


def test_cost_model_picks_big_kernels_only() -> None:
    tap = factorized.Tap(0, False, (0,), (1,), (32, 512), jnp.float32)
    assert factorized._worth_it(tap, (32, 512), num_losses=32)  # LibMTL's MLP layer
    tall = factorized.Tap(0, False, (0,), (1,), (4096, 8), jnp.float32)
    assert not factorized._worth_it(tall, (4096, 8), num_losses=32)  # N² dominates


@pytest.mark.parametrize("mode", ["always", "auto", "never"])
@pytest.mark.parametrize("wrt", [None, "dense", "attention"])
def test_gramian_matches_loop(mode: str, wrt: str | None) -> None:
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))
        expected = loop_gramian(params, x, y, prefix=wrt or "")
        gramian_fn = lambda p: per_loss_gramian_with(mode, loss_fn, p, x, y, wrt=wrt)  # noqa: E731
        assert_trees_close64(jax.jit(gramian_fn)(params), expected)


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_chunked_and_vmapped(chunk_size: int) -> None:
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))

        def gramian(p: dict, x: jax.Array) -> jax.Array:
            return per_loss_gramian_with("always", loss_fn, p, x, y, chunk_size=chunk_size)

        reference = jax.jit(lambda p, x: per_loss_gramian_with("never", loss_fn, p, x, y))
        xs = jnp.stack([x, 2.0 * x])
        batched = jax.jit(jax.vmap(gramian, in_axes=(None, 0)))(params, xs)
        for i in range(2):
            assert_trees_close64(batched[i], reference(params, xs[i]))


def test_low_precision_parameters() -> None:
    params = jax.tree.map(lambda leaf: leaf.astype(jnp.bfloat16), PARAMS)

    def gramian(mode: str) -> jax.Array:
        return per_loss_gramian_with(mode, loss_fn, params, X.astype(jnp.bfloat16), Y)

    tapped, plain = gramian("always"), gramian("never")
    assert tapped.dtype == jnp.float32
    np.testing.assert_allclose(tapped, plain, rtol=5e-2, atol=5e-2 * float(jnp.max(plain)))


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype: jnp.dtype = jnp.float32) -> None:
        kinds = {"dtype": dtype, "param_dtype": dtype}
        self.trunk = nnx.Linear(5, 16, rngs=rngs, **kinds)
        self.norm = nnx.BatchNorm(16, rngs=rngs, **kinds)
        self.heads = nnx.Linear(16, K, rngs=rngs, **kinds)
        # flax keeps BatchNorm's running statistics in float32 whatever param_dtype is.
        for statistic in (self.norm.mean, self.norm.var):
            statistic.value = statistic.value.astype(dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.heads(jax.nn.relu(self.norm(self.trunk(x))))


def nnx_loss(model: Net, x: jax.Array, y: jax.Array) -> jax.Array:
    predictions = model(x.reshape(-1, 5))
    targets = jnp.stack([y, -y, y**2], axis=1).repeat(x.shape[1], axis=0)
    return jnp.mean((predictions - targets) ** 2, axis=0)


@pytest.mark.parametrize("scheme", [covjax.mgda(), covjax.gradnorm(learning_rate=0.05)])
def test_value_and_grad_on_nnx_module_same_either_way(scheme: covjax.Weighting) -> None:
    results = {}
    with jax.enable_x64(True):
        x, y = float64((X, Y))
        for mode in ("always", "never"):
            model = Net(nnx.Rngs(0), dtype=jnp.float64)
            with gradients._engine_options(factorize=mode):
                step = nnx.jit(covjax.value_and_grad(nnx_loss, scheme, wrt="trunk"))
                state = scheme.init(jnp.ones(K))
                for _ in range(3):
                    out, grads = step(model, state, x, y)
                    state = out.state
            results[mode] = (out.weights, grads, nnx.state(model, nnx.BatchStat))
    weights = results["always"][0]
    # The weights are stored in float32: float64 values that agree to ~1e-15 round alike
    # (one ulp, eps32, apart only next to a rounding boundary).
    np.testing.assert_allclose(weights, results["never"][0], rtol=EPS32)
    assert_trees_close64(results["always"][1:], results["never"][1:])
    assert np.ptp(np.asarray(weights)) > 1e-3  # not trivially uniform


def test_bad_mode_is_named() -> None:
    with pytest.raises(ValueError, match="factorize must be one of"):
        per_loss_gramian_with("yes", loss_fn, PARAMS, X, Y)
    with pytest.raises(ValueError, match="factorize must be one of"):
        per_loss_gramian_with(True, loss_fn, PARAMS, X, Y)


# --- per-task copies of the representation (MGDA-UB in one head backward pass) ---


def encoder(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    del y
    return jnp.tanh(jnp.mean(x, axis=1) @ params["dense"]["w"] + params["dense"]["b"])


def heads_shared(params: dict, z: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    del x
    predictions = z @ params["heads"]["w"].T  # (B, K)
    targets = jnp.stack([y, -y, jnp.sin(3 * y)], axis=1)
    return jnp.mean((predictions - targets) ** 2, axis=0)


def heads_on_copies(params: dict, zs: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Head k reads only its copy zs[k]."""
    del x
    predictions = jnp.einsum("kbd,kd->bk", zs, params["heads"]["w"])
    targets = jnp.stack([y, -y, jnp.sin(3 * y)], axis=1)
    return jnp.mean((predictions - targets) ** 2, axis=0)


def shared_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """heads_shared on z marked by one zero leaf (the plain-pytree way to MGDA-UB)."""
    return heads_shared(params, encoder(params, x, y) + params["representation"], x, y)


def copies_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """heads_on_copies with one zero leaf per head added to the same z: copies of z."""
    z = encoder(params, x, y)
    return heads_on_copies(params, jnp.stack([z + c for c in params["copies"]]), x, y)


def marked(params: dict, x: jax.Array, y: jax.Array, copies: Any = None) -> dict:
    """``params`` with the zero leaves of z: one, or one per entry of ``copies``."""
    z = jnp.zeros_like(encoder(params, x, y))
    if copies is None:
        return {**params, "representation": z}
    return {**params, "copies": jax.tree.map(lambda _: z, copies)}


def unmarked(grads: dict) -> dict:
    return {k: v for k, v in grads.items() if k not in ("representation", "copies")}


@pytest.mark.parametrize("scheme", [covjax.mgda(normalization="l2"), covjax.pcgrad()])
def test_representation_copies_match_shared_representation(scheme: covjax.Weighting) -> None:
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))
        state = scheme.init(jnp.ones(K))
        shared = jax.jit(covjax.value_and_grad(shared_loss, scheme, wrt="representation"))
        copies = jax.jit(covjax.value_and_grad(copies_loss, scheme, wrt="copies"))
        out_shared, grads_shared = shared(marked(params, x, y), state, x, y)
        out_copies, grads_copies = copies(marked(params, x, y, list(range(K))), state, x, y)
    # float32-stored weights of equal float64 values (see the nnx test above).
    np.testing.assert_allclose(out_copies.weights, out_shared.weights, rtol=EPS32)
    assert_trees_close64(unmarked(grads_copies), unmarked(grads_shared))
    assert np.ptp(np.asarray(out_copies.weights)) > 1e-3


def test_representation_copies_with_statistics_scheme() -> None:
    # An identity, so float64 (the module docstring): in float32 the two programs'
    # summation orders differ by a few eps32, which is not what this checks.
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))
        scheme = covjax.cov_weighting()
        state = scheme.init(jnp.ones(K))
        shared = covjax.value_and_grad(shared_loss, scheme, wrt="representation")
        copies = covjax.value_and_grad(copies_loss, scheme, wrt="copies")
        out_shared, grads_shared = shared(marked(params, x, y), state, x, y)
        out_copies, grads_copies = copies(marked(params, x, y, list(range(K))), state, x, y)
    # float32-stored weights and state of equal float64 values (see the nnx test above).
    chex.assert_trees_all_close(out_copies, out_shared, rtol=EPS32)
    assert_trees_close64(unmarked(grads_copies), unmarked(grads_shared))


def heads_by_name(params: dict, z: jax.Array, x: jax.Array, y: jax.Array) -> dict:
    del x
    w = params["heads"]["w"]
    return {
        "depth": jnp.mean((z @ w[0] - y) ** 2),
        "normals": jnp.mean(jnp.abs(z @ w[1] + y)),
        "edges": jnp.mean(jnp.cos(z @ w[2] * y)),
    }


def heads_by_name_on_copies(params: dict, copies: dict, x: jax.Array, y: jax.Array) -> dict:
    """A dict of losses gets a dict of copies: each loss reads its own."""
    del x
    w = params["heads"]["w"]
    return {
        "depth": jnp.mean((copies["depth"] @ w[0] - y) ** 2),
        "normals": jnp.mean(jnp.abs(copies["normals"] @ w[1] + y)),
        "edges": jnp.mean(jnp.cos(copies["edges"] @ w[2] * y)),
    }


def named_shared_loss(params: dict, x: jax.Array, y: jax.Array) -> dict:
    return heads_by_name(params, encoder(params, x, y) + params["representation"], x, y)


def named_copies_loss(params: dict, x: jax.Array, y: jax.Array) -> dict:
    z = encoder(params, x, y)
    copies = {name: z + copy for name, copy in params["copies"].items()}
    return heads_by_name_on_copies(params, copies, x, y)


def crossed_copies_loss(params: dict, x: jax.Array, y: jax.Array) -> dict:
    """The depth head reads the mean of its copy and the edges copy: still z, but not private."""
    z = encoder(params, x, y)
    copies = {name: z + copy for name, copy in params["copies"].items()}
    copies["depth"] = 0.5 * (copies["depth"] + copies["edges"])
    return heads_by_name_on_copies(params, copies, x, y)


@pytest.mark.parametrize("scheme", [covjax.mgda(normalization="l2"), covjax.equal_weighting()])
@pytest.mark.parametrize("copies_fn", [named_copies_loss, crossed_copies_loss])
def test_representation_copies_for_named_losses(scheme: covjax.Weighting, copies_fn) -> None:
    names = {"depth": 0, "edges": 0, "normals": 0}
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))
        state = scheme.init(heads_by_name(params, encoder(params, x, y), x, y))
        shared = jax.jit(covjax.value_and_grad(named_shared_loss, scheme, wrt="representation"))
        copies = jax.jit(covjax.value_and_grad(copies_fn, scheme, wrt="copies"))
        out_shared, grads_shared = shared(marked(params, x, y), state, x, y)
        out_copies, grads_copies = copies(marked(params, x, y, names), state, x, y)
    # float32-stored weights of equal float64 values (see the nnx test above).
    chex.assert_trees_all_close(out_copies.weights, out_shared.weights, rtol=EPS32)
    assert_trees_close64(unmarked(grads_copies), unmarked(grads_shared))


def plan_of(fn, params: dict, wrt: str) -> gradients.Plan:
    target = gradients.differentiable(fn, params, (X, Y), {}, has_aux=False, wrt=wrt)
    return gradients.prepare(target.fn, target.primal, target.selected).plan


def test_private_copies_are_block_diagonal_and_shared_ones_are_not() -> None:
    params = marked(PARAMS, X, Y, {"depth": 0, "edges": 0, "normals": 0})
    names = gradients.select_leaves(params)[1]
    private = plan_of(named_copies_loss, params, "copies")
    # One copy per loss, each reached by its own loss only: one pull-back gives all three.
    assert {names[i]: names_of(owner) for i, owner in private.owners.items()} == {
        "copies/depth": "depth",
        "copies/edges": "edges",
        "copies/normals": "normals",
    }
    assert [tuple(names[i] for i in members) for members in private.copies] == [
        ("copies/depth", "copies/edges", "copies/normals")
    ]
    crossed = plan_of(crossed_copies_loss, params, "copies")
    # The edges copy is read by two losses: no longer private, so pulled back per loss.
    assert sorted(names[i] for i in crossed.owners) == ["copies/depth", "copies/normals"]


def names_of(owner: int) -> str:
    return ("depth", "edges", "normals")[owner]  # covjax.loss_names order (sorted keys)


class PerturbedNet(nnx.Module):
    """A trunk and three heads; z marked once, or once per head (per-task copies)."""

    def __init__(self, rngs: nnx.Rngs, per_task: bool) -> None:
        self.trunk = nnx.Linear(5, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.heads = nnx.List([nnx.Linear(16, 1, rngs=rngs) for _ in range(K)])
        self.per_task = per_task

    def __call__(self, x: jax.Array, y: jax.Array) -> dict:
        z = jax.nn.relu(self.norm(self.trunk(x)))
        if not self.per_task:
            z = self.perturb("representation", z)
        losses = {}
        for name, head, target in zip(("a", "b", "c"), self.heads, (y, -y, y**2), strict=True):
            z_task = self.perturb(f"representation/{name}", z) if self.per_task else z
            losses[name] = jnp.mean((head(z_task)[:, 0] - target) ** 2)
        return losses


def test_per_task_perturbations_match_one_shared_perturbation() -> None:
    x, y = jnp.mean(X, axis=1), Y
    scheme = covjax.mgda()
    results = []
    for per_task in (False, True):
        model = PerturbedNet(nnx.Rngs(0), per_task)
        step = nnx.jit(covjax.value_and_grad(lambda m, x, y: m(x, y), scheme, wrt=nnx.Perturbation))
        out, grads = step(model, scheme.init({"a": 0.0, "b": 0.0, "c": 0.0}), x, y)
        results.append((out.weights, grads, nnx.state(model, nnx.BatchStat)))
        # Only parameters come back, and the module gained no variables.
        assert not jax.tree.leaves(nnx.state(model, nnx.Perturbation))
    # Same float32 maths reduced in another order (one pull-back vs a batched one).
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert np.ptp(np.asarray(jax.tree.leaves(results[0][0]))) > 1e-3
    assert not np.allclose(results[0][2]["norm"]["mean"].value, 0.0)  # statistics updated


def test_product_of_two_parameters() -> None:
    params = {
        "a": jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)), jnp.float32),
        "b": jnp.asarray(np.random.default_rng(4).normal(size=(5, 4)), jnp.float32),
    }

    def losses(p: dict, x: jax.Array) -> jax.Array:
        y = x @ (p["a"] @ p["b"])  # a low-rank kernel: both factors are tapped
        return jnp.stack([jnp.mean(y**2), jnp.mean(jnp.sin(y)), jnp.mean(y[:, :2])])

    x = jnp.asarray(np.random.default_rng(5).normal(size=(7, 6)), jnp.float32)
    with jax.enable_x64(True):
        params, x = float64((params, x))
        tapped, plain = (
            per_loss_gramian_with(mode, losses, params, x) for mode in ("always", "never")
        )
        assert_trees_close64(tapped, plain)


def test_row_taps_are_the_taps_read_in_their_leaf_layout() -> None:
    leaves, treedef = jax.tree.flatten(PARAMS)
    mask, names = gradients.select_leaves(PARAMS)
    closed = jax.make_jaxpr(lambda *ls: loss_fn(jax.tree.unflatten(treedef, ls), X, Y))(*leaves)
    traced = program.walk(closed, mask, num_losses=1)
    # heads/w is read transposed, and jnp.einsum makes left/w the right operand contracted
    # on its last axis: their rows would come transposed (a K×P copy), so they are materialised.
    assert {names[leaf] for leaf in factorized.find_row_taps(traced, mask)} == {
        "dense/w",
        "attention/w",
    }


def loop_jacobian(losses_fn, params: dict, *args: Any) -> dict[str, np.ndarray]:
    """{path: (K, *shape)} from K separate jax.grad calls."""
    rows: dict[str, list] = {}
    for i in range(K):
        grads = jax.grad(lambda p, i=i: losses_fn(p, *args)[i])(params)
        for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
            rows.setdefault("/".join(str(k.key) for k in path), []).append(np.asarray(leaf))
    return {name: np.stack(leaf_rows) for name, leaf_rows in rows.items()}


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_jacobian_rows_from_taps_match_loop(chunk_size: int | None) -> None:
    with jax.enable_x64(True):
        params, x, y = float64((PARAMS, X, Y))
        jacobian_fn = jax.jit(
            lambda p: gradients.per_loss_jacobian(loss_fn, p, x, y, chunk_size=chunk_size)[1]
        )
        assert_trees_close64(jacobian_fn(params), loop_jacobian(loss_fn, params, x, y))


def test_jacobian_rows_of_a_product_of_two_parameters() -> None:
    rng = np.random.default_rng(3)
    params = {"a": jnp.asarray(rng.normal(size=(6, 5))), "b": jnp.asarray(rng.normal(size=(5, 4)))}

    def losses(p: dict, x: jax.Array) -> jax.Array:
        y = x @ (p["a"] @ p["b"])  # a is the left operand of a · b, b the right one
        return jnp.stack([jnp.mean(y**2), jnp.mean(jnp.sin(y)), jnp.mean(y[:, :2])])

    with jax.enable_x64(True):
        params, x = float64((params, jnp.asarray(rng.normal(size=(7, 6)))))
        leaves, treedef = jax.tree.flatten(params)
        closed = jax.make_jaxpr(lambda *ls: losses(jax.tree.unflatten(treedef, ls), x))(*leaves)
        traced = program.walk(closed, [True, True], num_losses=1)
        assert set(factorized.find_row_taps(traced, [True, True])) == {0, 1}  # left and right
        jacobian = jax.jit(lambda p: gradients.per_loss_jacobian(losses, p, x)[1])(params)
        assert_trees_close64(jacobian, loop_jacobian(losses, params, x))


# --- the block-diagonal step: the heads pulled back once, the trunk once ---

TASKS = ("a", "b", "c")


def private_heads_loss(params: dict, x: jax.Array, y: jax.Array) -> tuple[dict, dict]:
    """Per-task copies of z read by heads that slice one stacked kernel and have their own
    biases; ``gain`` is read by the trunk and by head "a"; an integer leaf and z's mean (a
    shared value) come back as aux."""
    z = encoder(params, x, y) * params["gain"]
    losses = {}
    for k, task in enumerate(TASKS):
        h = (z + params["copies"][task]) @ params["stacked"][k] + params["bias"][task]
        if task == "a":
            h = h * params["gain"]
        losses[task] = jnp.mean((jnp.tanh(h[:, 0]) - (k + 1) * y) ** 2) + 0.1 * jnp.mean(h**2)
    return losses, {"count": params["count"] + 1, "z_mean": jnp.mean(z)}


def private_heads_params() -> dict:
    rng = np.random.default_rng(7)
    params = {
        "dense": {k: v for k, v in PARAMS["dense"].items()},
        "gain": jnp.asarray(1.3, jnp.float32),
        "stacked": jnp.asarray(rng.normal(size=(K, 12, 2)) * 0.5, jnp.float32),
        "bias": {task: jnp.asarray(rng.normal(size=2) * 0.1, jnp.float32) for task in TASKS},
        "count": jnp.asarray(3, jnp.int32),
    }
    return marked(params, X, Y, dict.fromkeys(TASKS, 0))


def test_block_diagonal_split_pulls_back_the_heads_once_and_the_trunk_once() -> None:
    params = private_heads_params()
    leaves, treedef = jax.tree.flatten(params)

    def flat_fn(*flat_leaves: jax.Array) -> Any:
        return private_heads_loss(jax.tree.unflatten(treedef, flat_leaves), X, Y)

    with jax.enable_x64(True):
        leaves = float64(leaves)
        closed = jax.make_jaxpr(flat_fn)(*leaves)
        selected, names = gradients.select_leaves(params, "copies")
        split = block_diagonal.split(closed, K, selected)
        assert split is not None
        # The heads read their slices of the stacked kernel, taken in the shared part.
        stacked = closed.jaxpr.invars[names.index("stacked")]
        assert stacked not in {use.source for use in split.use_list}

        def products(equations: list) -> int:
            return sum(eqn.primitive is jax.lax.dot_general_p for eqn in equations)

        assert (products(split.shared), products(split.private)) == (1, K)  # encoder | heads
        split_pass = block_diagonal.run(split, leaves)
        outputs = jax.tree.leaves(flat_fn(*leaves))
        assert_trees_close64(
            [o for o in split_pass.outputs if o.dtype == jnp.float64],
            [o for o in outputs if o.dtype == jnp.float64],
        )
        assert int(split_pass.outputs[-2]) == 4  # the integer aux, "count" + 1
        _, vjp = jax.vjp(lambda *ls: jax.tree.leaves(flat_fn(*ls)[0]), *leaves)
        float_leaves = [i for i, leaf in enumerate(leaves) if leaf.dtype == jnp.float64]
        for cotangent in (np.ones(K), np.array([0.2, -1.5, 0.7])):
            want = vjp([jnp.asarray(c) for c in cotangent])
            got = split_pass.weighted([jnp.asarray(c) for c in cotangent])
            assert_trees_close64([got[i] for i in float_leaves], [want[i] for i in float_leaves])


def test_mgda_ub_with_private_heads_against_a_float64_oracle() -> None:
    params = private_heads_params()
    scheme = covjax.mgda()
    with jax.enable_x64(True):
        params, x, y = float64((params, X, Y))
        step = jax.jit(
            covjax.value_and_grad(private_heads_loss, scheme, wrt="copies", has_aux=True)
        )
        out, grads = step(params, scheme.init(dict.fromkeys(TASKS, 0.0)), x, y)

        # Oracle: each task's gradient w.r.t. its copy by its own jax.grad, their Gramian, and the
        # exact min-norm point; the gradient of the weighted sum by one jax.grad.
        def task_loss(copies: dict, task: str) -> jax.Array:
            return private_heads_loss({**params, "copies": copies}, x, y)[0][task]

        rows = np.stack(
            [np.ravel(jax.grad(task_loss)(params["copies"], task)[task]) for task in TASKS]
        )
        _, alpha = oracle.min_norm_by_enumeration(rows @ rows.T)
        weights = np.asarray([out.weights[task] for task in TASKS])
        # Frank–Wolfe stops once a step moves α by less than its tolerance (1e-5, ℓ1).
        np.testing.assert_allclose(weights, alpha, atol=1e-5)
        assert np.ptp(weights) > 1e-3

        def weighted(p: dict) -> jax.Array:
            losses = private_heads_loss(p, x, y)[0]
            return sum(out.weights[task] * losses[task] for task in TASKS)

        want = jax.grad(weighted, allow_int=True)(params)
        assert_trees_close64(
            {k: v for k, v in unmarked(grads).items() if k != "count"},
            {k: v for k, v in unmarked(want).items() if k != "count"},
        )
        assert int(out.aux["count"]) == 4


@jax.custom_vjp
def clipped_gradient(x: jax.Array) -> jax.Array:
    return x


# A backward rule that is not linear in the cotangent (JAX's gradient-clipping example).
clipped_gradient.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.01, 0.01),))


def scanned_loss(params: dict, x: jax.Array, clip: bool) -> dict:
    """A scanned, rematerialised trunk; heads under ``lax.cond``, head 0 maybe clipped."""

    def layer(h: jax.Array, w: jax.Array) -> tuple[jax.Array, None]:
        return jnp.tanh(h @ w), None

    z, _ = jax.lax.scan(jax.checkpoint(layer), x, params["trunk"])
    losses = {}
    for k, task in enumerate(TASKS):
        h = (z + params["copies"][task]) @ params["heads"][k]
        h = clipped_gradient(h) if clip and k == 0 else h
        losses[task] = jax.lax.cond(k == 2, lambda h: jnp.sum(h**2), jnp.mean, jnp.sin(h))
    return losses


@pytest.mark.parametrize("clip", [False, True])
def test_mgda_ub_step_equals_the_gradient_of_the_weighted_sum(clip: bool) -> None:
    """The split serves control flow and remat; a custom_vjp head is left to one weighted VJP."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    params = {
        "trunk": jnp.asarray(rng.normal(size=(2, 5, 5)), jnp.float32),
        "heads": jnp.asarray(rng.normal(size=(K, 5, 3)), jnp.float32),
        "copies": dict.fromkeys(TASKS, jnp.zeros((4, 5), jnp.float32)),
    }
    scheme = covjax.mgda()
    with jax.enable_x64(True):
        params, x = float64((params, x))
        leaves, treedef = jax.tree.flatten(params)
        closed = jax.make_jaxpr(lambda *ls: scanned_loss(jax.tree.unflatten(treedef, ls), x, clip))(
            *leaves
        )
        selected = gradients.select_leaves(params, "copies")[0]
        assert (block_diagonal.split(closed, K, selected) is None) == clip
        step = covjax.value_and_grad(lambda p, x: scanned_loss(p, x, clip), scheme, wrt="copies")
        out, grads = jax.jit(step)(params, scheme.init(dict.fromkeys(TASKS, 0.0)), x)
        want = jax.grad(
            lambda p: sum(out.weights[t] * loss for t, loss in scanned_loss(p, x, clip).items())
        )(params)
        assert_trees_close64(grads, want)
        assert np.ptp(np.asarray(jax.tree.leaves(out.weights))) > 1e-3
