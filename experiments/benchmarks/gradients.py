"""Cost of the per-loss gradient engine and of the gradient-based schemes.

The network is LibMTL's hard-parameter-sharing MLP
(https://github.com/median-research-group/LibMTL): a shared trunk
256→512→512→512 (ReLU) and K linear heads 512→10 with cross-entropy, batch 32.
Four tables, for K = 2, 8, 32 by default:

1. The K×K Gramian of the per-loss gradients w.r.t. all shared parameters:
   covjax's engine (one batched VJP) against a Python loop of K ``jax.grad``
   calls, both inside one ``jax.jit`` (XLA shares the forward pass; the K
   backward passes stay separate), and against K separately jitted calls.
2. The full jitted train step (forward, weighting, backward, Adam) of every
   gradient scheme relative to static weights (LibMTL's ratios for the same
   model, measured side by side in one process, come from
   :mod:`experiments.benchmarks.libmtl_reference`): GradNorm at the last
   trunk layer, and GradNorm, MGDA, PCGrad, CAGrad, Nash-MTL, IMTL-G,
   Aligned-MTL, UPGrad, GradVac, DB-MTL and the other Gramian and Jacobian
   schemes over all shared parameters (Dense Gramians factorized, and MGDA
   once more with the per-loss gradients materialised; SDMGrad and MoDo,
   whose cross-Gramian ``covjax.value_and_grad`` takes of the batch's
   halves, also on a batch of two batches: per-loss gradients on two
   batches of ``--batch`` examples, as their papers and LibMTL take, the
   weights on both rather than on a third), MGDA-UB on
   the trunk's output z (marked by a zero leaf added to it; plain, and with
   one zero leaf per task, the K copies stacked into one batched head, whose
   gradients the engine's block-diagonal plan takes from one pull-back), and
   the loss-statistics schemes LibMTL also has (UW, DWA, RLW, GLS, STCH,
   FAMO) for contrast. Timed in interleaved
   rounds so that machine noise hits every scheme alike.
3. :func:`covjax.min_norm_solver` alone for K = 32.
4. MGDA-UB's floor at K = 32: a static step plus forming the K
   representation gradients, their Gramian and the solve, each timed alone —
   a lower bound on any exact MGDA-UB step's ratio on this machine — next to
   MGDA-UB with per-task copies over a static step of the same copies model
   (K copies of z stacked into one batched head) and that ratio over the
   bound.

Run: ``python -m experiments.benchmarks.gradients`` (about 2 CPU-minutes; bigger:
``--rounds 9 --steps 20``; fewer: ``--ks 2 8 --skip engine``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import covjax
from covjax._src import gradients
from experiments.benchmarks.timing import interleaved_times

Params = dict


def init_params(num_losses: int, seed: int = 0, hidden: int = 512, inputs: int = 256) -> Params:
    rng = np.random.default_rng(seed)

    def dense(n_in: int, n_out: int) -> dict:
        return {
            "w": jnp.asarray(rng.normal(size=(n_in, n_out)) / np.sqrt(n_in), jnp.float32),
            "b": jnp.zeros((n_out,), jnp.float32),
        }

    return {
        "trunk": {
            "layer0": dense(inputs, hidden),
            "layer1": dense(hidden, hidden),
            "layer2": dense(hidden, hidden),
        },
        "heads": {
            "w": jnp.asarray(
                rng.normal(size=(num_losses, hidden, 10)) / np.sqrt(hidden), jnp.float32
            ),
            "b": jnp.zeros((num_losses, 10), jnp.float32),
        },
    }


def trunk_num_params(hidden: int = 512, inputs: int = 256) -> int:
    """P of the shared trunk of :func:`init_params` (what per-loss state is sized by)."""
    return inputs * hidden + hidden + 2 * (hidden * hidden + hidden)


def trunk(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    del labels
    for name in ("layer0", "layer1", "layer2"):
        layer = params["trunk"][name]
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x


def heads(params: Params, z: jax.Array, x: jax.Array, labels: jax.Array) -> jax.Array:
    """(K,) cross-entropies; ``labels`` is (batch, K): one label per example and task."""
    del x
    logits = jnp.einsum("bd,kdc->kbc", z, params["heads"]["w"]) + params["heads"]["b"][:, None]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels.T), axis=1)


def loss_fn(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    return heads(params, trunk(params, x, labels), x, labels)


def representation_loss(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    """:func:`loss_fn` with z marked by a zero leaf: MGDA-UB takes gradients w.r.t. it."""
    return heads(params, trunk(params, x, labels) + params["representation"], x, labels)


def copies_loss(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    """(K,) cross-entropies, head k reading its own copy of z (one zero leaf per task added to z).

    The K copies are stacked and the K heads run as one batched product and
    one batched cross-entropy, as in :func:`heads`. The engine's plan follows
    the stacked axis index by index, so it sees that each copy is reached by
    one loss only and takes every ∂L_k/∂z from ONE pull-back of Σ L_k
    (block-diagonal).
    """
    z = trunk(params, x, labels)
    zs = jnp.stack([z + copy for copy in params["copies"]])  # (K, batch, d)
    logits = jnp.einsum("kbd,kdc->kbc", zs, params["heads"]["w"]) + params["heads"]["b"][:, None]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels.T), axis=1)


#: The loss functions of the step table, and the zero leaves each adds to the parameters.
LOSS_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "plain": loss_fn,
    "representation": representation_loss,
    "copies": copies_loss,
}


def with_marks(params: Params, x: jax.Array, labels: jax.Array, loss: str) -> Params:
    """``params`` plus the zero leaves that ``loss`` adds to z (none for ``"plain"``)."""
    if loss == "plain":
        return params
    zero = jnp.zeros_like(trunk(params, x, labels))
    if loss == "representation":
        return {**params, "representation": zero}
    return {**params, "copies": [zero] * labels.shape[1]}


def make_batch(num_losses: int, batch: int, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(batch, 256)), jnp.float32)
    # Drawn task by task (the draws of earlier runs), laid out batch first like x.
    labels = jnp.asarray(rng.integers(0, 10, size=(num_losses, batch)).T, jnp.int32)
    return x, labels


def static_weighting() -> covjax.Weighting:
    """Equal, constant weights (the baseline every ratio refers to)."""
    return covjax.make_weighting(
        lambda losses: (),
        lambda losses, state, count, gramian: (jnp.full_like(losses, 1.0 / losses.shape[0]), state),
        name="static",
    )


def shared_leaves(tree: Params) -> list[jax.Array]:
    return jax.tree.leaves(tree["trunk"])


def gramian_engine(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    return gradients.per_loss_gramian(loss_fn, params, x, labels, wrt="trunk")[1]


def gramian_loop(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
    """K separate ``jax.grad`` calls (a Python loop, traced into one program)."""
    num_losses = labels.shape[1]
    rows = []
    for i in range(num_losses):
        grads = jax.grad(lambda p, i=i: loss_fn(p, x, labels)[i])(params)
        rows.append(jnp.concatenate([leaf.ravel() for leaf in shared_leaves(grads)]))
    jacobian = jnp.stack(rows)
    return jacobian @ jacobian.T


def gramian_dispatched_loop(num_losses: int) -> Callable[..., jax.Array]:
    """K separately jitted ``jax.grad`` calls dispatched from Python (PyTorch-style)."""
    grad_fns = [
        jax.jit(jax.grad(lambda p, x, labels, i=i: loss_fn(p, x, labels)[i]))
        for i in range(num_losses)
    ]

    @jax.jit
    def reduce(rows: list) -> jax.Array:
        jacobian = jnp.stack([jnp.concatenate([leaf.ravel() for leaf in r]) for r in rows])
        return jacobian @ jacobian.T

    def run(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
        return reduce([shared_leaves(fn(params, x, labels)) for fn in grad_fns])

    return run


def engine_table(ks: list[int], batch: int, rounds: int, steps: int) -> None:
    print(
        f"\n1. K×K Gramian w.r.t. all shared parameters (0.66 M), batch {batch}; ms per call, "
        f"median of {rounds} rounds × {steps} calls ({jax.devices()[0].platform})"
    )
    print("| K | engine (batched VJP) | loop, one jit | loop, K jitted calls | speed-up vs loop |")
    print("|---|---|---|---|---|")
    for k in ks:
        params, (x, labels) = init_params(k), make_batch(k, batch)
        engine, loop = jax.jit(gramian_engine), jax.jit(gramian_loop)
        dispatched = gramian_dispatched_loop(k)
        np.testing.assert_allclose(
            engine(params, x, labels), loop(params, x, labels), rtol=2e-3, atol=1e-5
        )
        t = interleaved_times(
            {
                "engine": lambda: engine(params, x, labels),
                "loop": lambda: loop(params, x, labels),
                "dispatched": lambda: dispatched(params, x, labels),
            },
            rounds,
            steps,
        )
        print(
            f"| {k} | {1e3 * t['engine']:.2f} | {1e3 * t['loop']:.2f} | "
            f"{1e3 * t['dispatched']:.2f} | {t['loop'] / t['engine']:.2f}× |"
        )


def make_train_step(
    scheme: covjax.Weighting, loss: str = "plain", engine: dict | None = None, **options: Any
) -> Callable[..., tuple[Params, optax.OptState, covjax.WeightingState, jax.Array]]:
    """The jitted step; ``engine``: the engine's benchmark-only cost-model switches."""
    optimizer = optax.adam(1e-3)
    grad_fn = covjax.value_and_grad(LOSS_FUNCTIONS[loss], scheme, **options)

    def train_step(params, opt_state, weighting_state, x, labels):
        marked = with_marks(params, x, labels, loss)
        out, grads = grad_fn(marked, weighting_state, x, labels)
        grads = {key: grads[key] for key in params}  # the zero leaves' gradients are dropped
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, out.state, out.total

    compiled = jax.jit(train_step)

    def run(*args: Any) -> Any:
        with gradients._engine_options(**(engine or {})):  # read while the step traces
            return compiled(*args)

    return run


