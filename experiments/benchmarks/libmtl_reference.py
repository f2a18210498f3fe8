"""covjax's train-step ratios beside LibMTL's, measured side by side in one process.

The model is the one of :mod:`experiments.benchmarks.gradients`, LibMTL's
hard-parameter-sharing MLP (https://github.com/median-research-group/LibMTL):
a shared trunk 256→512→512→512 (ReLU), K linear heads 512→10 with
cross-entropy, batch 32, Adam. For K = 2, 8, 32 and every weighting LibMTL
and covjax both have, it times one full training step of each library in
interleaved rounds (median): covjax's jitted step of the scheme's
``STEP_CONFIGURATIONS`` entry in :mod:`experiments.benchmarks.gradients`
against covjax's static step, and LibMTL's step (its ``HPS`` model with the
weighting mixed in, as its ``Trainer`` builds it; forward, ``zero_grad``,
the weighting's ``backward``, ``Adam.step``) against LibMTL's ``EW``. It
prints both ratios and their quotient: the target is a quotient of at most
0.5 at K ≥ 8 for the gradient schemes. The loss-only schemes are listed
for contrast; their goal, at most 1.01× static, is below this benchmark's
noise (:mod:`experiments.benchmarks.weighting_overhead` measures it).
Each runner repeats its step to fill a time window per round (covjax's
steps take milliseconds, LibMTL's up to seconds). PyTorch runs on
``--threads`` threads (2) with ``OMP_WAIT_POLICY=PASSIVE`` unless set
otherwise (on a shared machine spinning OpenMP threads slow its small
operations down 10-80×).

LibMTL's conventions are kept (``Trainer.train_singlelevel``): per-loss
gradients over all shared parameters (``rep_grad=False``; GradDrop, which
LibMTL runs on the representation only, with ``rep_grad=True``, as covjax's
``value_and_grad(..., feature_maps=True)`` does here); SDMGrad and
MoDo forward three batches and take 3K per-loss gradients per step (the
cross-Gramian of two batches' per-loss gradients weighs a third batch's,
from which LibMTL forms the direction); covjax's rows take 2K per-loss
gradients, on the halves of a batch of two batches
(``covjax.value_and_grad``'s cross-Gramian), and the weights multiply that
batch's losses in one weighted backward pass instead of a third batch's;
FAMO runs its extra no-grad forward pass after the step to update its
logits; the hyper-parameters are the defaults of LibMTL's ``config.py``. The
epoch counter is set past every warm-up (GradNorm, DWA, STCH) so that each
weighting runs its own branch rather than equal weights. Two removals in the
libraries LibMTL was written for are shimmed: ``torch.symeig`` (Aligned-MTL;
``torch.linalg.eigh``) and ``numpy.alltrue`` (SDMGrad; ``numpy.all``).

PyTorch and LibMTL are not dependencies of covjax. To run this::

    pip install torch cvxpy ecos qpsolvers quadprog   # CPU wheels will do
    git clone https://github.com/median-research-group/LibMTL /tmp/LibMTL
    python -m experiments.benchmarks.libmtl_reference --libmtl /tmp/LibMTL

(``--ks 2 8``, ``--schemes mgda pcgrad``, ``--rounds``, ``--window`` make it
shorter). Without them it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from experiments.benchmarks import gradients
from experiments.benchmarks.timing import interleaved_times

#: The quotient covjax ratio / LibMTL ratio that the gradient schemes aim at, for K ≥ 8.
TARGET_QUOTIENT = 0.5
#: The ratio to static that the loss-only schemes aim at.
TARGET_LOSS_ONLY = 1.01


@dataclass(frozen=True)
class Reference:
    """One weighting in both libraries."""

    libmtl: str  #: LibMTL's class name in ``LibMTL.weighting`` (and its ``--weighting``)
    ours: str  #: the key of ``gradients.STEP_CONFIGURATIONS``
    loss_only: bool = False
    rep_grad: bool = False  #: LibMTL takes the per-loss gradients w.r.t. the representation
    batches: int = 1  #: batches LibMTL's Trainer feeds one step of this weighting
    note: str = ""  #: how LibMTL's step differs beyond the library
    #: not a weighting: the forward pass and the K per-loss gradients of the shared
    #: parameters alone, the floor of every scheme that needs them themselves
    gradients_only: bool = False


#: covjax name → the LibMTL weighting it is timed against.
REFERENCES: dict[str, Reference] = {
    "gradnorm": Reference("GradNorm", "gradnorm_shared"),
    "mgda": Reference("MGDA", "mgda"),
    "pcgrad": Reference("PCGrad", "pcgrad"),
    "cagrad": Reference("CAGrad", "cagrad"),
    "nash_mtl": Reference("Nash_MTL", "nash_mtl"),
    "imtl_g": Reference("IMTL", "imtl_g"),
    "aligned_mtl": Reference("Aligned_MTL", "aligned_mtl"),
    "upgrad": Reference("UPGrad", "upgrad"),
    "gradvac": Reference("GradVac", "gradvac"),
    "db_mtl": Reference("DB_MTL", "db_mtl"),
    "fairgrad": Reference("FairGrad", "fairgrad"),
    "excess_mtl": Reference("ExcessMTL", "excess_mtl"),
    "moco": Reference("MoCo", "moco"),
    "graddrop": Reference(
        "GradDrop", "graddrop_representation", rep_grad=True, note="on the representation"
    ),
    "sdmgrad": Reference("SDMGrad", "sdmgrad_two_batches", batches=3, note="3 batches; ours 2"),
    "modo": Reference("MoDo", "modo_two_batches", batches=3, note="3 batches; ours 2"),
    "per_loss_gradients": Reference(
        "EW", "per_loss_gradients", gradients_only=True, note="`_get_grads`, no step"
    ),
    "uncertainty": Reference("UW", "uncertainty", loss_only=True),
    "dwa": Reference("DWA", "dwa", loss_only=True),
    "rlw": Reference("RLW", "rlw", loss_only=True),
    "gls": Reference("GLS", "gls", loss_only=True),
    "stch": Reference("STCH", "stch", loss_only=True),
    "famo": Reference("FAMO", "famo", loss_only=True),
}
#: An epoch past every warm-up: GradNorm's (1), DWA's (2) and STCH's (LibMTL's default 4).
EPOCH = 5

HOW_TO_RUN = __doc__[__doc__.index("PyTorch and LibMTL are not") :]


@dataclass
class LibMTL:
    """The pieces of LibMTL (and PyTorch) the benchmark drives."""

    torch: types.ModuleType
    weighting: types.ModuleType
    architecture: type  #: ``HPS``
    config: types.ModuleType
    root: Path


def find_libmtl(path: str | None) -> Path | None:
    """The ``LibMTL`` package folder: under ``path`` (a checkout) or wherever it is importable."""
    if path is not None:
        for candidate in (Path(path) / "LibMTL", Path(path)):
            if (candidate / "weighting" / "abstract_weighting.py").is_file():
                return candidate
        return None
    spec = importlib.util.find_spec("LibMTL")
    return Path(spec.origin).parent if spec and spec.origin else None


def load_libmtl(path: str | None) -> LibMTL | str:
    """LibMTL's weightings, ``HPS`` and config with PyTorch, or why they cannot be loaded."""
    # Idle OpenMP threads sleep instead of spinning: on a machine shared with other
    # jobs, spinning threads make PyTorch's many small operations 10-80× slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as error:
        return f"PyTorch is not importable ({error})"
    root = find_libmtl(path)
    if root is None:
        return f"no LibMTL checkout found ({path or 'LibMTL is not importable'})"
    # LibMTL/__init__.py imports its Trainer, which needs torch_geometric; the
    # weightings, HPS and config do not: register the package without running it.
    package = types.ModuleType("LibMTL")
    package.__path__ = [str(root)]
    saved = sys.modules.get("LibMTL")
    sys.modules["LibMTL"] = package
    try:
        weighting = importlib.import_module("LibMTL.weighting")
        architecture = importlib.import_module("LibMTL.architecture.HPS").HPS
        config = importlib.import_module("LibMTL.config")
    except ImportError as error:
        if saved is None:
            del sys.modules["LibMTL"]
        else:
            sys.modules["LibMTL"] = saved
        return f"LibMTL's weightings are not importable from {root} ({error})"
    # Removed since LibMTL's code was written (PyTorch 2, NumPy 2); same results.
    try:
        torch.symeig(torch.eye(2), eigenvectors=True)
    except (AttributeError, RuntimeError):  # PyTorch ≥ 1.9 raises its replacement's name

        def symeig(matrix: Any, eigenvectors: bool = False, upper: bool = True) -> Any:
            return torch.linalg.eigh(matrix, UPLO="U" if upper else "L")

        torch.symeig = symeig
    if not hasattr(np, "alltrue"):
        np.alltrue = np.all
    return LibMTL(torch, weighting, architecture, config, root)


