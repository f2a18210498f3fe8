"""Per-step cost of each loss-statistics weighting inside a jitted train step.

Two measurements, each printed as a table:

1. A small CNN with K = 32 losses (one per output channel) trained with Adam;
   the full jitted step (forward, weighting, backward, Adam) is timed for every
   scheme, interleaved round by round with static weights so that machine noise
   hits all of them alike; the table gives the median over the rounds of step
   time / static step time in the same round, with a distribution-free 95%
   interval for that median (``--rounds`` narrows it). ``--clock cpu`` times
   the process's CPU time instead of wall time: on a machine shared with
   other jobs it leaves out the time spent waiting for a core.
2. ``update`` alone, jitted, for K = 32, 1,000 and 100,000 losses (inside a
   ``lax.fori_loop`` so that dispatch overhead is not measured), to show that
   the cost grows linearly in K.

Run: ``python -m experiments.benchmarks.weighting_overhead [--rounds 7 --steps 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import covjax
from experiments.benchmarks.timing import median_interval

NUM_LOSSES = 32


def loss_statistics_schemes(num_losses: int, steps_per_period: int = 10) -> dict[str, Callable]:
    """Constructors of every loss-statistics scheme in covjax, by display name."""
    candidates: dict[str, Callable[[], covjax.Weighting]] = {
        "static": lambda: covjax.static_weighting(jnp.full((num_losses,), 1.0 / num_losses)),
        "equal": lambda: covjax.equal_weighting(),
        "cov": lambda: covjax.cov_weighting(),
        "cov (decay 0.99)": lambda: covjax.cov_weighting(decay=0.99),
        "cov (loss statistic)": lambda: covjax.cov_weighting(statistic="loss"),
        "uncertainty": lambda: covjax.uncertainty_weighting(),
        "lsb": lambda: covjax.lsb(period=steps_per_period),
        "multi_loss_rebalancing": lambda: covjax.multi_loss_rebalancing(
            steps_per_epoch=4 * steps_per_period
        ),
        "dwa": lambda: covjax.dwa(period=steps_per_period),
        "rlw": lambda: covjax.rlw(),
        "gls": lambda: covjax.gls(),
        "imtl_l": lambda: covjax.imtl_l(),
        "famo": lambda: covjax.famo(),
        "softadapt": lambda: covjax.softadapt(),
        "relobralo": lambda: covjax.relobralo(),
        "stch": lambda: covjax.stch(),
        "stch (warm-up)": lambda: covjax.stch(warmup_steps=steps_per_period),
        "pbi": lambda: covjax.pbi(),
        "cosmos": lambda: covjax.cosmos(),
        "lbpinn": lambda: covjax.lbpinn(),
    }
    available = {}
    for name, make in candidates.items():
        try:
            available[name] = make
            make()
        except AttributeError:
            del available[name]
    return available


class MultiOutputCNN(nnx.Module):
    """Four 3×3 convs (stride 2 twice) and a 1×1 head with one channel per loss."""

    def __init__(self, num_losses: int, width: int, *, rngs: nnx.Rngs) -> None:
        self.convs = nnx.List(
            [
                nnx.Conv(3, width, (3, 3), strides=2, rngs=rngs),
                nnx.Conv(width, width, (3, 3), rngs=rngs),
                nnx.Conv(width, 2 * width, (3, 3), strides=2, rngs=rngs),
                nnx.Conv(2 * width, 2 * width, (3, 3), rngs=rngs),
            ]
        )
        self.head = nnx.Conv(2 * width, num_losses, (1, 1), rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return self.head(x)


def per_channel_losses(model: MultiOutputCNN, images: jax.Array, targets: jax.Array) -> jax.Array:
    """K losses on very different scales: channel k is scaled by 10^(k mod 5 − 2)."""
    predictions = model(images)
    scales = 10.0 ** (jnp.arange(predictions.shape[-1]) % 5 - 2.0)
    return scales * jnp.mean((predictions - targets) ** 2, axis=(0, 1, 2))


def make_train_step(scheme: covjax.Weighting):
    grad_fn = covjax.value_and_grad(per_channel_losses, scheme)

    @nnx.jit
    def train_step(model, optimizer, weighting_state, images, targets):
        out, grads = grad_fn(model, weighting_state, images, targets)
        optimizer.update(model, grads)
        return out.state, out.total

    return train_step


def time_train_steps(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(args.batch, args.size, args.size, 3)), jnp.float32)
    targets = jnp.asarray(
        rng.normal(size=(args.batch, args.size // 4, args.size // 4, NUM_LOSSES)), jnp.float32
    )
    schemes = loss_statistics_schemes(NUM_LOSSES)
    if args.schemes:
        unknown = sorted(set(args.schemes) - set(schemes))
        if unknown:
            raise SystemExit(f"unknown schemes {unknown}; choose from {sorted(schemes)}")
        schemes = {name: schemes[name] for name in ("static", *args.schemes)}
    runners = {}
    for name, make in schemes.items():
        scheme = make()
        model = MultiOutputCNN(NUM_LOSSES, args.width, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
        state = scheme.init(per_channel_losses(model, images, targets))
        step = make_train_step(scheme)
        state, total = step(model, optimizer, state, images, targets)  # compile
        jax.block_until_ready(total)
        runners[name] = [step, model, optimizer, state]

    times: dict[str, list[float]] = {name: [] for name in runners}
    # CPU time of the process (all its threads) does not count the time the
    # step waits for a core, which dominates wall time on a shared machine.
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for _ in range(args.rounds):
        for name, runner in runners.items():
            step, model, optimizer, state = runner
            start = clock()
            for _ in range(args.steps):
                state, total = step(model, optimizer, state, images, targets)
            jax.block_until_ready(total)
            times[name].append((clock() - start) / args.steps)
            runner[3] = state
    print(
        f"\nFull train step, small CNN, K = {NUM_LOSSES} losses, batch {args.batch}, "
        f"{args.size}×{args.size}, width {args.width}; {args.rounds} interleaved rounds × "
        f"{args.steps} steps ({jax.devices()[0].platform}), {args.clock} time; ratio: median "
        "over the rounds of "
        "the step time over static's in the same round, with its 95% interval"
    )
    print("| scheme | ms / step | ratio to static | 95% interval | spread |")
    print("|---|---|---|---|---|")
    for name, samples in times.items():
        ratios = [t / base for t, base in zip(samples, times["static"], strict=True)]
        low, ratio, high = median_interval(ratios)
        spread = 100 * max(ratio - low, high - ratio) / ratio
        print(
            f"| {name} | {1e3 * statistics.median(samples):.2f} | {ratio:.3f} | "
            f"{low:.3f}–{high:.3f} | ±{spread:.1f}% |"
        )


def time_update_alone(args: argparse.Namespace) -> None:
    print(f"\n`update` alone, jitted, {args.update_iters} updates in a fori_loop")
    print(
        "| scheme | "
        + " | ".join(f"K = {k:,} (µs)" for k in args.sizes)
        + " | µs per 1k losses at max K |"
    )
    print("|---|" + "---|" * (len(args.sizes) + 1))
    for name in ("cov", "cov (decay 0.99)", "uncertainty", "dwa", "famo", "lsb"):
        row = []
        for k in args.sizes:
            schemes = loss_statistics_schemes(k)
            if name not in schemes:
                break
            scheme = schemes[name]()
            losses = jnp.asarray(np.random.default_rng(k).lognormal(size=k), jnp.float32)

            @jax.jit
            def many_updates(state, losses=losses, scheme=scheme):
                def body(i, state):
                    return scheme.update(losses * (1.0 + 0.01 * i), state)[1]

                return jax.lax.fori_loop(0, args.update_iters, body, state)

            state = many_updates(scheme.init(losses))
            jax.block_until_ready(state)
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                state = many_updates(state)
                jax.block_until_ready(state)
                samples.append((time.perf_counter() - start) / args.update_iters)
            row.append(1e6 * min(samples))
        if len(row) == len(args.sizes):
            per_thousand = row[-1] / (args.sizes[-1] / 1000)
            cells = " | ".join(f"{v:.1f}" for v in row)
            print(f"| {name} | {cells} | {per_thousand:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--update-iters", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 1_000, 100_000])
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time the train steps by wall clock or by the process's CPU time (all threads)",
    )
    parser.add_argument(
        "--schemes", nargs="+", default=None, help="time only these next to static (default: all)"
    )
    args = parser.parse_args()
    print(f"devices: {jax.devices()}")
    if not args.skip_train:
        time_train_steps(args)
    time_update_alone(args)


if __name__ == "__main__":
    main()