#: name → (scheme constructor, value_and_grad options, description); the option
#: ``"batches": n`` makes the step's batch n batches of ``--batch`` examples.
STEP_CONFIGURATIONS: dict[str, tuple[Callable[[], covjax.Weighting], dict, str]] = {
    "static": (static_weighting, {}, "static (baseline)"),
    "gradnorm": (covjax.gradnorm, {"wrt": "trunk/layer2/w"}, "GradNorm (last trunk layer)"),
    "gradnorm_shared": (covjax.gradnorm, {"wrt": "trunk"}, "GradNorm (all shared)"),
    "mgda": (covjax.mgda, {"wrt": "trunk"}, "MGDA (all shared)"),
    "mgda_materialised": (
        covjax.mgda,
        {"wrt": "trunk", "engine": {"factorize": "never"}},
        "MGDA (all shared, per-loss gradients materialised)",
    ),
    "pcgrad": (covjax.pcgrad, {"wrt": "trunk"}, "PCGrad (all shared)"),
    "cagrad": (covjax.cagrad, {"wrt": "trunk"}, "CAGrad (all shared)"),
    "nash_mtl": (covjax.nash_mtl, {"wrt": "trunk"}, "Nash-MTL (all shared)"),
    "imtl_g": (covjax.imtl_g, {"wrt": "trunk"}, "IMTL-G (all shared)"),
    "aligned_mtl": (covjax.aligned_mtl, {"wrt": "trunk"}, "Aligned-MTL (all shared)"),
    "upgrad": (covjax.upgrad, {"wrt": "trunk"}, "UPGrad (all shared)"),
    "gradvac": (covjax.gradvac, {"wrt": "trunk"}, "GradVac (all shared)"),
    "db_mtl": (covjax.db_mtl, {"wrt": "trunk"}, "DB-MTL (all shared)"),
    "lr_annealing": (
        covjax.lr_annealing,
        {"wrt": "trunk"},
        "LR annealing, max/mean form (per-loss gradients of all shared)",
    ),
    "lr_annealing_grad_norm": (
        lambda: covjax.lr_annealing(form="grad_norm"),
        {"wrt": "trunk"},
        "LR annealing, grad-norm form (all shared)",
    ),
    "ntk_weighting": (covjax.ntk_weighting, {"wrt": "trunk"}, "NTK weighting (all shared)"),
    "fairgrad": (covjax.fairgrad, {"wrt": "trunk"}, "FairGrad (all shared)"),
    "dualproj": (covjax.dualproj, {"wrt": "trunk"}, "DualProj (all shared)"),
    "sdmgrad": (covjax.sdmgrad, {"wrt": "trunk"}, "SDMGrad (cross-Gramian of the batch's halves)"),
    "modo": (covjax.modo, {"wrt": "trunk"}, "MoDo (cross-Gramian of the batch's halves)"),
    "pcd": (covjax.pcd, {"wrt": "trunk"}, "PCD (all shared, the first loss primary)"),
    "sdmgrad_two_batches": (
        covjax.sdmgrad,
        {"wrt": "trunk", "batches": 2},
        "SDMGrad (a batch of two batches, C of its halves)",
    ),
    "modo_two_batches": (
        covjax.modo,
        {"wrt": "trunk", "batches": 2},
        "MoDo (a batch of two batches, C of its halves)",
    ),
    "cr_mogm": (
        lambda: covjax.cr_mogm(covjax.mgda()),
        {"wrt": "trunk"},
        "CR-MOGM of MGDA (all shared)",
    ),
    # Aggregators of the per-loss gradients themselves (covjax.JACOBIAN).
    "trimmed_mean": (
        lambda: covjax.trimmed_mean(0),  # every K here; the ranking costs the same for any trim
        {"wrt": "trunk"},
        "Trimmed mean (all shared)",
    ),
    "graddrop": (covjax.graddrop, {"wrt": "trunk"}, "GradDrop (all shared)"),
    "graddrop_representation": (
        lambda: covjax.graddrop(batch_separated=True),
        {"loss": "representation", "wrt": "representation", "feature_maps": True},
        "GradDrop (the paper's batch-separated form on the representation)",
    ),
    "conflict_free": (covjax.conflict_free, {"wrt": "trunk"}, "ConFIG (all shared)"),
    "m_config": (
        lambda: covjax.conflict_free(momentum=True, num_params=trunk_num_params()),
        {"wrt": "trunk"},
        "M-ConFIG (all shared)",
    ),
    "moco": (
        lambda: covjax.moco(num_params=trunk_num_params()),
        {"wrt": "trunk"},
        "MoCo (all shared)",
    ),
    "excess_mtl": (
        lambda: covjax.excess_mtl(num_params=trunk_num_params()),
        {"wrt": "trunk"},
        "ExcessMTL (all shared)",
    ),
    "mgda_ub": (
        covjax.mgda,
        {"loss": "representation", "wrt": "representation"},
        "MGDA-UB (representation)",
    ),
    "mgda_ub_copies": (
        covjax.mgda,
        {"loss": "copies", "wrt": "copies"},
        "MGDA-UB (per-task copies of the representation)",
    ),
    # Loss-statistics schemes (no per-loss gradients), beside LibMTL's in libmtl_reference.
    "uncertainty": (covjax.uncertainty_weighting, {}, "Uncertainty weighting (loss-only)"),
    "dwa": (lambda: covjax.dwa(period=10), {}, "DWA (loss-only, 10-step periods)"),
    "rlw": (covjax.rlw, {}, "RLW (loss-only)"),
    "gls": (covjax.gls, {}, "GLS (loss-only)"),
    "stch": (covjax.stch, {}, "STCH (loss-only)"),
    "famo": (covjax.famo, {}, "FAMO (loss-only)"),
}