def weight_args(libmtl: LibMTL, name: str) -> dict[str, Any]:
    """The defaults of LibMTL's ``config.py`` for weighting ``name`` (its ``prepare_args``)."""
    params = libmtl.config.LibMTL_args.parse_args(["--weighting", name])
    with contextlib.redirect_stdout(io.StringIO()):  # prepare_args prints its configuration
        kwargs, _, _ = libmtl.config.prepare_args(params)
    return kwargs["weight_args"]


def torch_batches(libmtl: LibMTL, num_losses: int, batch: int, count: int) -> list[tuple]:
    """``count`` batches: the first is the covjax benchmark's, the others new draws."""
    torch = libmtl.torch
    out = []
    for seed in range(1, count + 1):
        x, labels = gradients.make_batch(num_losses, batch, seed=seed)
        out.append((torch.from_numpy(np.array(x)), torch.from_numpy(np.array(labels)).long()))
    return out


def libmtl_runner(
    libmtl: LibMTL, name: str, num_losses: int, batch: int, reference: Reference | None = None
) -> Callable[[], None]:
    """One LibMTL training step of weighting ``name`` per call, as its Trainer runs it."""
    torch, nn = libmtl.torch, libmtl.torch.nn
    reference = reference or Reference(name, "static")
    torch.manual_seed(0)
    hidden, inputs = 512, 256

    def encoder() -> Any:
        return nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    tasks = [f"task{i}" for i in range(num_losses)]
    decoders = nn.ModuleDict({task: nn.Linear(hidden, 10) for task in tasks})

    class Model(libmtl.architecture, getattr(libmtl.weighting, name)):  # Trainer's MTLmodel
        pass

    model = Model(tasks, encoder, decoders, reference.rep_grad, False, torch.device("cpu"))
    model.epoch, model.epochs = EPOCH, EPOCH + 1
    model.train_loss_buffer = np.ones((num_losses, EPOCH + 1))
    model.init_param()
    if name == "STCH":  # the nadir point its warm-up epochs would have averaged
        model.nadir_vector = torch.ones(num_losses)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    kwargs = weight_args(libmtl, name)
    batches = torch_batches(libmtl, num_losses, batch, reference.batches)
    cross_entropy = nn.CrossEntropyLoss()

    def losses_of(x: Any, labels: Any) -> Any:  # Trainer._compute_loss
        predictions = model(x)
        losses = torch.zeros(num_losses)
        for k, task in enumerate(tasks):
            losses[k] = cross_entropy(predictions[task], labels[:, k])
        return losses

    def run() -> None:
        losses = torch.stack([losses_of(*b) for b in batches]).squeeze(0)
        if reference.gradients_only:  # what ExcessMTL and MoCo call, without the rest
            model._get_grads(losses, mode="autograd")
            return
        optimizer.zero_grad(set_to_none=False)
        model.backward(losses, **kwargs)
        optimizer.step()
        if name == "FAMO":
            with torch.no_grad():
                model.update_w(losses_of(*batches[0]).detach())

    return run


