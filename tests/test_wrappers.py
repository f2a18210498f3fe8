"""covjax.apply_if_accepted: a rejected step leaves parameters and optimiser state bit-identical."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import covjax


def _bits(tree: Any) -> list[tuple[str, tuple[int, ...], bytes]]:
    """Every leaf's dtype, shape and raw bytes (so -0.0 ≠ +0.0); PRNG keys by their data."""
    leaves = jax.tree.leaves(jax.device_get(tree))
    arrays = [
        np.asarray(jax.random.key_data(leaf))
        if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key)
        else np.asarray(leaf)
        for leaf in leaves
    ]
    return [(str(a.dtype), a.shape, a.tobytes()) for a in arrays]


# Signed zeros, a tiny value, ordinary values, an infinity: p + u must keep every bit.
PARAMS = {
    "w": jnp.array([[-0.0, 0.0], [1e-30, -3.5]], jnp.float32),
    "b": jnp.array([2.0, -jnp.inf], jnp.float32),
}
GRADS = [
    jax.tree.map(lambda p, k=k: jnp.full_like(p, 0.1 * (k + 1)) * jnp.sign(p + 0.5), PARAMS)
    for k in range(6)
]
NAN_GRADS = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), PARAMS)


def _run(tx: optax.GradientTransformation, steps: list[tuple[Any, bool]]) -> tuple[Any, Any]:
    """Apply ``(grads, accepted)`` steps with a jitted update; the final params and state."""

    @jax.jit
    def step(params, opt_state, grads, accepted):
        updates, opt_state = tx.update(grads, opt_state, params, accepted=accepted)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = PARAMS, tx.init(PARAMS)
    for grads, accepted in steps:
        params, opt_state = step(params, opt_state, grads, jnp.asarray(accepted))
    return params, opt_state


def test_rejected_steps_are_as_if_they_never_happened() -> None:
    inner = optax.adam(1e-2)
    tx = covjax.apply_if_accepted(inner)
    # Two rejected steps among four accepted ones (Adam's bias correction counts steps,
    # so a skipped step that still advanced the count would change every later update).
    steps = [(GRADS[0], True), (NAN_GRADS, False), (GRADS[1], True), (GRADS[2], True)]
    steps += [(GRADS[3], False), (GRADS[4], True)]
    params, opt_state = _run(tx, steps)

    want_params, want_state = PARAMS, inner.init(PARAMS)
    for grads, accepted in steps:
        if accepted:
            updates, want_state = inner.update(grads, want_state, want_params)
            want_params = optax.apply_updates(want_params, updates)
    assert _bits(params) == _bits(want_params)
    assert _bits(opt_state) == _bits(want_state)
    assert int(opt_state[0].count) == 4


def test_a_rejected_update_is_negative_zero_and_keeps_every_bit() -> None:
    tx = covjax.apply_if_accepted(optax.adam(1e-2))
    params = PARAMS  # holds -0.0 and +0.0
    _, opt_state = _run(tx, [(GRADS[0], True)])  # a state with non-trivial moments
    updates, new_state = jax.jit(lambda p, s: tx.update(NAN_GRADS, s, p, accepted=False))(
        params, opt_state
    )
    # -0.0 is the identity of float addition; +0.0 (optax.apply_if_finite) is not for -0.0.
    assert all(np.all(np.signbit(u)) and not np.any(u) for u in jax.tree.leaves(updates))
    assert _bits(new_state) == _bits(opt_state)
    assert _bits(optax.apply_updates(params, updates)) == _bits(params)
    plus_zero = jax.tree.map(jnp.zeros_like, updates)
    assert _bits(optax.apply_updates(params, plus_zero)) != _bits(params)  # the -0.0 entry
    # The state is the inner optimiser's own: same structure, nothing added.
    assert jax.tree.structure(opt_state) == jax.tree.structure(optax.adam(1e-2).init(PARAMS))


def test_flax_nnx_optimizer() -> None:
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    model.bias[...] = jnp.array([-0.0, 0.0])
    optimizer = nnx.Optimizer(model, covjax.apply_if_accepted(optax.adam(1e-2)), wrt=nnx.Param)
    x = jnp.ones((4, 3))

    @nnx.jit
    def train_step(model, optimizer, poison):
        grads = nnx.grad(lambda m: jnp.mean(m(x + poison) ** 2))(model)
        accepted = jnp.isfinite(poison)  # stands in for out.accepted
        optimizer.update(model, grads, accepted=accepted)

    params, opt_state = _bits(nnx.state(model, nnx.Param)), _bits(optimizer.opt_state)
    train_step(model, optimizer, jnp.float32(jnp.nan))
    assert _bits(nnx.state(model, nnx.Param)) == params
    assert _bits(optimizer.opt_state) == opt_state
    assert int(optimizer.step[...]) == 1  # nnx.Optimizer's own counter counts calls
    train_step(model, optimizer, jnp.float32(0.0))
    assert _bits(nnx.state(model, nnx.Param)) != params
    assert int(optimizer.opt_state[0].count[...]) == 1