def step_runner(
    name: str,
    num_losses: int,
    x: jax.Array,
    labels: jax.Array,
    configurations: dict[str, tuple[Callable[[], covjax.Weighting], dict, str]] | None = None,
) -> Callable[[], jax.Array]:
    """One train step of configuration ``name`` per call, on fixed data, carrying its state."""
    make_scheme, options, _ = (configurations or STEP_CONFIGURATIONS)[name]
    scheme = make_scheme()
    params = init_params(num_losses)
    loss = options.get("loss", "plain")
    losses = LOSS_FUNCTIONS[loss](with_marks(params, x, labels, loss), x, labels)
    state = [params, optax.adam(1e-3).init(params), scheme.init(losses)]
    more = [
        make_batch(num_losses, x.shape[0], seed=2 + i) for i in range(options.get("batches", 1) - 1)
    ]
    if more:
        x = jnp.concatenate([x, *(batch[0] for batch in more)])
        labels = jnp.concatenate([labels, *(batch[1] for batch in more)])
    train_step = make_train_step(
        scheme, **{key: value for key, value in options.items() if key != "batches"}
    )

    def run() -> jax.Array:
        state[0], state[1], state[2], total = train_step(*state, x, labels)
        return total

    return run


def per_loss_gradients_runner(
    num_losses: int, x: jax.Array, labels: jax.Array
) -> Callable[[], jax.Array]:
    """The losses and their K per-loss gradients over the trunk alone, per call: no scheme, no
    update, each row reduced to a sum (nothing K × P leaves the jitted function).

    The floor of every step that needs the rows themselves (ExcessMTL, MoCo, GradDrop on
    the parameters): it differs from such a step by the scheme and the update only.
    """
    params = init_params(num_losses)

    @jax.jit
    def rows_only(params: Params, x: jax.Array, labels: jax.Array) -> jax.Array:
        losses, jacobian, _ = covjax.per_loss_jacobian(loss_fn, params, x, labels, wrt="trunk")
        return jnp.sum(losses) + sum(jnp.sum(rows) for rows in jax.tree.leaves(jacobian))

    return lambda: rows_only(params, x, labels)


