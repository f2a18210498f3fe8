"""covjax's core imports and runs with only jax, optax and numpy: Flax stays unimported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: this test process has imported Flax already.
# ``sys.modules["flax"] = None`` makes every ``import flax...`` raise ImportError.
_WITHOUT_FLAX = textwrap.dedent(
    """
    import sys
    sys.modules["flax"] = None

    import jax
    import jax.numpy as jnp
    import numpy as np

    import covjax

    params = {"shared": jnp.array([[1.0, -0.5], [0.25, 2.0]]), "heads": [jnp.ones(2), -jnp.ones(2)]}
    x = jnp.array([0.5, -1.5])

    def loss_fn(params, x):
        z = jnp.tanh(params["shared"] @ x)
        return {
            "a": jnp.sum((z * params["heads"][0] - 1.0) ** 2) + 0.1,
            "b": jnp.sum((z * params["heads"][1] + 2.0) ** 2) + 0.1,
        }

    schemes = {
        "cov_weighting": covjax.cov_weighting(),
        "mgda": covjax.mgda(),
        "famo": covjax.famo(),
        "pcgrad": covjax.pcgrad(),
        "gradnorm": covjax.gradnorm(),
    }
    for name, scheme in schemes.items():
        step = jax.jit(covjax.value_and_grad(loss_fn, scheme, wrt="shared"))
        state = scheme.init(loss_fn(params, x))
        for _ in range(3):
            out, grads = step(params, state, x)
            state = out.state
            assert bool(out.accepted), name
            assert jax.tree.structure(grads) == jax.tree.structure(params), name
            assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads)), name
        assert int(state.count) == 3, name
        assert covjax.named(out.weights).keys() == {"a", "b"}, name
        # The state is a pytree of arrays with static structure, as jit needs.
        assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state)), name

    loaded = sorted(m for m in sys.modules if m == "flax" or m.startswith("flax."))
    assert loaded == ["flax"], loaded  # only the None placeholder set above
    print("ok")
    """
)


def test_core_runs_without_flax() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_FLAX],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("ok")
