"""Our static depth step against the paper's released PyTorch code, side by side on the CPU.

Needs PyTorch, which is no dependency of this project: install it anywhere
(``pip install --target DIR torch --index-url https://download.pytorch.org/whl/cpu``)
and clone the reference code (https://github.com/rickgroen/cov-weighting), then::

    PYTHONPATH=DIR python -m experiments.benchmarks.torch_reference --reference_dir=CLONE
    PYTHONPATH=DIR python -m experiments.benchmarks.torch_reference --reference_dir=CLONE \\
        --sizes=128x256,256x512 --rounds=5 --steps=2

Without ``torch`` it prints how to run it and exits with status 0.

For each size it times, in one process and in interleaved rounds (median):

* the reference's static training step: its own ``StaticMethod.optimize_parameters``
  (zero the gradients, ResNet-50MD forward, the 32 monodepth losses weighted
  by the hand-tuned weights, backward, Adam step), imported from
  ``--reference_dir``, on ``torch.set_num_threads(--threads)``;
* our static depth step, exactly what ``experiments.benchmarks.depth_throughput``
  times for ``hand_tuned`` (full ResNet-50MD without batch norm, the
  reference's default, Adam 1e-4);
* our step again under each ``--xla_variants`` entry added to ``XLA_FLAGS``,
  in a worker process of its own (XLA reads its flags once, at start),
  driven one step at a time from this process so that its rounds interleave
  with the others.

Both sides see the same random stereo batch (NHWC for us, NCHW for torch).
The table gives wall-clock seconds per step and, in brackets, CPU seconds
per step (all threads of the process that ran it), each side's median, and
our / reference ratios of both, with the load average before and after each
size and the torch, jax and jaxlib versions. Wall times are comparable only
on a quiet machine: under foreign load the reference's OpenMP threads wait
for each other at every parallel region and slow down far more than XLA's;
CPU seconds are steadier there (they still count OpenMP's spin-waiting:
``OMP_WAIT_POLICY=passive`` turns that off).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import ml_collections
from absl import app, flags

from experiments.benchmarks import depth_throughput
from experiments.benchmarks.timing import interleaved_times

REPO = Path(__file__).resolve().parents[2]
REFERENCE_URL = "https://github.com/rickgroen/cov-weighting"
#: Hands XLA:CPU's convolutions from YNNPACK (jaxlib 0.10's default) back to Eigen.
EIGEN_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
HOW_TO_RUN = (
    "torch_reference: skipped, `import torch` failed (PyTorch is no dependency of this "
    "project). Install it in a folder of its own and put that folder on PYTHONPATH:\n"
    "    pip install --target DIR torch --index-url https://download.pytorch.org/whl/cpu\n"
    f"    git clone {REFERENCE_URL} CLONE\n"
    "    PYTHONPATH=DIR python -m experiments.benchmarks.torch_reference --reference_dir=CLONE"
)


def parse_size(size: str) -> tuple[int, int]:
    """``"128x256"`` → ``(128, 256)``."""
    try:
        height, width = (int(side) for side in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"Size {size!r} is not HEIGHTxWIDTH (e.g. 128x256).") from None
    if height % 64 or width % 64:
        raise ValueError(f"Size {size!r}: ResNet-50MD needs multiples of 64 on both sides.")
    return height, width


def our_config(height: int, width: int, batch_size: int) -> ml_collections.ConfigDict:
    """The paper's depth config (full ResNet-50MD, no batch norm) at this input size."""
    config = depth_throughput.size_config("paper")
    config.image_height, config.image_width, config.batch_size = height, width, batch_size
    return config


def our_step(height: int, width: int, batch_size: int) -> Callable[[], Any]:
    """One jitted static (hand-tuned) depth train step on a fixed random batch (compiled)."""
    run, _ = depth_throughput.prepare(our_config(height, width, batch_size), "hand_tuned")
    return run