def step_table(ks: list[int], batch: int, rounds: int, steps: int, names: list[str]) -> None:
    print(
        f"\n2. Full train step (forward, weighting, backward, Adam), batch {batch}; "
        f"ratio to static weights, median of {rounds} interleaved rounds × {steps} steps "
        "(LibMTL's, side by side: experiments.benchmarks.libmtl_reference)"
    )
    ratios: dict[str, list[float]] = {name: [] for name in names}
    base_ms = []
    for k in ks:
        x, labels = make_batch(k, batch)
        runners = {name: step_runner(name, k, x, labels) for name in ["static", *names]}
        t = interleaved_times(runners, rounds, steps)
        base_ms.append(1e3 * t["static"])
        for name in names:
            ratios[name].append(t[name] / t["static"])
    print("| scheme | " + " | ".join(f"K = {k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    print("| static, ms per step | " + " | ".join(f"{ms:.2f}" for ms in base_ms) + " |")
    for name in names:
        cells = " | ".join(f"{ratio:.2f}" for ratio in ratios[name])
        print(f"| {STEP_CONFIGURATIONS[name][2]} | {cells} |")


def solver_table(k: int, rounds: int, steps: int) -> None:
    rng = np.random.default_rng(0)
    solve = jax.jit(covjax.min_norm_solver)
    problems = {
        "generic (K gradients in 64-D)": rng.normal(size=(k, 64)),
        "rank-deficient (rank 4)": rng.normal(size=(k, 4)) @ rng.normal(size=(4, 64)),
        "agreeing (optimum ≠ 0)": rng.normal(size=(k, 64)) + 3.0 * rng.normal(size=64),
    }
    print(f"\n3. min_norm_solver alone, K = {k}, jitted, per call incl. dispatch")
    print("| problem | ms |")
    print("|---|---|")
    for name, jacobian in problems.items():
        gramian = jnp.asarray(jacobian @ jacobian.T, jnp.float32)
        t = interleaved_times({"solve": lambda gramian=gramian: solve(gramian)}, rounds, 10 * steps)
        print(f"| {name} | {1e3 * t['solve']:.3f} |")


def mgda_ub_floor_table(k: int, batch: int, rounds: int, steps: int) -> None:
    """What any exact MGDA-UB step must cost here: a static step + rows + Gramian + solve.

    On top of the forward and weighted backward pass of a static step,
    MGDA-UB must form the K representation gradients ∂L_i/∂z = Δ_i W_iᵀ (at
    best one batched product from the heads' output cotangents, as with
    per-task copies), their K×K Gramian (K × batch·512 numbers, one GEMM) and
    the min-norm solve. Each is timed alone; their sum over the static step
    is a lower bound on MGDA-UB's ratio on this machine.
    """
    params, (x, labels) = init_params(k), make_batch(k, batch)
    z = trunk(params, x, labels)
    jacobian = jax.jacrev(lambda z: heads(params, z, x, labels))(z).reshape(k, -1)
    output_cotangents = jnp.ones((k, batch, params["heads"]["w"].shape[-1]), jnp.float32)
    rows_fn = jax.jit(lambda delta, w: jnp.einsum("kbc,kdc->kbd", delta, w))
    gramian_fn = jax.jit(lambda j: j @ j.T)
    gramian = gramian_fn(jacobian)
    solve = jax.jit(covjax.min_norm_solver)
    # The copies model (K stacked copies of z, one batched head) has its own
    # static step: the baseline of the copies' ratio.
    configurations = {
        **STEP_CONFIGURATIONS,
        "static_copies": (static_weighting, {"loss": "copies"}, "static (stacked copies)"),
    }
    runners = {
        name: step_runner(name, k, x, labels, configurations)
        for name in ("static", "static_copies", "mgda_ub_copies")
    }
    runners["rows"] = lambda: rows_fn(output_cotangents, params["heads"]["w"])
    runners["gramian"] = lambda: gramian_fn(jacobian)
    runners["solve"] = lambda: solve(gramian)
    t = interleaved_times(runners, rounds, steps)
    floor = (t["static"] + t["rows"] + t["gramian"] + t["solve"]) / t["static"]
    print(
        f"\n4. MGDA-UB's floor at K = {k}, batch {batch}: ms per call, median of {rounds} "
        f"interleaved rounds × {steps}"
    )
    print(
        "| static step | K representation gradients from the heads' cotangents "
        "| their Gramian | min-norm solve | lower bound on MGDA-UB / static "
        "| static step, stacked copies | MGDA-UB (copies) / static, same stacked copies "
        "| ÷ lower bound |"
    )
    print("|---|---|---|---|---|---|---|---|")
    copies_ratio = t["mgda_ub_copies"] / t["static_copies"]
    print(
        f"| {1e3 * t['static']:.2f} | {1e3 * t['rows']:.2f} | {1e3 * t['gramian']:.2f} "
        f"({jacobian.shape[0]} × {jacobian.shape[1]}) | {1e3 * t['solve']:.2f} | "
        f"{floor:.2f} | {1e3 * t['static_copies']:.2f} | {copies_ratio:.2f} | "
        f"{copies_ratio / floor:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["engine", "step", "solver", "floor"]
    )
    parser.add_argument(
        "--schemes",
        nargs="+",
        default=[name for name in STEP_CONFIGURATIONS if name != "static"],
        choices=[name for name in STEP_CONFIGURATIONS if name != "static"],
        help="gradient schemes of the step table",
    )
    args = parser.parse_args()
    if "engine" not in args.skip:
        engine_table(args.ks, args.batch, args.rounds, args.steps)
    if "step" not in args.skip:
        step_table(args.ks, args.batch, args.rounds, args.steps, args.schemes)
    if "solver" not in args.skip:
        solver_table(max(args.ks), args.rounds, args.steps)
    if "floor" not in args.skip:
        mgda_ub_floor_table(max(args.ks), args.batch, args.rounds, args.steps)


if __name__ == "__main__":
    main()