def measure(
    libmtl: LibMTL, names: list[str], ks: list[int], batch: int, rounds: int, window: float
) -> dict[int, dict[str, float]]:
    """Seconds per step, per K, of ``ours:``/``libmtl:`` + each name, static and EW included."""
    results = {}
    for k in ks:
        x, labels = gradients.make_batch(k, batch)
        runners: dict[str, Callable[[], Any]] = {
            "ours:static": gradients.step_runner("static", k, x, labels),
            "libmtl:EW": libmtl_runner(libmtl, "EW", k, batch),
        }
        for name in names:
            reference = REFERENCES[name]
            runners[f"ours:{name}"] = (
                gradients.per_loss_gradients_runner(k, x, labels)
                if reference.gradients_only
                else gradients.step_runner(reference.ours, k, x, labels)
            )
            runners[f"libmtl:{name}"] = libmtl_runner(libmtl, reference.libmtl, k, batch, reference)
        for run in runners.values():  # compilation, first-step set-up (Nash-MTL's problem)
            jax.block_until_ready(run())
        results[k] = interleaved_times(runners, rounds, calibrate(runners, window), warm_up=False)
        print(f"K = {k} measured", file=sys.stderr, flush=True)
    return results


def calibrate(runners: dict[str, Callable[[], Any]], window: float) -> dict[str, int]:
    """Steps per round for each runner: enough to fill ``window`` seconds (at least one).

    covjax's step takes milliseconds and LibMTL's up to seconds: a few
    milliseconds' window would measure the scheduler's time slices on a
    shared machine rather than the step.
    """
    steps = {}
    for name, run in runners.items():
        start = time.perf_counter()
        jax.block_until_ready(run())
        steps[name] = max(1, round(window / (time.perf_counter() - start)))
    return steps