def reference_step(
    reference_dir: Path, height: int, width: int, batch_size: int, threads: int
) -> Callable[[], float]:
    """The reference code's static training step on the same random batch as :func:`our_step`."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(reference_dir))
    import losses.bilinear_sampler  # noqa: F401  (the reference's own modules, from reference_dir)
    from methods.static_method import StaticMethod

    # The reference's warp moves its pixel grid to the GPU unconditionally
    # (``.cuda()`` in losses/bilinear_sampler.py); on a CPU-only torch that
    # raises, so in this process ``.cuda()`` leaves a tensor where it is.
    torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor  # type: ignore[method-assign]
    model_dir = tempfile.mkdtemp(prefix="torch_reference_")  # it writes its options there
    args = SimpleNamespace(
        method="static",
        model_name="static",
        model_dir=model_dir,
        mode="train",
        device="cpu",
        backbone="resnet50",
        norm_layer="",  # the reference's default: no normalisation (ours: batch_norm=False)
        epochs=1,
        num_iterations=1,
        learning_rate=1e-4,
        adjust_lr=False,
        lr_mode="plateau",
        optimizer="adam",
        img_loss_l1_w=0.25,
        img_loss_ssim_w=0.25,
        lr_loss_w=0.25,
        disp_grad_loss_w=0.25,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints its options
        method = StaticMethod(args, loader=None)
    method.to_train()
    batch = depth_throughput.random_batch(our_config(height, width, batch_size))
    # What ``method.set_input`` stores; its ``to_device`` uses ``collections.Mapping``,
    # gone since Python 3.10, and the tensors are on the CPU already.
    method.left = torch.from_numpy(batch["left"].transpose(0, 3, 1, 2).copy())
    method.right = torch.from_numpy(batch["right"].transpose(0, 3, 1, 2).copy())
    return method.optimize_parameters


class CpuTimed:
    """A runner that also records the CPU seconds (all threads of its process) of each call.

    Wall time on a machine shared with other jobs mostly measures how each
    side copes with waiting for a core; CPU time measures the work done
    (plus any time the threads spin), so it is the steadier comparison when
    the load average is above the number of cores.
    """

    def __init__(self, run: Callable[[], Any]) -> None:
        self.run = run
        self.cpu_seconds: list[float] = []

    def __call__(self) -> Any:
        start = time.process_time()
        out = jax.block_until_ready(self.run())
        self.cpu_seconds.append(time.process_time() - start)
        return out


class Worker:
    """Our step in a process of its own with extra ``XLA_FLAGS``, run one step per call.

    ``cpu_seconds`` holds the CPU seconds the worker reported for each step.
    """

    def __init__(self, xla_flags: str, height: int, width: int, batch_size: int) -> None:
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
        command = [sys.executable, "-m", "experiments.benchmarks.torch_reference"]
        command += [f"--worker={height}x{width}", f"--batch_size={batch_size}"]
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.cpu_seconds: list[float] = []

    def wait_until_compiled(self) -> None:
        self._reply()

    def __call__(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        self.cpu_seconds.append(float(self._reply()))

    def _reply(self) -> str:
        assert self.process.stdout is not None
        reply = self.process.stdout.readline().split()
        if not reply or reply[0] != "done":
            raise RuntimeError(f"the worker stopped (exit status {self.process.wait()}).")
        return reply[-1]

    def close(self) -> None:
        """End the worker: at once if it is still compiling (the parent failed), else at EOF."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def serve(height: int, width: int, batch_size: int) -> None:
    """The worker's side: compile, say ``done``, then one step per ``step`` line read,
    answered with ``done CPU_SECONDS``."""
    run = CpuTimed(our_step(height, width, batch_size))
    print("done", flush=True)
    for _ in sys.stdin:
        run()
        print(f"done {run.cpu_seconds[-1]}", flush=True)


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def benchmark(
    reference_dir: Path,
    sizes: list[str],
    batch_size: int,
    rounds: int,
    steps: int,
    threads: int,
    xla_variants: list[str],
) -> Iterator[str]:
    """The Markdown table, line by line (a row as soon as its size is timed)."""
    import jaxlib
    import torch

    yield (
        f"static depth step (full ResNet-50MD, no batch norm, Adam) vs the reference PyTorch code "
        f"({REFERENCE_URL}), torch {torch.__version__} on {threads} threads, jax "
        f"{jax.__version__} / jaxlib {jaxlib.__version__} on {os.cpu_count()} CPU cores, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, median of {rounds} interleaved "
        f"rounds × {steps} steps"
    )
    header = "| size | reference s/step (CPU s) | ours s/step (CPU s) | ours / reference (CPU) |"
    rule = "|---|---|---|---|"
    for variant in xla_variants:
        header += f" ours, `{variant}` s/step (CPU s) | ratio (CPU) |"
        rule += "---|---|"
    yield header + " load average (1/5/15 min) before → after |"
    yield rule + "---|"
    for size in sizes:
        height, width = parse_size(size)
        load_before = load_average()
        workers = [Worker(variant, height, width, batch_size) for variant in xla_variants]
        try:
            reference = reference_step(reference_dir, height, width, batch_size, threads)
            reference()  # warm-up (allocations, OpenMP pool)
            runners: dict[str, CpuTimed | Worker] = {
                "reference": CpuTimed(reference),
                "ours": CpuTimed(our_step(height, width, batch_size)),
            }
            for index, worker in enumerate(workers):
                worker.wait_until_compiled()
                runners[f"variant {index}"] = worker
            seconds = interleaved_times(dict(runners), rounds, steps, warm_up=False)
        finally:
            for worker in workers:
                worker.close()
        cpu = {name: statistics.median(run.cpu_seconds) for name, run in runners.items()}
        wall, work = seconds.pop("reference"), cpu.pop("reference")
        row = f"| {height}×{width}, batch {batch_size} | {wall:.3f} ({work:.2f}) |"
        for name in seconds:
            row += f" {seconds[name]:.3f} ({cpu[name]:.2f}) |"
            row += f" {seconds[name] / wall:.2f} ({cpu[name] / work:.2f}) |"
        yield row + f" {load_before} → {load_average()} |"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags.FLAGS
    if args.worker:
        serve(*parse_size(args.worker), args.batch_size)
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        print(HOW_TO_RUN)
        return
    if not args.reference_dir or not (Path(args.reference_dir) / "networks").is_dir():
        raise app.UsageError(
            f"--reference_dir must be a clone of {REFERENCE_URL} (got {args.reference_dir!r})."
        )
    for size in args.sizes:
        parse_size(size)  # fail before any compilation
    started = time.perf_counter()
    for line in benchmark(
        Path(args.reference_dir).resolve(),
        args.sizes,
        args.batch_size,
        args.rounds,
        args.steps,
        args.threads,
        [variant for variant in args.xla_variants if variant],
    ):
        print(line, flush=True)
    print(f"({time.perf_counter() - started:.0f} s in all)")


def define_flags() -> None:
    """The command-line flags (defined only when run as a program)."""
    flags.DEFINE_string("reference_dir", None, f"A clone of {REFERENCE_URL}.")
    flags.DEFINE_list("sizes", ["128x256", "256x512"], "Input sizes, HEIGHTxWIDTH.")
    flags.DEFINE_integer("batch_size", 2, "Stereo pairs per step.")
    flags.DEFINE_integer("rounds", 5, "Interleaved rounds (the median is reported).")
    flags.DEFINE_integer("steps", 1, "Timed steps per side and round.")
    flags.DEFINE_integer("threads", 2, "torch.set_num_threads for the reference.")
    flags.DEFINE_list(
        "xla_variants",
        [EIGEN_CONVOLUTIONS],
        "Extra XLA_FLAGS, each timed as a column of its own in a worker process ('' for none).",
    )
    flags.DEFINE_string("worker", None, "Internal: serve our step at this size to the parent.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
