"""DualProj: the projection of the mean onto the dual cone, against SciPy's NNLS and TorchJD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from aggregator_cases import random_gramian, vmapped_weights64, weights64
from oracles import gramian_aggregators as oracle

import covjax


def test_dualproj_matches_the_oracle_at_k32() -> None:
    for seed in range(3):
        gramian = random_gramian(seed)
        # Half the gradients flipped: the mean conflicts with several of them.
        flip = np.where(np.arange(32) % 2 == 0, 1.0, -0.8)
        gramian = gramian * np.outer(flip, flip)
        got = weights64(covjax.dualproj(), gramian)
        want = oracle.dualproj(gramian, np.full(32, 1 / 32))
        assert np.any(want > 1 / 32 + 1e-3), "the mean conflicts with no gradient: a weak case"
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * want.max())


def test_dualproj_warm_start_gives_the_same_solution() -> None:
    gramian = random_gramian(3, k=8)
    want = oracle.dualproj(gramian, np.full(8, 1 / 8))
    np.testing.assert_allclose(
        weights64(covjax.dualproj(), gramian, steps=3), want, rtol=0, atol=1e-5 * want.max()
    )


def test_dualproj_reproduces_torchjd_values() -> None:
    """TorchJD's tests (tests/unit/aggregation/test_values.py): DualProj on J = [[-4, 1, 1],
    [6, 1, 1]] gives weights [0.6109, 0.5] and d = [0.5563, 1.1109, 1.1109] (to 1e-4). Its
    quadprog solve regularizes: G/tr(G) + 1e-4·I. covjax on that Gramian gives its numbers;
    on G itself, the exact projection w = [11/18, 1/2] (2e-4 away)."""
    jacobian = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    gramian = jacobian @ jacobian.T
    torchjd_gramian = gramian / np.trace(gramian) + 1e-4 * np.eye(2)
    np.testing.assert_allclose(
        weights64(covjax.dualproj(), torchjd_gramian), [0.6109, 0.5], atol=1e-4
    )
    weights = weights64(covjax.dualproj(), gramian)
    np.testing.assert_allclose(weights, [11 / 18, 0.5], rtol=1e-6)
    np.testing.assert_allclose(weights @ jacobian, [0.5556, 1.1111, 1.1111], atol=1e-4)
    # ⟨g_1, d⟩ = 0: the mean conflicted with g_1 and was projected onto its boundary.
    assert abs(jacobian[0] @ (weights @ jacobian)) < 1e-5


def test_dualproj_is_non_conflicting_in_float32() -> None:
    rng = np.random.default_rng(7)
    jacobian = rng.normal(size=(16, 40))
    jacobian[1::2] = -0.9 * jacobian[::2] + 0.2 * rng.normal(size=(8, 40))
    gramian = (jacobian @ jacobian.T).astype(np.float32)
    scheme = covjax.dualproj()
    weights, _ = jax.jit(scheme.update)(jnp.ones(16), scheme.init(jnp.ones(16)), gramian=gramian)
    improvements = jacobian @ (np.asarray(weights, np.float64) @ jacobian)
    # The ridge allows ⟨g_j, d⟩ ≥ −4K·eps32·‖g_j‖²·w_j; float32 round-off of G w adds K·eps32.
    eps = np.finfo(np.float32).eps
    bound = 8 * 16 * eps * np.diag(jacobian @ jacobian.T) * float(weights.max())
    assert np.all(improvements >= -bound), improvements


def test_dualproj_vmaps_over_the_preference() -> None:
    gramian = random_gramian(4, k=6)
    preferences = jnp.asarray(np.random.default_rng(0).uniform(0.1, 1.0, size=(3, 6)))
    batched = vmapped_weights64(covjax.dualproj, preferences, gramian)
    for row, preference in zip(batched, np.asarray(preferences), strict=True):
        want = oracle.dualproj(gramian, preference)
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-5 * want.max())


def test_dualproj_zero_gramian_gives_the_preference() -> None:
    scheme = covjax.dualproj()
    weights, _ = scheme.update(jnp.ones(3), scheme.init(jnp.ones(3)), gramian=np.zeros((3, 3)))
    np.testing.assert_allclose(weights, 1 / 3)