def test_with_covjax_value_and_grad_under_jit() -> None:
    scheme = covjax.cov_weighting()
    tx = covjax.apply_if_accepted(optax.sgd(0.1))

    def loss_fn(params, x):
        return {"a": jnp.mean((params["w"] * x) ** 2), "b": jnp.mean((params["w"] - x) ** 2)}

    params = {"w": jnp.array([1.0, -0.0])}
    weighting_state, opt_state = scheme.init(loss_fn(params, jnp.ones(2))), tx.init(params)

    @jax.jit
    def train_step(params, opt_state, weighting_state, x):
        out, grads = covjax.value_and_grad(loss_fn, scheme)(params, weighting_state, x)
        updates, opt_state = tx.update(grads, opt_state, params, accepted=out.accepted)
        return optax.apply_updates(params, updates), opt_state, out

    new_params, _, out = train_step(params, opt_state, weighting_state, jnp.array([jnp.nan, 1.0]))
    assert not bool(out.accepted)
    assert _bits(new_params) == _bits(params)
    new_params, _, out = train_step(params, opt_state, weighting_state, jnp.array([2.0, 1.0]))
    assert bool(out.accepted) and _bits(new_params) != _bits(params)


def test_vmap_over_runs_with_their_own_verdicts() -> None:
    tx = covjax.apply_if_accepted(optax.adam(1e-2))
    stack = lambda *trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    params = stack(PARAMS, PARAMS, PARAMS)
    grads = stack(GRADS[0], NAN_GRADS, GRADS[1])
    accepted = jnp.array([True, False, True])

    def step(params, grads, accepted):
        updates, state = tx.update(grads, tx.init(params), params, accepted=accepted)
        return optax.apply_updates(params, updates), state

    batched = jax.jit(jax.vmap(step))(params, grads, accepted)
    for member in range(3):
        one = jax.jit(step)(
            *jax.tree.map(lambda leaf, m=member: leaf[m], (params, grads, accepted))
        )
        assert _bits(jax.tree.map(lambda leaf, m=member: leaf[m], batched)) == _bits(one)
    assert _bits(jax.tree.map(lambda leaf: leaf[1], batched[0])) == _bits(PARAMS)


class _KeyedState(NamedTuple):
    key: jax.Array
    count: jax.Array


def _noisy_sgd(learning_rate: float) -> optax.GradientTransformationExtraArgs:
    """SGD plus noise from a typed PRNG key in its state, scaled by an extra argument."""

    def init(params):
        del params
        return _KeyedState(key=jax.random.key(0), count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None, *, noise_scale=0.0):
        del params
        key, subkey = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(updates)
        noise = jax.random.normal(subkey, (len(leaves),))
        new = [-learning_rate * g + noise_scale * n for g, n in zip(leaves, noise, strict=True)]
        return jax.tree.unflatten(treedef, new), _KeyedState(key, state.count + 1)

    return optax.GradientTransformationExtraArgs(init, update)


def test_extra_arguments_reach_the_inner_optimizer_and_keys_are_kept() -> None:
    tx = covjax.apply_if_accepted(_noisy_sgd(0.1))
    state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    update = jax.jit(tx.update)
    quiet, _ = update(grads, state, PARAMS, accepted=True)
    noisy, noisy_state = update(grads, state, PARAMS, accepted=True, noise_scale=1.0)
    assert _bits(quiet) != _bits(noisy)
    _, skipped_state = update(grads, state, PARAMS, accepted=False, noise_scale=1.0)
    assert _bits(skipped_state) == _bits(state) != _bits(noisy_state)
    # A plain GradientTransformation ignores the extra arguments, as in optax.chain.
    plain = covjax.apply_if_accepted(optax.sgd(0.1))
    updates, _ = plain.update(grads, plain.init(PARAMS), PARAMS, accepted=True, value=1.0)
    sgd = optax.sgd(0.1)
    assert _bits(updates) == _bits(sgd.update(grads, sgd.init(PARAMS), PARAMS)[0])
    # Inside optax.chain the verdict reaches the wrapper.
    chained = optax.chain(optax.clip_by_global_norm(1.0), covjax.apply_if_accepted(optax.sgd(1.0)))
    updates, _ = chained.update(NAN_GRADS, chained.init(PARAMS), PARAMS, accepted=False)
    assert _bits(optax.apply_updates(PARAMS, updates)) == _bits(PARAMS)


def test_bad_calls_are_named() -> None:
    tx = covjax.apply_if_accepted(optax.adam(1e-2))
    state = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"needs accepted=\.\.\., the step's out\.accepted"):
        tx.update(GRADS[0], state, PARAMS)
    with pytest.raises(TypeError, match=r"boolean scalar .*got bool\[2\]"):
        tx.update(GRADS[0], state, PARAMS, accepted=jnp.array([True, False]))
    with pytest.raises(TypeError, match=r"boolean scalar .*got float32\[\]"):
        tx.update(GRADS[0], state, PARAMS, accepted=jnp.float32(1.0))

    def drifting_init(params):
        del params
        return jnp.zeros((), jnp.int32)

    def drifting_update(updates, state, params=None):
        del params
        return updates, state.astype(jnp.float32) + 1

    drifting = covjax.apply_if_accepted(
        optax.GradientTransformation(drifting_init, drifting_update)
    )
    with pytest.raises(TypeError, match=r"changes state from int32\[\] to float32\[\]"):
        drifting.update(GRADS[0], drifting.init(PARAMS), PARAMS, accepted=True)
