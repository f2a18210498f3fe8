"""The README quickstart's own train loop survives a NaN batch: the model does not move."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _quickstart_block() -> str:
    """The first Python block under the README's "## Quickstart" heading, as written."""
    section = re.search(r"^## Quickstart.*?(?=^## )", README.read_text(), flags=re.S | re.M)
    assert section, "README.md has no '## Quickstart' section"
    block = re.search(r"```python\n(.*?)```", section.group(0), flags=re.S)
    assert block, "the Quickstart section has no Python block"
    return block.group(1)


def _bits(tree: Any) -> list[tuple[str, tuple[int, ...], bytes]]:
    """Every leaf's dtype, shape and raw bytes (so -0.0 ≠ +0.0 and NaN payloads count)."""
    leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]
    return [(str(leaf.dtype), leaf.shape, leaf.tobytes()) for leaf in leaves]


def test_quickstart_loop_skips_a_nan_batch_and_trains_on(capsys) -> None:
    source = _quickstart_block()
    # The block's set-up, then its training loop (from `for`), run as written.
    loop_start = re.search(r"^for ", source, flags=re.M)
    assert loop_start, "the quickstart block has no training loop"
    setup, loop = source[: loop_start.start()], source[loop_start.start() :]
    namespace: dict[str, Any] = {}
    exec(compile(setup, "README.md quickstart (set-up)", "exec"), namespace)
    exec(compile(loop, "README.md quickstart (loop)", "exec"), namespace)
    model, optimizer = namespace["model"], namespace["optimizer"]
    train_step, loss_fn = namespace["train_step"], namespace["loss_fn"]
    x, y = namespace["x"], namespace["y"]
    assert bool(namespace["out"].accepted)

    # A parameter at -0.0: a skipped update that added +0.0 would flip its sign bit.
    model.bias[...] = model.bias[...].at[0].set(-0.0)
    params_before = _bits(nnx.state(model, nnx.Param))
    opt_state_before = _bits(optimizer.opt_state)
    weighting_before = _bits(namespace["weighting_state"])
    losses_before = {k: float(v) for k, v in loss_fn(model, x, y).items()}

    nan_x = x.at[0, 0].set(jnp.nan)  # one bad example poisons both losses
    out = train_step(model, optimizer, namespace["weighting_state"], nan_x, y)

    assert not bool(out.accepted)
    assert not np.isfinite(float(out.total))
    assert _bits(nnx.state(model, nnx.Param)) == params_before
    assert _bits(optimizer.opt_state) == opt_state_before
    assert _bits(out.state) == weighting_before

    # Training goes on from there: the README's loop again, on clean batches.
    exec(compile(loop, "README.md quickstart (loop)", "exec"), namespace)
    assert bool(namespace["out"].accepted)
    assert _bits(nnx.state(model, nnx.Param)) != params_before
    losses_after = {k: float(v) for k, v in loss_fn(model, x, y).items()}
    for name, before in losses_before.items():
        assert losses_after[name] < before, (name, losses_after[name], before)
    assert "mse" in capsys.readouterr().out  # the loop's own print ran