def target_met(name: str, times: dict[int, dict[str, float]]) -> str:
    """Whether covjax's ratio is at most half of LibMTL's at every K ≥ 8 measured."""
    if REFERENCES[name].loss_only:
        # A few per cent, below this benchmark's noise: weighting_overhead measures it.
        return f"loss-only: ≤ {TARGET_LOSS_ONLY}× static (weighting_overhead)"
    if REFERENCES[name].gradients_only:
        return "floor of the Jacobian schemes (no target)"
    quotients = [quotient(name, t) for k, t in times.items() if k >= 8]
    if not quotients:
        return "—"
    met = max(quotients) <= TARGET_QUOTIENT
    return f"{'met' if met else 'missed'} (≤ {TARGET_QUOTIENT} at K ≥ 8)"


def quotient(name: str, t: dict[str, float]) -> float:
    """covjax's ratio to its static step over LibMTL's ratio to its EW step."""
    ours = t[f"ours:{name}"] / t["ours:static"]
    theirs = t[f"libmtl:{name}"] / t["libmtl:EW"]
    return ours / theirs


def print_table(
    names: list[str], times: dict[int, dict[str, float]], batch: int, rounds: int, window: float
) -> None:
    ks = list(times)
    torch = sys.modules["torch"]
    print(
        f"\nFull train step, LibMTL's HPS MLP, batch {batch}: covjax (JAX {jax.__version__}, "
        f"{jax.devices()[0].platform}) ratio to its static step, LibMTL (PyTorch "
        f"{torch.__version__}, {torch.get_num_threads()} threads) ratio to its EW step, and "
        f"covjax / LibMTL; median of {rounds} interleaved rounds, each step repeated to fill "
        f"about {window} s per round"
    )
    header = "| scheme (LibMTL) | " + " | ".join(
        f"K = {k} covjax | K = {k} LibMTL | K = {k} covjax / LibMTL" for k in ks
    )
    print(header + " | target |")
    print("|---|" + "---|---|---|" * len(ks) + "---|")
    base = " | ".join(
        f"{1e3 * times[k]['ours:static']:.2f} | {1e3 * times[k]['libmtl:EW']:.2f} | "
        f"{times[k]['ours:static'] / times[k]['libmtl:EW']:.2f}"
        for k in ks
    )
    print(f"| static / EW, ms per step | {base} | |")
    for name in names:
        cells = []
        for k in ks:
            t = times[k]
            cells.append(
                f"{t[f'ours:{name}'] / t['ours:static']:.2f} | "
                f"{t[f'libmtl:{name}'] / t['libmtl:EW']:.2f} | {quotient(name, t):.2f}"
            )
        reference = REFERENCES[name]
        ours = (
            "the K per-loss gradients of the shared parameters alone (forward pass included)"
            if reference.gradients_only
            else gradients.STEP_CONFIGURATIONS[reference.ours][2]
        )
        label = f"{ours}; LibMTL `{reference.libmtl}`"
        label += f" ({reference.note})" if reference.note else ""
        print(f"| {label} | " + " | ".join(cells) + f" | {target_met(name, times)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--libmtl", default=None, help="a LibMTL checkout (default: importable)")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--window", type=float, default=0.2, help="seconds each runner runs per round (≥ 1 step)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--schemes", nargs="+", default=list(REFERENCES), choices=list(REFERENCES))
    args = parser.parse_args(argv)
    libmtl = load_libmtl(args.libmtl)
    if isinstance(libmtl, str):
        print(f"Skipped: {libmtl}.\n\n{HOW_TO_RUN}")
        return 0
    libmtl.torch.set_num_threads(args.threads)
    print(f"LibMTL from {libmtl.root}")
    times = measure(libmtl, args.schemes, args.ks, args.batch, args.rounds, args.window)
    print_table(args.schemes, times, args.batch, args.rounds, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
